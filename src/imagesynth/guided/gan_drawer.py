"""The GAN drawer: the latent of a frozen StyleGAN-like generator (the Big Sleep analogue).

Big Sleep optimises BigGAN's noise and class vector with CLIP; here the generator is imagesynth's
caption-conditional StyleGAN-lite, and the parameters are its intermediate latent w (one for every
layer, or one per layer: w+, as StyleCLIP's latent optimisation uses) or, Big Sleep's way, the
input z together with the condition vector, mapped to w on every render.
The start is the generator's own sample for a seeded z: conditioned on the prompt (the model's
text encoder reads it, as its sampler would) or on a seeded random unit condition vector, so
that CLIP has to find the scene on its own.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .drawers import clamp_with_grad

#: what the optimiser moves: w (shared by all layers), w+ (one w per layer), z (+ condition)
GAN_LATENTS = ("w", "w+", "z")
#: how the start's condition is chosen: the prompt's text embedding, or a seeded random vector
GAN_STARTS = ("prompt", "random")


def missing_gan_error() -> ConfigError:
    """The error for a GAN-drawer run that names no GAN."""
    return ConfigError("the gan drawer needs a GAN", field="gan",
                       fix="pass --gan NAME_OR_FOLDER (an imagesynth GAN, e.g. shapes-gan)")


def check_gan(gan) -> None:
    """Refuse anything without a mapping network and a w latent (field `gan`)."""
    generator = getattr(gan, "generator", None)
    if not (getattr(gan, "has_latent", False) and hasattr(generator, "synthesis")
            and hasattr(generator, "mapping") and hasattr(gan, "config")):
        raise ConfigError(f"{type(gan).__name__} has no w latent: the drawer needs a GAN with a "
                          "mapping network and a synthesis network", field="gan",
                          fix="pass an imagesynth GAN (family 'gan', e.g. shapes-gan)")


def check_gan_options(latent: str, truncation: float, start: str) -> None:
    """Validate the drawer's options; errors name the dream field at fault."""
    if latent not in GAN_LATENTS:
        raise ConfigError(f"unknown latent {latent!r}", field="gan_latent",
                          fix=f"choose one of {', '.join(GAN_LATENTS)}")
    if not (isinstance(truncation, (int, float)) and 0 < truncation <= 1):
        raise ConfigError(f"must be in (0, 1], got {truncation!r}", field="gan_truncation",
                          fix="1 starts from a plain sample; 0.5-0.8 nearer the mean w")
    if start not in GAN_STARTS:
        raise ConfigError(f"unknown start {start!r}", field="gan_start",
                          fix=f"choose one of {', '.join(GAN_STARTS)}")


def load_gan_model(spec: str):
    """Load a GAN by registry name or folder; a model of another family is a `gan` error."""
    from ..registry import Registry

    family = Registry().get(str(spec)).config().get("family")
    if family != "gan":
        raise ConfigError(f"{spec!r} is a {family or 'unknown'!r} model without a w latent, "
                          "not a GAN", field="gan",
                          fix="pass an imagesynth GAN (family 'gan', e.g. shapes-gan)")
    from ..families.gan import load_gan

    return load_gan(spec)


def gan_hash(spec: str) -> str | None:
    """SHA-256 of a GAN's weights (what a recipe pins)."""
    from ..registry import Registry

    return Registry().get(str(spec)).weights_sha256


@functools.lru_cache(maxsize=2)
def _text_encoder(name: str):
    # a GAN's text encoder (MiniLM) takes seconds to load: once per process, not per run
    from ..text import load_text_encoder

    return load_text_encoder(name)


def prompt_condition(gan, prompt: str) -> torch.Tensor | None:
    """The GAN's condition vector [1, condition_dim] for `prompt` (None if unconditional)."""
    if not gan.config.condition_dim:
        return None
    if not prompt.strip():
        raise ConfigError("this GAN is caption-conditional and the start needs a text prompt",
                          field="prompt", fix='give a text prompt, or use --gan-start random')
    encoder = _text_encoder(getattr(gan, "text_encoder_name", "minilm"))
    return encoder([prompt]).pooled.float().to(next(gan.parameters()).device)


def num_layers(synthesis: nn.Module) -> int:
    """How many style inputs (w+ rows) the synthesis network has: conv, toRGB, 3 per block."""
    return 2 + 3 * len(synthesis.blocks)


def layer_rows(spec: str, synthesis: nn.Module) -> list[int] | None:
    """The w+ rows `spec` names: None for "all"; "torgb" (the toRGB styles, which mix the output
    colours), "conv" (the convolutions: layout and shape) or comma-separated row numbers."""
    count = num_layers(synthesis)
    torgb = [1] + [4 + 3 * i for i in range(len(synthesis.blocks))]
    text = spec.strip().lower()
    if text == "all":
        return None
    if text == "torgb":
        return torgb
    if text == "conv":
        return [i for i in range(count) if i not in torgb]
    try:
        rows = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        rows = []
    if not rows or rows[0] < 0 or rows[-1] >= count:
        raise ConfigError(f"{spec!r} names no rows of this GAN's {count} w+ rows", field="layers",
                          fix=f'use "all", "torgb", "conv" or numbers 0-{count - 1} like "1,4"')
    return rows


