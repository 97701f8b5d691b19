"""A trained CLIP's image tower as a feature extractor: reported as FD_clip-NAME, never FID."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagesynth.cli import run
from imagesynth.metrics import create_extractor


def test_clip_extractor_features_and_name(tiny_clip_run):
    _, result = tiny_clip_run
    extractor = create_extractor(f"clip:{result.model_dir}")
    assert extractor.distance_name == "FD_clip-model"
    images = [np.full((20, 20, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    features, logits = extractor.extract(images)
    assert features.shape == (3, 32) and logits is None
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_evaluate_cli_with_clip_extractor(tiny_clip_run, tmp_path, capsys):
    root, result = tiny_clip_run
    images = root / "shapes" / "images"
    report = tmp_path / "report.json"
    code = run(["evaluate", str(images), "--ref", str(images), "--metrics", "fd,pr",
                "--extractor", f"clip:{result.model_dir}", "--json", str(report)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    text = json.dumps(data)
    assert "FD_clip-model" in text and "FID" not in text
    assert data["metrics"]["FD_clip-model"] == pytest.approx(0.0, abs=1e-6)
