"""Safe weight loading: safetensors validation, pickle refusal, trust by exact hash."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from imagesynth.errors import CheckpointError, MissingFileError, UnsafeCheckpointError
from imagesynth.io import checkpoint
from imagesynth.io.checkpoint import load_weights, read_config, save_weights
from imagesynth.io.files import sha256_file


class _Payload:
    """Unpickling this writes a sentinel file: what a malicious checkpoint would do."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.write_text, (self.sentinel, "pwned"))


def _malicious_zip(path: Path, sentinel: Path) -> Path:
    torch.save({"state_dict": {"w": torch.ones(2)}, "evil": _Payload(sentinel)}, path)
    return path


def _malicious_legacy(path: Path, sentinel: Path) -> Path:
    path.write_bytes(pickle.dumps({"evil": _Payload(sentinel)}))
    return path


def test_safetensors_round_trip_keeps_config(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    path = save_weights(tmp_path / "m.safetensors", tensors, config={"family": "t", "width": 4})
    loaded = load_weights(path)
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    assert read_config(path) == {"family": "t", "width": 4}


@pytest.mark.parametrize("make", [_malicious_zip, _malicious_legacy], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, make):
    sentinel = tmp_path / "sentinel.txt"
    path = make(tmp_path / "evil.ckpt", sentinel)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_weights(path)
    assert not sentinel.exists()
    assert sha256_file(path) in info.value.one_line()  # tells the user how to trust it
    with pytest.raises(UnsafeCheckpointError):
        load_weights(path, trust_pickle="0" * 64)
    assert not sentinel.exists()


def test_trusted_hash_allows_full_unpickling(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    path = _malicious_zip(tmp_path / "evil.ckpt", sentinel)
    state = load_weights(path, trust_pickle=sha256_file(path).upper())
    assert sentinel.read_text() == "pwned"  # the user vouched for exactly this file
    assert torch.equal(state["w"], torch.ones(2))


def test_plain_pickle_of_tensors_loads_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert torch.equal(load_weights(path)["w"], torch.zeros(3))
    assert calls == [True]


def test_old_torch_refuses_pickles(tmp_path, monkeypatch):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.zeros(1)}, path)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(UnsafeCheckpointError):
        load_weights(path)


def _raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


@pytest.mark.parametrize("header,data,needle", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, "match"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "malformed"),
])
def test_invalid_safetensors_are_diagnosed(tmp_path, header, data, needle):
    path = _raw_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=needle):
        load_weights(path)


def test_huge_header_length_and_short_files(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(CheckpointError, match="header"):
        load_weights(path)
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    with pytest.raises(CheckpointError, match="truncated"):
        load_weights(tmp_path / "short.safetensors")
    with pytest.raises(MissingFileError):
        load_weights(tmp_path / "absent.safetensors")


def test_non_finite_weights_are_refused(tmp_path):
    path = save_weights(tmp_path / "nan.safetensors", {"w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(CheckpointError, match="NaN"):
        load_weights(path)


def test_torch_load_is_confined_to_the_checkpoint_module():
    src = Path(checkpoint.__file__).resolve().parents[1]
    offenders = []
    for path in src.rglob("*.py"):
        text = path.read_text()
        if path.name != "checkpoint.py" and ("torch.load(" in text or "pickle.load" in text):
            offenders.append(str(path.relative_to(src)))
        if "weights_only=False" in text.replace(" ", ""):
            offenders.append(f"{path.relative_to(src)} (weights_only=False)")
    assert offenders == []
