"""`imagesynth evaluate` end to end, the feature cache, the Python API and folder errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from imagesynth.cli import run
from imagesynth.errors import DataError, InputImageError
from imagesynth.metrics import (ModuleExtractor, fd_from_features, fid, folder_features,
                                register_extractor)
from imagesynth.metrics.inception import FIDInceptionV3


def _write_images(folder, count, seed, size=12):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


class _MeanColour(nn.Module):
    """A tiny deterministic extractor: per-channel means and stds (6-d)."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path / "home"))
    register_extractor("meancolour", lambda: ModuleExtractor(_MeanColour(), "meancolour"))


@pytest.mark.slow  # four 299 px Inception forwards: 5–35 s on two busy CPU cores
def test_evaluate_with_inception_file_reports_fid_and_is(tmp_path, capsys):
    # Few images: a 299 px Inception forward costs ~0.5 s each on two CPU cores.
    generated = _write_images(tmp_path / "gen", 2, seed=0)
    reference = _write_images(tmp_path / "ref", 2, seed=1)
    weights = tmp_path / "random_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    out = tmp_path / "report.json"
    code = run(["evaluate", str(generated), "--ref", str(reference), "--metrics",
                "fd,kid,is", "--inception", str(weights), "--json", str(out),
                "--batch-size", "4"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert report["extractor"] == "inception" and report["feature_dim"] == 2048
    assert (report["num_generated"], report["num_reference"]) == (2, 2)
    assert set(metrics) >= {"FID", "KID_mean", "KID_std", "IS_mean", "IS_std"}
    assert all(np.isfinite(value) for value in metrics.values())
    assert "FID" in capsys.readouterr().out


def test_other_extractor_is_reported_as_fd_name_and_cache_is_used(tmp_path, capsys):
    generated = _write_images(tmp_path / "gen", 8, seed=2)
    reference = _write_images(tmp_path / "ref", 8, seed=3)
    out = tmp_path / "r.json"
    args = ["evaluate", str(generated), "--ref", str(reference), "--extractor", "meancolour",
            "--metrics", "fd,kid,pr", "--json", str(out)]
    assert run(args) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert "FID" not in metrics and "FD_meancolour" in metrics
    extractor = ModuleExtractor(_MeanColour(), "meancolour")
    cached = folder_features(generated, extractor)
    assert cached.from_cache
    fresh_ref = folder_features(reference, extractor, use_cache=False)
    assert metrics["FD_meancolour"] == pytest.approx(
        fd_from_features(cached.features, fresh_ref.features), rel=1e-12)
    # Changing one file's bytes misses the cache.
    _write_images(tmp_path / "gen", 1, seed=9)
    assert not folder_features(generated, extractor).from_cache


def test_inception_score_needs_logits(tmp_path, capsys):
    generated = _write_images(tmp_path / "gen", 3, seed=0)
    code = run(["evaluate", str(generated), "--ref", str(generated), "--extractor",
                "meancolour", "--metrics", "is"])
    assert code == 2 and "logits" in capsys.readouterr().err


def test_missing_inception_file_says_which_file_and_where(tmp_path, capsys):
    generated = _write_images(tmp_path / "gen", 3, seed=0)
    code = run(["evaluate", str(generated), "--ref", str(generated)])
    err = capsys.readouterr().err
    assert code == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "weights" in err


def test_folder_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    good = _write_images(tmp_path / "good", 3, seed=0)
    code = run(["evaluate", str(empty), "--ref", str(good), "--extractor", "meancolour"])
    assert code == 2 and "generated_dir" in capsys.readouterr().err
    (good / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputImageError, match="broken.png"):
        folder_features(good, ModuleExtractor(_MeanColour(), "meancolour"))
    with pytest.raises(DataError):
        folder_features(tmp_path / "absent", ModuleExtractor(_MeanColour(), "meancolour"))
    code = run(["evaluate", str(good), "--ref", str(good), "--metrics", "fd,xyz"])
    assert code == 2 and "metrics" in capsys.readouterr().err


def test_python_api_on_tensors():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(6, 3, 10, 10, generator=generator)
    b = (torch.rand(6, 3, 10, 10, generator=generator) * 255).to(torch.uint8)
    extractor = ModuleExtractor(_MeanColour(), "meancolour")
    value = fid(a, b, extractor=extractor)
    expected = fd_from_features(_MeanColour()(a).numpy(), _MeanColour()(b.float() / 255).numpy())
    assert value == pytest.approx(expected, rel=1e-5)
