"""Safe weight files: safetensors with config metadata; pickles only weights-only or trusted.

This is the only module that may call `torch.load`. Pickle files are code: they load through
the restricted `weights_only=True` unpickler, and full unpickling happens only when the user
passes the SHA-256 of that exact file. A failed safe load is never retried unsafely.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, MissingFileError, UnsafeCheckpointError
from .files import atomic_path, sha256_file

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: the safetensors spec's own header cap, against header-length DoS
MAX_HEADER_BYTES = 100_000_000
#: torch releases below this have known weights_only unpickler escapes (CVE-2026-24747)
MIN_TORCH_FOR_PICKLE = (2, 10)
CONFIG_KEY = "imagesynth.config"
FORMAT_KEY = "imagesynth.format"

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def save_weights(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 config: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors atomically as safetensors, with the resolved config as JSON metadata."""
    meta = {FORMAT_KEY: "1", **(metadata or {})}
    if config is not None:
        meta[CONFIG_KEY] = json.dumps(config, sort_keys=True)
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    target = Path(path)
    with atomic_path(target) as tmp:
        save_file(contiguous, str(tmp), metadata=meta)
    return target


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """Parse and validate a safetensors header without reading tensor data.

    Checks the header length, JSON, dtypes, that every tensor's byte range matches its
    shape, lies inside the file and overlaps no other; distinguishes truncated from invalid.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name} is truncated (no header)", field="weights",
                                  fix="re-copy the file; it is incomplete")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path.name} declares a {header_len}-byte header, over the "
                                  f"{MAX_HEADER_BYTES}-byte limit", field="weights",
                                  fix="this is not a valid safetensors file")
        if 8 + header_len > size:
            raise CheckpointError(f"{path.name} is truncated (header runs past the end)",
                                  field="weights", fix="re-copy the file; it is incomplete")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path.name} has an unreadable header", field="weights",
                              fix="this is not a valid safetensors file") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a malformed header", field="weights")
    data_size = size - 8 - header_len
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CheckpointError(f"{path.name} has malformed metadata", field="weights")
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            itemsize = _DTYPE_BYTES[dtype]
            count = math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name}: tensor {name!r} has a malformed entry",
                                  field="weights") from None
        if not (0 <= start <= end) or count * itemsize != end - start:
            raise CheckpointError(f"{path.name}: tensor {name!r} has a byte range that does not "
                                  "match its shape", field="weights",
                                  fix="this file is invalid")
        if end > data_size:
            raise CheckpointError(f"{path.name} is truncated (tensor {name!r} runs past the "
                                  "end)", field="weights", fix="re-copy the file; it is incomplete")
        ranges.append((start, end, name))
    ranges.sort()
    for (_, prev_end, prev), (start, _, name) in zip(ranges, ranges[1:]):
        if start < prev_end:
            raise CheckpointError(f"{path.name}: tensors {prev!r} and {name!r} overlap",
                                  field="weights", fix="this file is invalid")
    return header


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors `__metadata__` mapping (empty when absent)."""
    return dict(read_safetensors_header(path).get("__metadata__", {}))


def read_config(path: str | os.PathLike) -> dict | None:
    """The resolved config a file was saved with, or None."""
    text = read_metadata(path).get(CONFIG_KEY)
    return json.loads(text) if text else None


def _check_finite(tensors: Mapping[str, Any], name: str) -> None:
    """Refuse weights with NaN/Inf: safetensors itself never checks values."""
    for key, value in tensors.items():
        if torch.is_tensor(value) and value.is_floating_point() and \
                not torch.isfinite(value).all():
            raise CheckpointError(f"{name}: tensor {key!r} contains NaN or Inf", field="weights",
                                  fix="the weights are corrupt; retrain or re-export them")


