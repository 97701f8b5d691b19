"""Training checkpoints without pickle: model, EMA and optimizer state as safetensors + JSON.

A checkpoint is a folder `step_00001234/` holding `model.safetensors`, `ema.safetensors`,
`optimizer.safetensors` (with the param groups as JSON metadata), `state.json`, and finally a
`COMPLETE` marker. Readers only trust folders with the marker, so a run killed mid-write
resumes from the previous checkpoint; old checkpoints are pruned only after a new one is
complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io.checkpoint import load_weights, read_metadata, save_weights
from ..io.files import atomic_write_text

COMPLETE = "COMPLETE"
PREFIX = "step_"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimizer state dict into tensors plus JSON for the non-tensor parts."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value
            else:
                scalars[key] = value
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta_json: str) -> None:
    """Inverse of `optimizer_tensors`: rebuild and load the optimizer state dict."""
    meta = json.loads(meta_json)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def checkpoint_dirs(root: Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))
    return [p for p in found if (p / COMPLETE).is_file()] if complete_only else found


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any], keep: int) -> Path:
    """Write a complete checkpoint for `step`, then prune all but the newest `keep`."""
    folder = root / f"{PREFIX}{step:08d}"
    if folder.exists():
        shutil.rmtree(folder)  # an incomplete leftover from a killed run
    folder.mkdir(parents=True)
    save_weights(folder / "model.safetensors", model.state_dict())
    if ema is not None:
        save_weights(folder / "ema.safetensors", ema.state_dict())
    tensors, meta = optimizer_tensors(optimizer)
    save_weights(folder / "optimizer.safetensors", tensors, metadata={"optimizer": meta})
    atomic_write_text(folder / "state.json", json.dumps({"step": step, **state}, indent=2))
    atomic_write_text(folder / COMPLETE, "")
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_dirs(root, complete_only=False):
        if not (stale / COMPLETE).exists() and stale != folder:
            shutil.rmtree(stale, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model/EMA/optimizer in place from a complete checkpoint; return its state."""
    if not (folder / COMPLETE).is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint", field="resume",
                              fix="resume from another checkpoint, or start afresh")
    device = next(model.parameters()).device
    model.load_state_dict(load_weights(folder / "model.safetensors", device=device))
    if ema is not None and (folder / "ema.safetensors").is_file():
        ema.load_state_dict(load_weights(folder / "ema.safetensors", device=device))
    opt_path = folder / "optimizer.safetensors"
    restore_optimizer(optimizer, load_weights(opt_path, device=device, check_finite=False),
                      read_metadata(opt_path)["optimizer"])
    return json.loads((folder / "state.json").read_text())
