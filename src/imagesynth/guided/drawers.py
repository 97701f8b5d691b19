"""Drawers: parametrisations of an image that CLIP-guided optimisation updates by gradient.

Every drawer is a `torch.nn.Module` whose `parameters()` are what the optimiser moves and whose
`render()` returns the image [1, 3, H, W] in [0, 1]. `init_from_image` sets the parameters so
that `render()` reproduces a given image as closely as the parametrisation allows (inversion).
"""

from __future__ import annotations

import inspect
import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

DRAWERS = ("pixels", "fourier", "pixelart", "decoder", "diffusion-latent", "gan")

# Lucid's colour-correlation square root (ImageNet statistics), used by Big Sleep/Lucid FFT images
# so that each learned channel is a decorrelated colour direction.
_COLOUR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                         [0.27, 0.00, -0.05],
                                         [0.27, -0.09, 0.03]])
_COLOUR_MATRIX = _COLOUR_CORRELATION_SQRT / _COLOUR_CORRELATION_SQRT.norm(dim=0).max()


@runtime_checkable
class Decoder(Protocol):
    """Anything that maps latents [B, C, h, w] to images in [-1, 1] (an autoencoder's decoder)."""

    latent_channels: int
    downsample_factor: int

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, h * f, w * f] in [-1, 1]."""
        ...


class _ClampWithGrad(torch.autograd.Function):
    """Clamp to [0, 1] that still passes gradients which move a value back into range (VQGAN-CLIP)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # descent moves x by -grad: keep the gradient if that step heads toward the range
        keep = (x >= 0) & (x <= 1) | ((x < 0) & (grad < 0)) | ((x > 1) & (grad > 0))
        return grad * keep


def clamp_with_grad(x: torch.Tensor) -> torch.Tensor:
    """x clamped to [0, 1]; out-of-range values still receive gradients that pull them back."""
    return _ClampWithGrad.apply(x)


def _logit(image: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.logit(image.clamp(eps, 1 - eps))


def _check_size(height: int, width: int, multiple: int, drawer: str) -> None:
    if height < 1 or width < 1 or height % multiple or width % multiple:
        raise ConfigError(f"the {drawer} drawer cannot make {width}x{height}: both sides must be "
                          f"positive multiples of {multiple}", field="size",
                          fix=f"pick a size divisible by {multiple}")


class PixelDrawer(nn.Module):
    """Raw pixels, stored as logits so that sigmoid keeps every value in (0, 1)."""

    def __init__(self, height: int, width: int, generator: torch.Generator):
        super().__init__()
        _check_size(height, width, 1, "pixels")
        self.size = (height, width)
        self.logits = nn.Parameter(0.5 * torch.randn(1, 3, height, width, generator=generator))

    def render(self) -> torch.Tensor:
        """The image [1, 3, H, W] in [0, 1]."""
        return torch.sigmoid(self.logits)

    @torch.no_grad()
    def init_from_image(self, image: torch.Tensor) -> None:
        """Start from `image` [1, 3, H, W] in [0, 1]."""
        self.logits.copy_(_logit(image))


def _frequency_scale(height: int, width: int, decay: float) -> torch.Tensor:
    """Lucid's spectrum scale 1 / max(|f|, 1 / max(h, w))^decay, times sqrt(h w); [H, W//2+1]."""
    f_y = torch.fft.fftfreq(height)[:, None]
    f_x = torch.fft.rfftfreq(width)[None, :]
    magnitude = (f_x ** 2 + f_y ** 2).sqrt()
    return magnitude.clamp(min=1.0 / max(height, width)).pow(-decay) * math.sqrt(height * width)


class FourierDrawer(nn.Module):
    """A frequency-scaled Fourier spectrum with decorrelated colour (Lucid / Big Sleep / pixray).

    Image = sigmoid(M · irfft2(S ⊙ P) / 4): P the learned complex spectrum, S the 1/f^decay scale
    that equalises the gradient across frequencies, M the colour-decorrelation matrix.
    """

    def __init__(self, height: int, width: int, generator: torch.Generator, decay: float = 1.0):
        super().__init__()
        _check_size(height, width, 1, "fourier")
        self.size = (height, width)
        self.register_buffer("scale", _frequency_scale(height, width, decay))
        # [1, 3, H, W//2+1, 2]: real and imaginary parts; 0.01 N(0, 1) as in Lucid
        self.spectrum = nn.Parameter(0.01 * torch.randn(1, 3, height, width // 2 + 1, 2,
                                                        generator=generator))

    def _decorrelated(self) -> torch.Tensor:
        P = torch.view_as_complex(self.spectrum)
        x = torch.fft.irfft2(self.scale * P, s=self.size, norm="ortho") / 4.0
        return torch.einsum("ij,bjhw->bihw", _COLOUR_MATRIX.to(x), x)

    def render(self) -> torch.Tensor:
        """The image [1, 3, H, W] in [0, 1]."""
        return torch.sigmoid(self._decorrelated())

    @torch.no_grad()
    def init_from_image(self, image: torch.Tensor) -> None:
        """Invert the parametrisation exactly (up to the logit clip) so `render()` gives `image`."""
        x = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_COLOUR_MATRIX).to(image), _logit(image))
        P = torch.fft.rfft2(x * 4.0, norm="ortho") / self.scale
        self.spectrum.copy_(torch.view_as_real(P))


