"""The FID Inception-v3 network (TF `inception-2015-12-05` graph) in pure torch, with safe loaders.

The structure is the one pytorch-fid and torch-fidelity use: torchvision's Inception-v3 layer
names with the FID-specific blocks (average pools that ignore padding, a max pool in the last
block). It loads, without any network access:

- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` and torch-fidelity's
  `weights-inception-2015-12-05-6726825d.pth` (the same state dict, read weights-only);
- NVIDIA's TorchScript `inception-2015-12-05.pt` (stylegan2-ada, clean-fid), whose tensors are
  read by `imagesynth.io.checkpoint.load_torchscript_tensors` and renamed; its code never runs.

Preprocessing convention (one for every weight file): each uint8 image is resized to 299×299
with PIL bicubic on float32 channels, clipped to [0, 255], not re-quantised (clean-fid's "clean"
mode), then mapped to [-1, 1] by (x − 128) / 128 as the TF graph does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import CheckpointError, ConfigError, MissingFileError
from ..io.checkpoint import load_torchscript_tensors, load_weights
from ..paths import home

INPUT_SIZE = 299
NUM_CLASSES = 1008
FEATURE_DIM = 2048

#: the standard file names of the same network, with the SHA-256 prefix their names carry
KNOWN_WEIGHT_FILES = {
    "pt_inception-2015-12-05-6726825d.pth": "pytorch-fid state dict (SHA-256 starts 6726825d)",
    "weights-inception-2015-12-05-6726825d.pth":
        "torch-fidelity state dict (SHA-256 starts 6726825d)",
    "inception-2015-12-05.pt": "NVIDIA TorchScript archive (stylegan2-ada, clean-fid)",
}


def weights_dir() -> Path:
    """Where Inception weight files are looked for by default: $IMAGESYNTH_HOME/weights/."""
    return home() / "weights"


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3 as in TF), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv → BN → ReLU."""
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool leaves the zero padding out of the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block (Mixed_5b–5d)."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the four branches along channels."""
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """35→17 reduction block (Mixed_6a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the conv branches and a strided max pool."""
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (Mixed_6b–6e)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the four branches along channels."""
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17→8 reduction block (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the conv branches and a strided max pool."""
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8×8 block (Mixed_7b with an average pool, Mixed_7c with the FID graph's max pool)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the branches; the pooled branch uses this block's pool type."""
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in TF's `inception-2015-12-05` graph: pool3 features and 1008 logits."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, 299, 299) in [-1, 1] → {"pool3": (N, 2048), "logits": (N, 1008)}."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        pool3 = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)  # (N, 2048)
        return {"pool3": pool3, "logits": self.fc(pool3)}


# TorchScript (NVIDIA) module names → the torchvision-style names above.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_MIXED = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
          "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"),
          "mixed_5": ("Mixed_6c", "C"), "mixed_6": ("Mixed_6d", "C"),
          "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
          "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
_BLOCK_LAYERS = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
          "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}


def _torchscript_layer_names() -> dict[str, str]:
    """Map each TorchScript conv layer prefix (`layers.mixed.tower.conv`) to ours."""
    names = {f"layers.{ts}": ours for ts, ours in _STEM.items()}
    for ts_block, (block, kind) in _MIXED.items():
        for ts_layer, layer in _BLOCK_LAYERS[kind].items():
            names[f"layers.{ts_block}.{ts_layer}"] = f"{block}.{layer}"
    return names


def torchscript_to_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the TorchScript file's tensors; its BN has no scale (γ = 1), so that is filled in."""
    state = {}
    for ts_prefix, prefix in _torchscript_layer_names().items():
        try:
            weight = tensors[f"{ts_prefix}.weight"]
            state[f"{prefix}.conv.weight"] = weight
            state[f"{prefix}.bn.bias"] = tensors[f"{ts_prefix}.beta"]
            state[f"{prefix}.bn.running_mean"] = tensors[f"{ts_prefix}.mean"]
            state[f"{prefix}.bn.running_var"] = tensors[f"{ts_prefix}.var"]
        except KeyError as exc:
            raise CheckpointError(f"the TorchScript file lacks tensor {exc.args[0]!r}; it is not "
                                  "the inception-2015-12-05 network", field="inception",
                                  fix="pass inception-2015-12-05.pt or pytorch-fid's .pth") \
                from None
        state[f"{prefix}.bn.weight"] = torch.ones(weight.shape[0], dtype=weight.dtype)
    for ts_name, name in (("output.weight", "fc.weight"), ("output.bias", "fc.bias")):
        if ts_name not in tensors:
            raise CheckpointError(f"the TorchScript file lacks tensor {ts_name!r}",
                                  field="inception", fix="pass inception-2015-12-05.pt")
        state[name] = tensors[ts_name]
    return state


def find_inception_file(path: str | os.PathLike | None = None) -> Path:
    """The explicit `path`, else the first known file name found in `weights_dir()`."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingFileError(f"no Inception weights file at {path}", field="inception",
                                   fix=_missing_fix())
        return path
    for name in KNOWN_WEIGHT_FILES:
        candidate = weights_dir() / name
        if candidate.is_file():
            return candidate
    raise MissingFileError("FID needs the Inception-v3 weights, which cannot be downloaded",
                           field="inception", fix=_missing_fix())


def _missing_fix() -> str:
    known = "; ".join(f"{name} ({about})" for name, about in KNOWN_WEIGHT_FILES.items())
    return (f"put one of these files in {weights_dir()} or pass --inception PATH: {known}. "
            "Or use another extractor; its distance is then reported as FD_<extractor>")


def load_fid_inception(path: str | os.PathLike | None = None, *,
                       device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build the FID Inception-v3 and load weights from a local `.pth` or TorchScript `.pt`."""
    path = find_inception_file(path)
    if _is_torchscript(path):
        state = torchscript_to_state_dict(load_torchscript_tensors(path))
    else:
        state = load_weights(path)
    model = FIDInceptionV3()
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path.name} does not fit the FID Inception-v3 (missing "
                              f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})",
                              field="inception", fix=_missing_fix())
    return model.to(device).eval().requires_grad_(False)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a `code/` folder; pytorch-fid's `.pth` is a pickle."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def resize_for_inception(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) float32 in [0, 255]: PIL bicubic per float channel."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"expected an (H, W, 3) image, got shape {tuple(image.shape)}",
                          field="images", fix="pass RGB images")
    channels = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32))
                           .resize((size, size), resample=Image.Resampling.BICUBIC))
                for c in range(3)]
    return np.clip(np.stack(channels, axis=2), 0, 255)


def inception_input(images: Iterable[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images → (N, 3, 299, 299) float32 network input in [-1, 1]."""
    batch = np.stack([resize_for_inception(image) for image in images])
    return (torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous() - 128.0) / 128.0
