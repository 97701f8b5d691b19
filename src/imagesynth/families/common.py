"""What every family's training entry point and loader share: the data check and the model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.folder import CaptionedImageFolder
from ..errors import ConfigError, DataError, ModelNotFoundError
from ..registry import Registry


def training_folder(data: str | Path, image_size: int, preset: str,
                    min_images: int) -> CaptionedImageFolder:
    """The train split of `data` at `image_size`; one-line errors for no folder or too few images."""
    if not Path(data).is_dir():
        raise DataError(f"{data} is not a folder", field="data",
                        fix="point --data at a folder of images (e.g. from `imagesynth data`)")
    folder = CaptionedImageFolder(data, resolution=image_size, split="train")
    if len(folder) < min_images:
        raise ConfigError(f"{data} has {len(folder)} training images; preset {preset!r} needs "
                          f"at least {min_images}", field="data",
                          fix="use a larger folder (e.g. `imagesynth data shapes --count ...`)")
    return folder


def load_family_model(spec: str | Path, family: str, noun: str,
                      build: Callable[[dict], torch.nn.Module],
                      device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build a family's module from its folder's config and load its hash-verified weights."""
    registry = Registry()
    entry = registry.get(str(spec))
    config = entry.config()
    if config.get("family") != family:
        raise ModelNotFoundError(f"{spec!r} is a {config.get('family', 'unknown')!r} model, "
                                 f"not {noun}", field="model",
                                 fix=f"pass {noun} model folder (family '{family}')")
    model = build(config)
    model.load_state_dict(registry.load_state_dict(entry))
    return model.to(device).eval().requires_grad_(False)


def training_figures(log_path: Path) -> dict[str, float]:
    """Mean images/s over the logged windows (the first skipped) and the mean loss of the last
    10 log lines."""
    if not log_path.is_file():
        return {}
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return {}
    return {"images_per_second": float(np.mean([r["images_per_second"] for r in rows[1:] or rows])),
            "final_loss_mean_of_last_10_logs": float(np.mean([r["loss"] for r in rows[-10:]]))}
