"""imagesynth CLIP models as Scorers, and loading them by name or folder."""

from __future__ import annotations

import torch

from ..config import from_dict
from ..errors import ModelNotFoundError
from ..nets.clip import CLIPConfig, CLIPModel
from ..registry import Registry
from ..text import CachedTextEncoder, TextEncoder, load_text_encoder


class CLIPScorer:
    """An imagesynth CLIP (image tower + projected text-encoder features) as a Scorer."""

    def __init__(self, model: CLIPModel, text_encoder: TextEncoder, name: str = "clip",
                 weights_hash: str | None = None):
        self.model = model.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.name = name
        self._weights_hash = weights_hash

    def identity(self) -> str:
        """A hash of everything that fixes the embeddings: weights and text encoder."""
        import hashlib

        digest = hashlib.sha256(self.text_encoder.identity().encode())
        if self._weights_hash is not None:
            digest.update(self._weights_hash.encode())
        else:  # an in-memory model: hash its parameters
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings [N, D]."""
        pooled = self.text_encoder(list(texts)).pooled.to(self.device)
        return self.model.encode_text_features(pooled)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings [B, D] (gradients flow to `images`)."""
        return self.model.encode_image(images.to(self.device))

    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity [B, N] between images and texts."""
        return self.embed_image(images) @ self.embed_text(texts).T

    def logit_scale(self) -> float:
        """The learned inverse temperature (for zero-shot probabilities)."""
        return float(self.model.scale())


def load_clip(spec: str, device: str | torch.device = "cpu",
              text_encoder: TextEncoder | None = None) -> CLIPScorer:
    """Load an imagesynth CLIP by registry name or folder path (hash-verified)."""
    registry = Registry()
    entry = registry.get(spec)
    config = entry.config()
    if config.get("family") != "clip":
        raise ModelNotFoundError(f"{spec!r} is a {config.get('family', 'unknown')!r} model, "
                                 "not a CLIP", field="model", fix="pass a CLIP model")
    clip_config = from_dict(CLIPConfig, config["clip"])
    model = CLIPModel(clip_config)
    model.load_state_dict(registry.load_state_dict(entry))
    encoder = text_encoder or CachedTextEncoder(load_text_encoder(clip_config.text_encoder))
    weights_hash = ",".join(f"{k}:{v}" for k, v in sorted(entry.files.items())
                            if k.endswith(".safetensors")) or None
    return CLIPScorer(model.to(device), encoder, name=entry.name, weights_hash=weights_hash)
