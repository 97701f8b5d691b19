"""Text-driven editing in a GAN's latent with CLIP: StyleCLIP latent optimisation and StyleGAN-NADA.

1. Inversion (the StyleGAN2 projector): the image is projected into w (or w+) by Adam on the pixel
   MSE, optionally plus a CLIP image-embedding term, from the best of several seeded samples.
2. Edit (StyleCLIP's latent optimisation, Patashnik et al. 2021, eq. 1): Adam on
   D_CLIP(G(w), text) + lambda * ||w - w_inv||^2; the L2 term keeps the edit near the inversion.
3. NADA (Gal et al. 2021): instead of one latent, a copy of the synthesis network is fine-tuned
   with the directional CLIP loss 1 - cos(E(G(w)) - E(G_frozen(w)), E(target) - E(source)) on
   seeded samples, so every sample of the new generator changes the same way; the inverted image
   rendered by the new generator is the edit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import __version__
from ..config import from_dict, to_dict
from ..errors import ConfigError, IntegrityError
from ..io.files import sha256_file
from ..io.pngmeta import save_png
from ..scorers import Scorer
from .cutouts import CutoutConfig, augmented_cutouts
from .drawers import clamp_with_grad
from .gan_drawer import (GANDrawer, fit_to_image, gan_hash, layer_rows, load_gan_model,
                         num_layers, prompt_condition, synthesise)
from .loop import scorer_input_size, to_pil
from .losses import directional_loss, prompt_loss, spherical_distance_loss

#: latents the edit may move: one w for all layers, or one per layer (w+)
EDIT_LATENTS = ("w", "w+")
#: the edit's CLIP term: distance to the target text (StyleCLIP), or NADA's directional loss
EDIT_LOSSES = ("text", "directional")


@dataclass(frozen=True)
class EditClipConfig:
    """Everything that determines a CLIP edit of an image in a GAN (stored in the PNG)."""

    image: str
    prompt: str | None = None  # the latent edit's target text (StyleCLIP)
    gan: str | None = None
    source: str | None = None  # text describing the image: conditions the inversion's start
    nada: tuple[str, ...] = ()  # (SOURCE, TARGET): fine-tune the generator instead (NADA)
    latent: str = "w"
    seed: int = 0
    invert_steps: int = 300
    invert_lr: float = 0.05
    invert_candidates: int = 16  # seeded samples; the one nearest the image (pixel MSE) starts
    invert_clip_weight: float = 0.0  # weight of the CLIP image-embedding term of the inversion
    steps: int = 100  # edit steps
    learning_rate: float = 0.05
    #: lambda of ||w - w_inv||^2 (summed over the moved rows); 3e-4 halves how far a ShapesWorld
    #: colour edit moves (23 -> 13) and changes as many colours as 0 (docs/edit-clip.md)
    l2_weight: float = 3e-4
    loss: str = "text"  # the edit's CLIP term: "text" (to the prompt) or "directional" (NADA's)
    layers: str = "all"  # w+ rows the edit moves: "all", "torgb", "conv" or numbers "1,4"
    cutouts: int = 8
    cutout_noise: float = 0.05
    nada_steps: int = 100
    nada_lr: float = 0.002
    nada_batch: int = 4
    scorer: str = "shapes-clip"

    def __post_init__(self):
        if self.gan is None:
            raise ConfigError("editing needs a GAN to invert the image into", field="gan",
                              fix="pass --gan NAME_OR_FOLDER (an imagesynth GAN, e.g. shapes-gan)")
        if self.nada and len(self.nada) != 2:
            raise ConfigError(f"needs two texts, SOURCE and TARGET, got {len(self.nada)}",
                              field="nada", fix='--nada "a red circle" "a blue circle"')
        if bool(self.nada) == bool(self.prompt and self.prompt.strip()):
            raise ConfigError("give either a target PROMPT (latent edit) or --nada SOURCE TARGET "
                              "(generator edit), not both or neither", field="prompt",
                              fix='e.g. edit-clip scene.png "a blue circle" --gan shapes-gan')
        if self.loss not in EDIT_LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}", field="loss",
                              fix=f"choose one of {', '.join(EDIT_LOSSES)}")
        if self.loss == "directional" and not self.nada and not (self.source or "").strip():
            raise ConfigError("the directional loss needs a text describing the image",
                              field="source", fix='pass --source "a red circle"')
        if not self.layers.strip():
            raise ConfigError("names no layers", field="layers", fix='use "all" or "torgb"')
        if self.latent not in EDIT_LATENTS:
            raise ConfigError(f"unknown latent {self.latent!r}", field="latent",
                              fix=f"choose one of {', '.join(EDIT_LATENTS)}")
        for name in ("invert_candidates", "nada_batch", "cutouts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("invert_steps", "steps", "nada_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", field=name)
        for name in ("invert_lr", "learning_rate", "nada_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"must be > 0, got {value}", field=name)
        for name in ("invert_clip_weight", "l2_weight", "cutout_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"must be >= 0, got {value}", field=name)


@dataclass
class EditClipResult:
    """The edited image, the inversion it started from, its recipe and the measurements."""

    image: Image.Image
    inverted: Image.Image
    recipe: dict
    w_inverted: torch.Tensor
    w_edited: torch.Tensor | None = None
    generator_dir: Path | None = None  # the NADA model folder, when one was written
    measured: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the edited PNG with its full recipe."""
        return save_png(self.image, path, self.recipe)


