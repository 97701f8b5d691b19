"""FID Inception-v3: parity with pytorch-fid's network, TorchScript loading, resize convention."""

import pickle
from collections import OrderedDict
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import pytorch_fid.inception as pfi
from imagesynth.errors import CheckpointError, MissingFileError
from imagesynth.io.checkpoint import load_torchscript_tensors
from imagesynth.metrics import load_fid_inception, resize_for_inception
from imagesynth.metrics.inception import FIDInceptionV3, inception_input


def _randomise(module: nn.Module, seed: int) -> None:
    """Random weights and BN statistics, scaled so activations stay O(1) through 20 blocks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var") or name.endswith(".var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.ndim == 4:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2 / fan_in) ** 0.5)
            else:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))


def _pytorch_fid_network():
    """pytorch-fid's FID Inception built as fid_inception_v3() does, minus the download."""
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    _randomise(net, seed=0)
    return net.eval()


@pytest.fixture(scope="module")
def network_input():
    # The networks are fully convolutional up to the global pool; 107 px keeps the test fast
    # while every block still sees a spatial map larger than 1×1.
    return torch.rand(2, 3, 107, 107, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_loads_pytorch_fid_state_dict_and_matches_its_outputs(tmp_path, monkeypatch,
                                                              network_input):
    reference_net = _pytorch_fid_network()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(reference_net.state_dict(), path)
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: reference_net)
    wrapper = pfi.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    with torch.no_grad():
        expected_pool3 = wrapper(network_input)[0].flatten(1)
        expected_logits = reference_net.fc(expected_pool3)
        ours = load_fid_inception(path)(network_input)
    assert expected_pool3.abs().mean() > 1e-3  # the comparison is not between zeros
    torch.testing.assert_close(ours["pool3"], expected_pool3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["logits"], expected_logits, rtol=1e-5, atol=1e-5)


class _TSConv(nn.Module):
    """NVIDIA's layer: conv weight, BN without scale (beta, mean, var; eps 1e-3), ReLU."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.stride, self.padding = stride, padding
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = nn.Parameter(torch.empty(cout, cin, *k))
        self.beta = nn.Parameter(torch.empty(cout))
        self.mean = nn.Parameter(torch.empty(cout))
        self.var = nn.Parameter(torch.empty(cout))

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 0.001))


def _seq(**layers):
    return nn.Sequential(OrderedDict(layers))


class _TSPool(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if self.kind == "max":
            return F.max_pool2d(x, 3, 1, 1)
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _TSA(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.conv = _TSConv(cin, 64, 1)
        self.tower = _seq(conv=_TSConv(cin, 48, 1), conv_1=_TSConv(48, 64, 5, padding=2))
        self.tower_1 = _seq(conv=_TSConv(cin, 64, 1), conv_1=_TSConv(64, 96, 3, padding=1),
                            conv_2=_TSConv(96, 96, 3, padding=1))
        self.tower_2 = _seq(pool=_TSPool("avg"), conv=_TSConv(cin, pool, 1))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _TSB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.conv = _TSConv(cin, 384, 3, stride=2)
        self.tower = _seq(conv=_TSConv(cin, 64, 1), conv_1=_TSConv(64, 96, 3, padding=1),
                          conv_2=_TSConv(96, 96, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class _TSC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.conv = _TSConv(cin, 192, 1)
        self.tower = _seq(conv=_TSConv(cin, c7, 1), conv_1=_TSConv(c7, c7, (1, 7), padding=(0, 3)),
                          conv_2=_TSConv(c7, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = _seq(conv=_TSConv(cin, c7, 1),
                            conv_1=_TSConv(c7, c7, (7, 1), padding=(3, 0)),
                            conv_2=_TSConv(c7, c7, (1, 7), padding=(0, 3)),
                            conv_3=_TSConv(c7, c7, (7, 1), padding=(3, 0)),
                            conv_4=_TSConv(c7, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = _seq(pool=_TSPool("avg"), conv=_TSConv(cin, 192, 1))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _TSD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.tower = _seq(conv=_TSConv(cin, 192, 1), conv_1=_TSConv(192, 320, 3, stride=2))
        self.tower_1 = _seq(conv=_TSConv(cin, 192, 1),
                            conv_1=_TSConv(192, 192, (1, 7), padding=(0, 3)),
                            conv_2=_TSConv(192, 192, (7, 1), padding=(3, 0)),
                            conv_3=_TSConv(192, 192, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class _TSE(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.conv = _TSConv(cin, 320, 1)
        self.tower_conv = _TSConv(cin, 384, 1)
        self.tower_mixed_conv = _TSConv(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = _TSConv(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = _TSConv(cin, 448, 1)
        self.tower_1_conv_1 = _TSConv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = _TSConv(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = _TSConv(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = _TSPool(pool)
        self.tower_2_conv = _TSConv(cin, 192, 1)

    def forward(self, x):
        a, b = self.tower_conv(x), self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class _NvidiaStyleInception(nn.Module):
    """The module layout of NVIDIA's inception-2015-12-05.pt (names as in its TorchScript)."""

    def __init__(self):
        super().__init__()
        self.layers = _seq(
            conv=_TSConv(3, 32, 3, stride=2), conv_1=_TSConv(32, 32, 3),
            conv_2=_TSConv(32, 64, 3, padding=1), pool0=nn.MaxPool2d(3, 2),
            conv_3=_TSConv(64, 80, 1), conv_4=_TSConv(80, 192, 3), pool1=nn.MaxPool2d(3, 2),
            mixed=_TSA(192, 32), mixed_1=_TSA(256, 64), mixed_2=_TSA(288, 64),
            mixed_3=_TSB(288), mixed_4=_TSC(768, 128), mixed_5=_TSC(768, 160),
            mixed_6=_TSC(768, 160), mixed_7=_TSC(768, 192), mixed_8=_TSD(768),
            mixed_9=_TSE(1280, "avg"), mixed_10=_TSE(2048, "max"),
            pool2=nn.AdaptiveAvgPool2d(1))  # the real file: AvgPool2d(8) on 299 px input
        self.output = nn.Linear(2048, 1008)

    def forward(self, x):
        return self.layers(x).reshape(-1, 2048)