class PixelArtDrawer(nn.Module):
    """A coarse grid of coloured cells (PixelDraw), upsampled with nearest neighbours.

    Without a palette each cell's colour is free (sigmoid of logits). With a palette [K, 3] each cell
    holds logits over the K colours: the forward pass shows the arg-max colour, the backward pass
    uses the softmax mixture (straight-through), so the image only ever contains palette colours.
    """

    def __init__(self, height: int, width: int, generator: torch.Generator,
                 cells: int = 8, palette: torch.Tensor | None = None):
        super().__init__()
        if cells < 1:
            raise ConfigError(f"must be >= 1, got {cells}", field="cells")
        block = min(height, width) // cells  # pixels per cell side
        if min(height, width) % cells or height % block or width % block:
            raise ConfigError(f"the pixelart drawer cannot make {width}x{height} from {cells} cells "
                              "along the short side: both sides must be multiples of the cell size",
                              field="size", fix=f"pick a size divisible by {cells}, or change --cells")
        self.size = (height, width)
        self.grid = (grid_h, grid_w) = (height // block, width // block)
        if palette is None:
            self.register_buffer("palette", None)
            self.logits = nn.Parameter(0.5 * torch.randn(1, 3, grid_h, grid_w, generator=generator))
        else:
            palette = torch.as_tensor(palette, dtype=torch.float32)
            if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < 2:
                raise ConfigError("must be at least two RGB colours", field="palette")
            self.register_buffer("palette", palette.clamp(0, 1))
            self.logits = nn.Parameter(torch.randn(1, len(palette), grid_h, grid_w,
                                                   generator=generator))

    def cell_colours(self) -> torch.Tensor:
        """The grid [1, 3, grid_h, grid_w] in [0, 1]."""
        if self.palette is None:
            return torch.sigmoid(self.logits)
        soft = self.logits.softmax(dim=1)
        hard = F.one_hot(soft.argmax(dim=1), len(self.palette)).permute(0, 3, 1, 2).to(soft)
        exact = torch.einsum("bkhw,kc->bchw", hard, self.palette)
        mixed = torch.einsum("bkhw,kc->bchw", soft, self.palette)
        return exact + (mixed - mixed.detach())  # exactly the palette colour, softmax gradient

    def render(self) -> torch.Tensor:
        """The image [1, 3, H, W] in [0, 1]."""
        return F.interpolate(self.cell_colours(), size=self.size, mode="nearest")

    @torch.no_grad()
    def init_from_image(self, image: torch.Tensor) -> None:
        """Each cell starts as the mean colour of its block (nearest palette colour with a palette)."""
        cells = F.adaptive_avg_pool2d(image, self.grid)
        if self.palette is None:
            self.logits.copy_(_logit(cells))
            return
        distance = torch.cdist(cells.permute(0, 2, 3, 1).reshape(-1, 3), self.palette)
        nearest = F.one_hot(distance.argmin(dim=1), len(self.palette)).to(cells)
        self.logits.copy_(4.0 * nearest.view(1, *self.grid, -1).permute(0, 3, 1, 2))


class DecoderDrawer(nn.Module):
    """The latent of a frozen decoder (the VQGAN+CLIP / Big Sleep analogue)."""

    def __init__(self, height: int, width: int, generator: torch.Generator, decoder: Decoder,
                 latent_std: float = 1.0):
        super().__init__()
        if not isinstance(decoder, Decoder):
            raise ConfigError("needs .decode(latents), .latent_channels and .downsample_factor",
                              field="decoder")
        factor = int(decoder.downsample_factor)
        fixed = getattr(decoder, "fixed_image_size", None)  # vector VAEs make one size only
        if fixed is not None and (height, width) != (fixed, fixed):
            raise ConfigError(f"this decoder makes only {fixed}x{fixed} images, not "
                              f"{width}x{height}", field="size", fix=f"use --size {fixed}")
        _check_size(height, width, factor, "decoder")
        self.size = (height, width)
        self.decoder = decoder
        # Decoders that clamp their output would zero the gradient of every saturated pixel.
        parameters = inspect.signature(decoder.decode).parameters
        self._decode_kwargs = {"clamp": False} if "clamp" in parameters else {}
        if isinstance(decoder, nn.Module):
            decoder.eval().requires_grad_(False)
        prior = getattr(decoder, "latent_prior", None)  # a vector VAE's fitted sampling prior
        if prior is not None:
            latents = prior.sample(1, generator)
        else:
            latents = latent_std * torch.randn(1, int(decoder.latent_channels), height // factor,
                                               width // factor, generator=generator)
        self.latents = nn.Parameter(latents)

    def parameters(self, recurse: bool = True):
        """Only the latent is optimised; the decoder stays frozen."""
        return iter([self.latents])

    def unclamped(self) -> torch.Tensor:
        """The decoded image mapped to [0, 1] before clamping (what the range loss penalises)."""
        return (self.decoder.decode(self.latents, **self._decode_kwargs) + 1) / 2

    def render(self) -> torch.Tensor:
        """The decoded image [1, 3, H, W] in [0, 1]."""
        return clamp_with_grad(self.unclamped())

    def init_from_image(self, image: torch.Tensor, steps: int = 200) -> None:
        """Encode `image` when the decoder has an encoder, else fit the latent by gradient descent."""
        encode = getattr(self.decoder, "encode", None)
        if callable(encode):
            with torch.no_grad():
                latents = encode(image * 2 - 1)
                # diffusers returns an output holding a distribution: take its mean
                latents = getattr(latents, "latent_dist", latents)
                if not isinstance(latents, torch.Tensor):
                    latents = latents.mean
            if tuple(latents.shape) == tuple(self.latents.shape):
                self.latents.data.copy_(latents)
                return
        optimiser = torch.optim.Adam([self.latents], lr=0.05)
        for _ in range(steps):
            optimiser.zero_grad()
            F.mse_loss(self.render(), image).backward()
            optimiser.step()


def build_drawer(name: str, height: int, width: int, generator: torch.Generator, *,
                 cells: int = 8, palette: torch.Tensor | None = None,
                 decoder: Decoder | None = None, fourier_decay: float = 1.0,
                 diffusion=None, prompt: str = "", negative_prompt: str = "",
                 diffusion_steps: int = 6, diffusion_sampler: str = "dpmpp_2m",
                 diffusion_guidance: float | None = None, gan=None, gan_latent: str = "w",
                 gan_truncation: float = 1.0, gan_start: str = "prompt",
                 gan_condition: torch.Tensor | None = None) -> nn.Module:
    """Make the drawer called `name` for an H x W image, its initial parameters drawn from `generator`."""
    # diffusion (a loaded DiffusionPipeline), the prompts and diffusion_*: diffusion-latent only;
    # gan (a loaded GAN), gan_* and the prompt (or its precomputed gan_condition): gan only
    if name == "pixels":
        return PixelDrawer(height, width, generator)
    if name == "fourier":
        return FourierDrawer(height, width, generator, decay=fourier_decay)
    if name == "pixelart":
        return PixelArtDrawer(height, width, generator, cells=cells, palette=palette)
    if name == "decoder":
        if decoder is None:
            raise ConfigError("the decoder drawer needs an autoencoder", field="decoder",
                              fix="pass --decoder NAME_OR_FOLDER (an imagesynth autoencoder)")
        return DecoderDrawer(height, width, generator, decoder)
    if name == "diffusion-latent":
        from .diffusion_drawer import DiffusionLatentDrawer, missing_model_error

        if diffusion is None:
            raise missing_model_error()
        return DiffusionLatentDrawer(height, width, generator, diffusion, prompt, negative_prompt,
                                     diffusion_steps, diffusion_sampler, diffusion_guidance)
    if name == "gan":
        from .gan_drawer import GANDrawer, missing_gan_error

        if gan is None:
            raise missing_gan_error()
        return GANDrawer(height, width, generator, gan, prompt, latent=gan_latent,
                         truncation=gan_truncation, start=gan_start, condition=gan_condition)
    raise ConfigError(f"unknown drawer {name!r}", field="drawer",
                      fix=f"choose one of {', '.join(DRAWERS)}")
