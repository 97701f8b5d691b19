"""The worker's cheap live previews: a fitted affine latent-to-colour map instead of a decode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imagesynth.serve.previews import LatentPreview, fitted_preview


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / (a - b).pow(2).mean()))


def _as_tensor(images) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images])
                            ).permute(0, 3, 1, 2) / 127.5 - 1


def test_the_fitted_map_previews_held_out_images_of_the_bundled_autoencoder():
    from imagesynth.nets.autoencoder import load_autoencoder

    autoencoder = load_autoencoder("emoji-f4")
    preview = LatentPreview(autoencoder, 64)
    assert preview.weights.shape == (autoencoder.latent_channels + 1, 3)
    # held-out images: other random colour blocks (8 px) and a smooth two-colour gradient
    generator = torch.Generator().manual_seed(123)
    blocks = (torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1).repeat_interleave(
        8, -1).repeat_interleave(8, -2)
    ramp = torch.linspace(-1, 1, 64)
    gradient = torch.stack([ramp.view(1, -1).expand(64, 64), ramp.view(-1, 1).expand(64, 64),
                            -ramp.view(1, -1).expand(64, 64)])[None]
    images = torch.cat([blocks, gradient])
    with torch.no_grad():
        latents = autoencoder.encode(images)
        decoded = autoencoder.decode(latents)
    shown = preview(latents)
    assert [im.size for im in shown] == [(64, 64)] * 5 and {im.mode for im in shown} == {"RGB"}
    cheap = _as_tensor(shown)
    decoded = decoded.clamp(-1, 1)
    # the preview follows the real decode: far closer than each image's mean colour is, and
    # within a few dB of the best a 16x16-colour picture can do (the decode, pooled to it)
    ceiling = F.interpolate(F.avg_pool2d(decoded, 4), size=(64, 64), mode="bilinear",
                            align_corners=False)
    mean_colour = decoded.mean((2, 3), keepdim=True).expand_as(decoded)
    assert _psnr(cheap, decoded) > _psnr(mean_colour, decoded) + 5.0
    assert _psnr(cheap, decoded) > _psnr(ceiling, decoded) - 5.0
    # non-finite latents (a diverging step) still preview, as grey rather than an error
    assert preview(torch.full_like(latents[:1], float("nan")))[0].size == (64, 64)


def test_pixel_space_models_preview_their_samples_directly(studio_model):
    from imagesynth.pipeline import load_pipeline

    pipe = load_pipeline("tiny")
    assert pipe.autoencoder is None and fitted_preview(pipe) is None