def test_loads_torchscript_archive_and_matches_its_forward(tmp_path, network_input):
    reference = _NvidiaStyleInception()
    _randomise(reference, seed=2)
    scripted = torch.jit.script(reference.eval())
    path = tmp_path / "inception-2015-12-05.pt"
    scripted.save(str(path))
    with torch.no_grad():
        expected = scripted(network_input)
        ours = load_fid_inception(path)(network_input)
    assert expected.abs().mean() > 1e-3
    torch.testing.assert_close(ours["pool3"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["logits"], reference.output(expected), rtol=1e-5, atol=1e-5)


def test_torchscript_reader_refuses_non_tensor_globals(tmp_path):
    payload = pickle.dumps(__import__("os").getcwd)  # a GLOBAL to os.getcwd
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", payload)
        archive.writestr("evil/code/__torch__.py", "")
    with pytest.raises(CheckpointError, match="not plain tensor data"):
        load_torchscript_tensors(path)


def test_resize_is_pil_bicubic_on_float_channels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    expected = np.stack([np.asarray(Image.fromarray(image[:, :, c].astype(np.float32))
                                    .resize((299, 299), Image.Resampling.BICUBIC))
                         for c in range(3)], axis=2).clip(0, 255)
    ours = resize_for_inception(image)
    np.testing.assert_array_equal(ours, expected)
    assert ours.dtype == np.float32 and not np.allclose(ours, np.round(ours))  # not quantised
    # clean-fid's "clean" mode is the same operation.
    from cleanfid.resize import make_resizer
    np.testing.assert_allclose(ours, make_resizer("PIL", False, "bicubic", (299, 299))(image),
                               atol=1e-5 * 255)
    # ...and differs from the torch bilinear resize of pytorch-fid's legacy path.
    bilinear = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                             size=(299, 299), mode="bilinear", align_corners=False)
    assert np.abs(bilinear[0].permute(1, 2, 0).numpy() - ours).max() > 1.0
    x = inception_input([image])
    assert x.shape == (1, 3, 299, 299)
    torch.testing.assert_close(x[0].permute(1, 2, 0), (torch.from_numpy(expected) - 128) / 128)


def test_missing_weights_name_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path))
    with pytest.raises(MissingFileError) as info:
        load_fid_inception()
    message = info.value.one_line()
    for name in ("pt_inception-2015-12-05-6726825d.pth", "inception-2015-12-05.pt", "6726825d",
                 str(tmp_path / "weights"), "FD_"):
        assert name in message
    assert info.value.field == "inception"


def test_default_location_is_found_and_wrong_network_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path))
    (tmp_path / "weights").mkdir()
    torch.save(FIDInceptionV3().state_dict(),
               tmp_path / "weights" / "pt_inception-2015-12-05-6726825d.pth")
    assert isinstance(load_fid_inception(), FIDInceptionV3)
    wrong = tmp_path / "other.pth"
    torch.save(nn.Linear(2, 2).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_fid_inception(wrong)