def load_weights(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                 trust_pickle: str | None = None,
                 check_finite: bool = True) -> dict[str, Any]:
    """Load a weights file safely and return its state dict (tensors on `device`).

    `.safetensors` is validated and read; `.ckpt/.pt/.pth/.bin` go through torch's
    weights-only unpickler unless `trust_pickle` equals the file's SHA-256.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no weights file at {path}", field="weights",
                               fix="pass the path of an existing .safetensors file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        read_safetensors_header(path)
        try:
            tensors = load_file(str(path), device=str(device))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path.name} could not be read ({exc})", field="weights",
                                  fix="re-copy or re-export the file") from None
    elif suffix in PICKLE_SUFFIXES:
        tensors = _load_pickle(path, device, trust_pickle)
    else:
        raise CheckpointError(f"{path.name}: unknown weights format {suffix!r}", field="weights",
                              fix="use .safetensors (or a .ckpt/.pt/.pth/.bin pickle)")
    if check_finite:
        _check_finite(tensors, path.name)
    return tensors


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _load_pickle(path: Path, device: str | torch.device, trust_pickle: str | None) -> dict:
    """Weights-only unpickling, or full unpickling for a file the user trusted by hash."""
    if _torch_version() < MIN_TORCH_FOR_PICKLE:
        raise UnsafeCheckpointError(
            f"torch {torch.__version__} has known unpickler escapes; pickle files are refused",
            field="weights", fix="upgrade torch or convert the file to .safetensors")
    trusted = False
    if trust_pickle is not None:
        actual = sha256_file(path)
        if trust_pickle.strip().lower() != actual:
            raise UnsafeCheckpointError(
                f"{path.name} has SHA-256 {actual}, not the trusted hash {trust_pickle}",
                field="trust_pickle", fix="pass the SHA-256 of this exact file, or don't trust it")
        trusted = True
    try:
        # weights_only is off only for the one file whose hash the user vouched for above.
        obj = torch.load(path, map_location=device, weights_only=not trusted)
    except Exception as exc:
        if trusted:
            raise CheckpointError(f"{path.name} could not be unpickled ({exc})",
                                  field="weights") from None
        raise UnsafeCheckpointError(
            f"{path.name} holds objects beyond plain tensors and was refused "
            f"({type(exc).__name__})", field="weights",
            fix=f"convert it to .safetensors, or if you trust this file run with "
                f"--trust-pickle {sha256_file(path)}") from None
    return extract_state_dict(obj, path.name)


def extract_state_dict(obj: Any, name: str = "checkpoint") -> dict[str, Any]:
    """Unwrap the common checkpoint containers (`state_dict`, `model`, `module`)."""
    for key in ("state_dict", "model", "module", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name} does not contain a state dict", field="weights",
                              fix="save the model's state_dict(), not the module")
    return obj


def load_torchscript_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the parameters and buffers of a TorchScript archive without loading it as code.

    `torch.jit.load` is not used: it compiles the archive's code and runs its `__setstate__`
    methods while loading, so a crafted file executes at load time. Instead the archive's
    `data.pkl` is unpickled with an allow-list (tensor rebuild, OrderedDict, storage dtypes);
    every scripted class becomes an inert record of its attributes, tensor bytes come straight
    from the zip entries, and nothing from the archive is ever called. Names are dotted
    attribute paths (`layers.conv.weight`), as `state_dict()` would give.
    """
    import io
    import pickle
    import zipfile
    from collections import OrderedDict

    from ..errors import ImageSynthError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no TorchScript file at {path}", field="weights",
                               fix="pass the path of an existing TorchScript .pt archive")
    storage_dtypes = {f"{name}Storage": dtype for name, dtype in (
        ("Float", torch.float32), ("Double", torch.float64), ("Half", torch.float16),
        ("BFloat16", torch.bfloat16), ("Long", torch.int64), ("Int", torch.int32),
        ("Short", torch.int16), ("Char", torch.int8), ("Byte", torch.uint8),
        ("Bool", torch.bool))}

    # TorchScript pickles typed lists (sizes, strides, flags) through these constructors.
    list_builders = ("build_intlist", "build_floatlist", "build_doublelist", "build_boollist",
                     "build_tensorlist")

    class ScriptObjectRecord:
        """Stands in for any `__torch__.*` class: keeps its pickled state, runs nothing."""

        def __init__(self, *args):
            self.state = None

        def __setstate__(self, state):
            self.state = state

    def rebuild_tensor(storage, offset, size, stride, *unused):
        return storage.as_strided(tuple(size), tuple(stride), offset).clone()

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a TorchScript archive ({exc})",
                              field="weights", fix="pass the .pt file exported by TorchScript") \
            from None
    with archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path.name} has no TorchScript data.pkl", field="weights",
                                  fix="pass the .pt file exported by TorchScript")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
            raise CheckpointError(f"{path.name} stores big-endian tensors", field="weights")

        class AllowListUnpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "__torch__" or module.startswith("__torch__."):
                    return ScriptObjectRecord
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return rebuild_tensor
                if (module, name) == ("collections", "OrderedDict"):
                    return OrderedDict
                if module == "torch.jit._pickle" and name in list_builders:
                    return list
                if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
                    return lambda value, type_name: value
                if module == "torch" and name in storage_dtypes:
                    return storage_dtypes[name]
                raise CheckpointError(f"{path.name} refers to {module}.{name}, which is not "
                                      "plain tensor data", field="weights",
                                      fix="export the weights as .safetensors instead")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                    raise CheckpointError(f"{path.name} has a malformed tensor reference",
                                          field="weights")
                _, dtype, key, _, numel = pid
                raw = bytearray(archive.read(f"{prefix}data/{key}"))
                storage = torch.frombuffer(raw, dtype=torch.uint8) if raw else \
                    torch.empty(0, dtype=torch.uint8)
                storage = storage.view(dtype)
                if storage.numel() < numel:
                    raise CheckpointError(f"{path.name}: tensor data {key} is truncated",
                                          field="weights", fix="re-copy the file")
                return storage

        try:
            root = AllowListUnpickler(io.BytesIO(archive.read(pickles[0]))).load()
        except ImageSynthError:
            raise
        except Exception as exc:  # malformed pickles raise many types
            raise CheckpointError(f"{path.name} could not be read ({type(exc).__name__}: {exc})",
                                  field="weights", fix="re-copy or re-export the file") from None

    tensors: dict[str, torch.Tensor] = {}

    def collect(node, prefix_name: str) -> None:
        state = node.state if isinstance(node, ScriptObjectRecord) else node
        if not isinstance(state, dict):
            return
        for key, value in state.items():
            name = f"{prefix_name}{key}"
            if torch.is_tensor(value):
                tensors[name] = value
            elif isinstance(value, (ScriptObjectRecord, dict)):
                collect(value, f"{name}.")

    collect(root, "")
    return tensors
