"""Model folders, the SHA-256 registry, and the CLI's error contract."""

from __future__ import annotations

import json

import pytest
import torch

from imagesynth.cli import app, run
from imagesynth.errors import IntegrityError, UnsafeCheckpointError
from imagesynth.io.files import sha256_file
from imagesynth.registry import Registry, write_model_folder


@pytest.fixture
def registry(tmp_path):
    return Registry(state_dir=tmp_path / "state", bundled_dir=tmp_path / "bundled")


def _model(folder):
    return write_model_folder(folder, {"w": torch.randn(4, 4)},
                              {"family": "toy", "width": 4}, "# toy\nA test model.\n")


def test_model_folder_is_self_describing(tmp_path):
    from imagesynth.io.checkpoint import read_config

    folder = _model(tmp_path / "toy")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "CARD.md",
                                                  "SHA256SUMS"}
    assert read_config(folder / "model.safetensors") == {"family": "toy", "width": 4}


def test_bundled_models_are_listed_and_verified(registry):
    _model(registry.bundled_dir / "toy")
    (entry,) = registry.entries()
    assert (entry.name, entry.source, entry.family) == ("toy", "bundled", "toy")
    assert registry.verify(entry) == []
    (registry.bundled_dir / "toy" / "CARD.md").write_text("tampered")
    assert registry.verify(entry) == ["CARD.md changed (SHA-256 differs from the recorded one)"]


def test_add_pins_hashes_and_detects_tampering(registry, tmp_path):
    folder = _model(tmp_path / "mine")
    entry = registry.add(folder, name="mine")
    assert registry.get("mine") == entry
    assert torch.equal(registry.load_state_dict(entry)["w"],
                       registry.load_state_dict(registry.get("mine"))["w"])
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed"):
        registry.load_state_dict(registry.get("mine"))
    registry.remove("mine")
    assert registry.entries() == []


def test_add_pickle_requires_trust(registry, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("x",))

    path = tmp_path / "evil.ckpt"
    torch.save({"w": torch.ones(1), "e": Evil()}, path)
    with pytest.raises(UnsafeCheckpointError):
        registry.add(path)
    entry = registry.add(path, trust_pickle=sha256_file(path))
    assert entry.trusted_pickle == sha256_file(path)


def test_every_command_has_help(capsys):
    from imagesynth.cli import _register

    _register()
    import typer.main

    group = typer.main.get_command(app)
    paths = [[name] for name in group.commands]
    paths += [[name, sub] for name, cmd in group.commands.items()
              for sub in getattr(cmd, "commands", {})]
    for path in paths:
        assert run([*path, "--help"]) == 0, path
    assert "Usage" in capsys.readouterr().out


def test_cli_errors_are_one_line_with_exit_codes(capsys, tmp_path):
    assert run(["models", "add", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "path:" in err and "Traceback" not in err
    assert run(["models", "frobnicate"]) == 2  # unknown sub-command: a usage error
    assert run(["models", "verify", "no-such-model"]) == 2


def test_cli_verify_exits_1_on_tampered_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_MODELS", str(tmp_path / "bundled"))
    _model(tmp_path / "bundled" / "toy")
    assert run(["models", "verify"]) == 0
    capsys.readouterr()
    assert run(["models", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == "toy" and listed["source"] == "bundled"
    (tmp_path / "bundled" / "toy" / "config.json").write_text('{"family": "toy"}')
    assert run(["models", "verify"]) == 1
    assert "config.json changed" in capsys.readouterr().out


def test_doctor_reports_environment(capsys):
    assert run(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] in {"cpu"} or report["device"].startswith("cuda")
    assert report["packages"]["torch"] and report["torch_threads"] >= 1


def test_model_folder_by_path_is_verified_against_its_own_sums(registry, tmp_path):
    folder = _model(tmp_path / "by-path")
    entry = registry.get(str(folder))
    assert entry.source == "path" and registry.verify(entry) == []
    (folder / "CARD.md").write_text("edited")
    with pytest.raises(IntegrityError, match="CARD.md changed"):
        registry.load_state_dict(registry.get(str(folder)))


def test_models_half_stores_fp16_that_loads_and_scores_like_the_original(tiny_clip_run, minilm,
                                                                        tmp_path, capsys):
    """`models half`: fp16 file about half the size; the loaded CLIP embeds almost identically."""
    from imagesynth.clip import load_clip
    from imagesynth.io.checkpoint import load_weights

    source = tiny_clip_run[1].model_dir
    out = tmp_path / "half"
    assert run(["models", "half", str(source), "--out", str(out)]) == 0
    weights = load_weights(out / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    ratio = (out / "model.safetensors").stat().st_size / (source / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.6
    assert Registry().verify(Registry().get(str(out))) == []
    original, halved = (load_clip(str(p), text_encoder=minilm) for p in (source, out))
    images = torch.rand(3, 3, 16, 16)
    for scorer in (original, halved):
        assert next(scorer.model.parameters()).dtype == torch.float32  # upcast on load
    assert torch.allclose(original.embed_image(images), halved.embed_image(images), atol=2e-2)
    assert run(["models", "half", str(source), "--out", str(out)]) == 2  # never overwrites
    assert "out:" in capsys.readouterr().err
