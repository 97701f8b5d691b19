"""Feature extractors behind one interface, and a registry of them by name.

An extractor turns a list of RGB images ((H, W, 3) arrays with values in [0, 255], uint8 or
float) into an (N, d) float32 feature array, and optionally (N, C) class logits for the
Inception Score. Only the FID Inception-v3 ("inception") gives "FID"; a distance computed with
any other extractor is reported as `FD_<name>`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ConfigError, DataError
from ..io.files import sha256_file
from .inception import find_inception_file, inception_input, load_fid_inception

INCEPTION = "inception"


class FeatureExtractor:
    """Base class: `name`, `fingerprint` (cache key), `extract(images) -> (features, logits)`."""

    name: str = "extractor"
    #: identifies weights + preprocessing; two extractors with equal fingerprints agree
    fingerprint: str = ""
    provides_logits: bool = False

    def extract(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(features (N, d) float32, logits (N, C) float32 or None) for a batch of images."""
        raise NotImplementedError

    @property
    def distance_name(self) -> str:
        """"FID" for the Inception network, "FD_<name>" for anything else."""
        return "FID" if self.name == INCEPTION else f"FD_{self.name}"


class InceptionExtractor(FeatureExtractor):
    """The FID Inception-v3: pool3 (2048-d) features and bias-free logits for IS.

    Logits omit the fc bias, as the original Inception Score code and torch-fidelity's
    `logits_unbiased` do.
    """

    name = INCEPTION
    provides_logits = True

    def __init__(self, path: str | os.PathLike | None = None, *, device: str = "cpu"):
        weights = find_inception_file(path)
        self.model = load_fid_inception(weights, device=device)
        self.device = device
        self.fingerprint = f"fid-inception:{sha256_file(weights)}:pil-bicubic-299:(x-128)/128"

    def extract(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Resize (PIL bicubic, float) to 299, normalise, run the network."""
        with torch.no_grad():
            out = self.model(inception_input(images).to(self.device))
            logits = out["pool3"] @ self.model.fc.weight.T
        return out["pool3"].float().cpu().numpy(), logits.float().cpu().numpy()


class ModuleExtractor(FeatureExtractor):
    """Any torch module mapping (N, 3, H, W) floats in [0, 1] to (N, d) features.

    With `image_size`, every image is first resized to that square with PIL bicubic;
    without it, all images must share one size.
    """

    def __init__(self, module: nn.Module, name: str, *, image_size: int | None = None,
                 device: str = "cpu"):
        if not name or not name.replace("_", "").replace("-", "").isalnum() or name == INCEPTION:
            raise ConfigError(f"invalid extractor name {name!r}", field="extractor",
                              fix="use letters, digits, '-' or '_' (and not 'inception')")
        self.module = module.to(device).eval()
        self.name = name
        self.image_size = image_size
        self.device = device
        digest = hashlib.sha256(f"{name}:{image_size}".encode())
        for key, value in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        self.fingerprint = f"module:{digest.hexdigest()}"

    def extract(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, None]:
        """Scale to [0, 1] (after an optional resize) and run the module."""
        if self.image_size is not None:
            images = [np.asarray(Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
                                 .resize((self.image_size,) * 2, Image.Resampling.BICUBIC))
                      for image in images]
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise DataError(f"images have different sizes {sorted(shapes)[:3]}",
                            field="images", fix="pass image_size to resize them")
        batch = torch.from_numpy(np.stack(images).astype(np.float32) / 255.0)
        with torch.no_grad():
            features = self.module(batch.permute(0, 3, 1, 2).contiguous().to(self.device))
        if features.ndim != 2:
            raise DataError(f"the {self.name} module returned shape {tuple(features.shape)}, "
                            "not (N, d)", field="extractor", fix="flatten its output")
        return features.float().cpu().numpy(), None


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Make `factory(**options)` available as extractor `name` (CLI `--extractor NAME`)."""
    _REGISTRY[name] = factory


def available_extractors() -> list[str]:
    """Names of the registered extractors."""
    return sorted(_REGISTRY)


class _CLIPImageTower(nn.Module):
    """An imagesynth CLIP's unit-norm image embedding as a feature module."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip_model = clip_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip_model.encode_image(images)


def clip_extractor(model: str, device: str = "cpu", **_unused) -> FeatureExtractor:
    """The image tower of an imagesynth CLIP (`--extractor clip:NAME`), reported as FD_clip-NAME."""
    from ..clip import load_clip  # deferred: loads the text encoder too

    scorer = load_clip(model, device=device)
    return ModuleExtractor(_CLIPImageTower(scorer.model), name=f"clip-{scorer.name}",
                           image_size=scorer.model.config.image_size, device=device)


def create_extractor(name: str, **options) -> FeatureExtractor:
    """Build a registered extractor by name, or `clip:MODEL` for a CLIP image tower."""
    if name.startswith("clip:"):
        return clip_extractor(name[len("clip:"):], **options)
    if name not in _REGISTRY:
        raise ConfigError(f"unknown extractor {name!r}", field="extractor",
                          fix=f"use one of {', '.join(available_extractors())} or clip:MODEL")
    return _REGISTRY[name](**options)


register_extractor(INCEPTION, lambda inception_path=None, device="cpu":
                   InceptionExtractor(inception_path, device=device))