def load_gan_image(path: str, size: int) -> torch.Tensor:
    """The image file as [1, 3, S, S] in [0, 1]; a size other than the GAN's is an `image` error."""
    from ..io.images import open_image

    image = open_image(path, mode="RGB", field="image")
    if image.size != (size, size):
        raise ConfigError(f"the image is {image.size[0]}x{image.size[1]} but the GAN makes "
                          f"{size}x{size} images", field="image",
                          fix=f"resize the image to {size}x{size} first")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent seeds for the inversion's candidates, the edit's cutouts and NADA's samples."""
    states = np.random.SeedSequence([seed, 0xED17]).generate_state(3, dtype=np.uint64)
    return tuple(int(s) >> 1 for s in states)


def _embed(scorer: Scorer, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(scorer.embed_image(images).float(), dim=-1)


def _text(scorer: Scorer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(scorer.embed_text(texts).float(), dim=-1)


def invert(gan, image: torch.Tensor, config: EditClipConfig, scorer: Scorer | None = None,
           source: str | None = None) -> tuple[GANDrawer, list[float]]:
    """Project `image` [1, 3, S, S] into the GAN's latent; returns the drawer and its MSE trace.

    Candidates are the GAN's samples for seeded z, conditioned on `source` (a caption of the
    image) or, without one, on seeded random condition vectors; the nearest starts the projection.
    """
    size = int(gan.config.image_size)
    generator = torch.Generator().manual_seed(_seeds(config.seed)[0])
    condition = (prompt_condition(gan, source)
                 if source and gan.config.condition_dim else None)
    start = "prompt" if condition is not None or not gan.config.condition_dim else "random"
    best, best_error = None, float("inf")
    with torch.no_grad():
        for _ in range(config.invert_candidates):
            drawer = GANDrawer(size, size, generator, gan, latent=config.latent, start=start,
                               condition=condition)
            error = float(F.mse_loss(drawer.render(), image))
            if error < best_error:
                best, best_error = drawer, error
    extra = None
    if config.invert_clip_weight > 0:
        if scorer is None:
            raise ConfigError("the CLIP inversion term needs a scorer", field="scorer")
        with torch.no_grad():
            target = _embed(scorer, image)
        weight = config.invert_clip_weight

        def extra(rendered: torch.Tensor) -> torch.Tensor:
            return weight * spherical_distance_loss(_embed(scorer, rendered), target).mean()

    trace = fit_to_image(best, image, config.invert_steps, config.invert_lr, extra)
    return best, trace


def render_latent(synthesis, w: torch.Tensor) -> torch.Tensor:
    """w [1, w_dim] or w+ [1, L, w_dim] -> image [1, 3, S, S] in [0, 1] (clamped with gradient)."""
    return clamp_with_grad(((synthesise(synthesis, w) if w.ndim == 3 else synthesis(w)) + 1) / 2)


def edit_latent(gan, w_inv: torch.Tensor, scorer: Scorer, config: EditClipConfig
                ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Move w_inv toward `config.prompt` under CLIP with lambda ||w - w_inv||^2 (StyleCLIP eq. 1).

    Only the w+ rows `config.layers` names move (the latent is lifted to w+ for that); the CLIP
    term is the distance to the target text, or with `loss="directional"` NADA's 1 - cos(dI, dT)
    from the inverted image and the source text. Returns (image, w_edited, measurements).
    """
    synthesis = gan.generator.synthesis
    rows = layer_rows(config.layers, synthesis)
    base, mask = w_inv, torch.ones(())
    if rows is not None:
        L = num_layers(synthesis)
        base = w_inv if w_inv.ndim == 3 else w_inv[:, None].repeat(1, L, 1)
        mask = torch.zeros(1, L, 1, device=base.device)
        mask[:, rows] = 1.0
    target = _text(scorer, [config.prompt])
    directional = config.loss == "directional"
    if directional:
        direction = target - _text(scorer, [config.source])
    cut_size = scorer_input_size(scorer)
    cut_config = CutoutConfig(config.cutouts, 1.0, config.cutout_noise, True, 0.0)
    cut_generator = torch.Generator().manual_seed(_seeds(config.seed)[1])
    delta = torch.zeros_like(base, requires_grad=True)  # w = base + mask * delta
    optimiser = torch.optim.Adam([delta], lr=config.learning_rate)
    with torch.no_grad():
        original = render_latent(synthesis, base)
        before = float(_embed(scorer, original) @ target.T)
    for _ in range(config.steps):
        optimiser.zero_grad(set_to_none=True)
        image = render_latent(synthesis, base + mask * delta)
        if directional:
            # crops shared by the edit and the original, so dI compares like with like
            cuts = augmented_cutouts(torch.cat([image, original]), cut_size, cut_config,
                                     cut_generator)
            e = scorer.embed_image(cuts).float().view(config.cutouts, 2, -1)
            loss = directional_loss(e[:, 0], e[:, 1].detach(), direction)
        else:
            cuts = augmented_cutouts(image, cut_size, cut_config, cut_generator)
            loss = prompt_loss(scorer.embed_image(cuts).float(), target, torch.ones(1))
        loss = loss + config.l2_weight * (mask * delta).square().sum()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        w_edited = base + mask * delta
        image = render_latent(synthesis, w_edited)
        after = float(_embed(scorer, image) @ target.T)
    return image, w_edited, {"score_before": before, "score_after": after,
                             "w_distance": float((w_edited - base).norm())}


def nada_finetune(gan, scorer: Scorer, source: str, target: str,
                  config: EditClipConfig) -> tuple[Any, list[float]]:
    """A copy of `gan` whose synthesis network is fine-tuned with the directional CLIP loss.

    Samples are w = mapping(z, condition(source)) for seeded z (any w for an unconditional GAN);
    the frozen original renders the source images. Returns the new GAN and the loss trace.
    """
    frozen = gan.generator
    tuned = copy.deepcopy(gan)
    synthesis = tuned.generator.synthesis.train().requires_grad_(True)
    direction = _text(scorer, [target]) - _text(scorer, [source])  # [1, D]
    condition = prompt_condition(gan, source) if gan.config.condition_dim else None
    generator = torch.Generator().manual_seed(_seeds(config.seed)[2])
    cut_size = scorer_input_size(scorer)
    cut_config = CutoutConfig(config.cutouts, 1.0, config.cutout_noise, True, 0.0)
    # StyleGAN's Adam(0, 0.99): the equalised-lr weights were trained with it
    optimiser = torch.optim.Adam(synthesis.parameters(), lr=config.nada_lr, betas=(0.0, 0.99))
    B = config.nada_batch
    device = next(gan.parameters()).device
    trace = []
    for _ in range(config.nada_steps):
        z = torch.randn(B, gan.config.z_dim, generator=generator).to(device)
        with torch.no_grad():
            w = frozen.mapping(z, None if condition is None else condition.expand(B, -1))
            source_images = (frozen.synthesis(w) + 1) / 2
        images = ((synthesis(w) + 1) / 2).clamp(0, 1)
        cuts = augmented_cutouts(torch.cat([images, source_images]), cut_size, cut_config,
                                 generator)
        embeddings = scorer.embed_image(cuts).float().view(config.cutouts, 2 * B, -1)
        e, e_source = embeddings[:, :B].flatten(0, 1), embeddings[:, B:].flatten(0, 1).detach()
        loss = directional_loss(e, e_source, direction)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        trace.append(float(loss.detach()))
    tuned.eval().requires_grad_(False)
    return tuned, trace


def save_nada_model(tuned, spec: str, source: str, target: str, config: EditClipConfig,
                    out: str | Path) -> Path:
    """Write the fine-tuned GAN as a model folder (family `gan`: sample and dream use it)."""
    from ..registry import Registry, write_model_folder

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty", field="nada_out",
                          fix="pick a new folder")
    base = Registry().get(str(spec)).config()
    nada = {"from": str(spec), "from_hash": gan_hash(spec), "source": source, "target": target,
            "steps": config.nada_steps, "lr": config.nada_lr, "batch": config.nada_batch,
            "cutouts": config.cutouts, "seed": config.seed, "scorer": config.scorer}
    card = (f"# {out.name}: {spec} adapted by StyleGAN-NADA\n\n"
            f"The synthesis network of `{spec}` fine-tuned for {config.nada_steps} steps with the "
            f"directional CLIP loss (scorer `{config.scorer}`) from \"{source}\" to "
            f"\"{target}\"; the mapping network is unchanged.\n\n"
            f"Reproduce:\n\n    imagesynth edit-clip IMAGE --gan {spec} --nada \"{source}\" "
            f"\"{target}\" --nada-steps {config.nada_steps} --nada-lr {config.nada_lr} "
            f"--seed {config.seed} --nada-out {out.name}\n")
    state = {k: v.detach().clone() for k, v in tuned.state_dict().items()}
    return write_model_folder(out, state, {**base, "nada": nada}, card)


def edit_clip(config: EditClipConfig, *, gan=None, scorer: Scorer | None = None,
              nada_out: str | Path | None = None) -> EditClipResult:
    """Invert `config.image` into the GAN and edit it toward the text (latent edit or NADA)."""
    from ..clip.foreign import load_scorer

    if nada_out is not None and not config.nada:
        raise ConfigError("only a NADA run writes a model folder", field="nada_out",
                          fix="add --nada SOURCE TARGET, or drop --nada-out")
    gan = gan if gan is not None else load_gan_model(config.gan)
    scorer = scorer if scorer is not None else load_scorer(config.scorer)
    image = load_gan_image(config.image, int(gan.config.image_size))
    source = config.nada[0] if config.nada else config.source
    drawer, trace = invert(gan, image, config, scorer, source)
    with torch.no_grad():
        inverted = drawer.render()
    w_inv = drawer.w.detach().clone()
    measured: dict = {"inversion_mse_start": trace[0], "inversion_mse": trace[-1]}
    model_dir = None
    if config.nada:
        tuned, losses = nada_finetune(gan, scorer, config.nada[0], config.nada[1], config)
        with torch.no_grad():
            edited = render_latent(tuned.generator.synthesis, w_inv)
        measured.update(nada_loss_start=losses[0] if losses else None,
                        nada_loss=losses[-1] if losses else None)
        if nada_out is not None:
            model_dir = save_nada_model(tuned, config.gan, *config.nada, config, nada_out)
        w_edited = None
    else:
        edited, w_edited, edit_measured = edit_latent(gan, w_inv, scorer, config)
        measured.update(edit_measured)
    recipe = _recipe(config, scorer, measured)
    return EditClipResult(to_pil(edited.clamp(0, 1)), to_pil(inverted), recipe, w_inv,
                          w_edited, model_dir, measured)


def _recipe(config: EditClipConfig, scorer: Scorer, measured: dict) -> dict:
    identity = getattr(scorer, "identity", None)
    return {"kind": "edit-clip", "prompt": config.prompt or " -> ".join(config.nada),
            "seed": config.seed, "steps": config.steps,
            "sampler": "edit-clip-nada" if config.nada else f"edit-clip-{config.latent}",
            "model": config.gan, "model_hash": gan_hash(config.gan),
            "scorer_hash": identity() if callable(identity) else None,
            "input_hashes": {config.image: sha256_file(config.image)},
            "edit_clip": to_dict(config), "measured": measured,
            "versions": {"imagesynth": __version__, "torch": torch.__version__}}


def reproduce_edit_clip(recipe: dict, *, gan=None, scorer: Scorer | None = None) -> Image.Image:
    """Re-run the edit a `kind: edit-clip` recipe describes; refuse if the GAN or image changed."""
    if recipe.get("kind") != "edit-clip" or not isinstance(recipe.get("edit_clip"), dict):
        raise ConfigError("this recipe was not written by `imagesynth edit-clip`", field="image")
    config = from_dict(EditClipConfig, recipe["edit_clip"], prefix="edit_clip.")
    for path, digest in (recipe.get("input_hashes") or {}).items():
        if not Path(path).is_file() or sha256_file(path) != digest:
            raise IntegrityError(f"input image {path!r} is missing or changed since the edit",
                                 field="image", fix="put the original file back at that path")
    if recipe.get("model_hash") and gan_hash(config.gan) != recipe["model_hash"]:
        raise IntegrityError(f"GAN {config.gan!r} is not the model that made this image "
                             "(weights SHA-256 differs)", field="gan",
                             fix="install the exact model the recipe names")
    return edit_clip(config, gan=gan, scorer=scorer).image