def synthesise(synthesis: nn.Module, ws: torch.Tensor) -> torch.Tensor:
    """`synthesis` with one w per layer: ws [B, L, w_dim] -> images [B, 3, S, S] (as its forward).

    Row order: the 4x4 conv, its toRGB, then conv0, conv1, toRGB of every block; with all rows
    equal this is exactly `synthesis(w)` (tested).
    """
    def act(x: torch.Tensor) -> torch.Tensor:  # nets.gan's activation
        return F.leaky_relu(x, 0.2) * math.sqrt(2)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    x = synthesis.const[None].expand(ws.shape[0], -1, -1, -1)
    x = act(synthesis.conv(x, ws[:, 0]) + synthesis.bias[None, :, None, None])
    rgb = synthesis.to_rgb(x, ws[:, 1])
    for i, block in enumerate(synthesis.blocks):
        k = 2 + 3 * i
        x = act(block.conv0(up(x), ws[:, k]) + block.bias0[None, :, None, None])
        x = act(block.conv1(x, ws[:, k + 1]) + block.bias1[None, :, None, None])
        rgb = block.to_rgb(x, ws[:, k + 2]) + up(rgb)
    return torch.tanh(rgb) if synthesis.output_tanh else rgb


class GANDrawer(nn.Module):
    """A frozen GAN's latent: render() = (synthesis(w) + 1) / 2, w = the optimised latent."""

    def __init__(self, height: int, width: int, generator: torch.Generator, gan, prompt: str = "",
                 latent: str = "w", truncation: float = 1.0, start: str = "prompt",
                 condition: torch.Tensor | None = None):
        super().__init__()
        check_gan(gan)
        check_gan_options(latent, truncation, start)
        size = int(gan.config.image_size)
        if (height, width) != (size, size):
            raise ConfigError(f"this GAN makes only {size}x{size} images, not {width}x{height}",
                              field="size", fix=f"use --size {size}")
        self.size = (height, width)
        self.gan = gan.eval().requires_grad_(False)
        self.latent_kind, self.truncation, self.start = latent, float(truncation), start
        config = gan.config
        device = next(gan.parameters()).device
        # condition first, then z: both from the one seeded generator, so a seed fixes the start
        if not config.condition_dim:
            condition = None
        elif start == "random":
            condition = F.normalize(torch.randn(1, config.condition_dim, generator=generator),
                                    dim=1).to(device)
        elif condition is None:
            condition = prompt_condition(gan, prompt)
        z = torch.randn(1, config.z_dim, generator=generator).to(device)
        mapping = gan.generator.mapping
        with torch.no_grad():
            self.register_buffer("centre", gan.mean_w(condition) if truncation < 1 else None)
            w = self._truncate(mapping(z, condition))  # [1, w_dim]
        if latent == "z":
            self.z = nn.Parameter(z)
            self.condition = nn.Parameter(condition) if condition is not None else None
        elif latent == "w+":
            self.w = nn.Parameter(w[:, None].repeat(1, num_layers(gan.generator.synthesis), 1))
        else:
            self.w = nn.Parameter(w)

    def _truncate(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.centre is None else self.centre + self.truncation * (w - self.centre)

    def parameters(self, recurse: bool = True):
        """Only the latent is optimised; the GAN stays frozen."""
        if self.latent_kind == "z":
            return iter([p for p in (self.z, self.condition) if p is not None])
        return iter([self.w])

    def ws(self) -> torch.Tensor:
        """The latent as w [1, w_dim] or w+ [1, L, w_dim] (z mode: mapped and truncated)."""
        if self.latent_kind == "z":
            return self._truncate(self.gan.generator.mapping(self.z, self.condition))
        return self.w

    def unclamped(self) -> torch.Tensor:
        """The generated image mapped to [0, 1] before clamping (what the range loss sees)."""
        synthesis = self.gan.generator.synthesis
        w = self.ws()
        x = synthesise(synthesis, w) if w.ndim == 3 else synthesis(w)
        return (x + 1) / 2

    def render(self) -> torch.Tensor:
        """The image [1, 3, H, W] in [0, 1]."""
        return clamp_with_grad(self.unclamped())

    def init_from_image(self, image: torch.Tensor, steps: int = 200,
                        learning_rate: float = 0.05) -> None:
        """Project `image` into the latent: Adam on the pixel MSE (the StyleGAN2 projector)."""
        fit_to_image(self, image, steps, learning_rate)

    def recipe(self) -> dict:
        """What a replay needs besides the dream config: latent kind, start and truncation."""
        return {"latent": self.latent_kind, "start": self.start, "truncation": self.truncation,
                "layers": num_layers(self.gan.generator.synthesis)}


def fit_to_image(drawer: GANDrawer, image: torch.Tensor, steps: int, learning_rate: float,
                 extra_loss=None) -> list[float]:
    """Adam on the drawer's latent to minimise MSE(render, image) [+ extra_loss(render)].

    Returns the pixel MSE before each step and after the last (the inversion's trace).
    """
    optimiser = torch.optim.Adam(list(drawer.parameters()), lr=learning_rate)
    trace = []
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        rendered = drawer.render()
        loss = F.mse_loss(rendered, image)
        trace.append(float(loss.detach()))
        if extra_loss is not None:
            loss = loss + extra_loss(rendered)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        trace.append(float(F.mse_loss(drawer.render(), image)))
    return trace
