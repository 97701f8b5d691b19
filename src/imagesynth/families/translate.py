"""The image-to-image translation family: pix2pix and CycleGAN on the shared loop.

- **pix2pix** (Isola et al. 2017): a U-Net G maps A to B; a conditional PatchGAN D judges
  (input, output) patches. G minimises lambda_l1 |G(a) - b|_1 plus the adversarial term; D's
  objective is halved (sec. 3.3). With `adversarial=False` the same code is a plain L1 U-Net,
  the baseline the adversarial term must beat.
- **CycleGAN** (Zhu et al. 2017): G: A -> B and F: B -> A with unconditional PatchGANs D_B, D_A
  and LSGAN losses; cycle consistency lambda_cycle (|F(G(a)) - a|_1 + |G(F(b)) - b|_1) and the
  identity term lambda_cycle lambda_identity (|G(b) - b|_1 + |F(a) - a|_1). B images are drawn
  at random for each A image, so the pairing is never seen. No history buffer of fakes: it would
  be hidden state outside the checkpoint, and the loop's resume is exact.
Both run as one loss per step on the shared loop, as the GAN family does: D's terms see detached
fakes and G's adversarial terms go through parameter-detached copies of D
(`torch.func.functional_call`), so each player's gradient reaches only its own weights.
Translation is deterministic: pix2pix's dropout noise is applied only when per-sample generators
are given. Data, pairing and the held-out split live in `translate_data`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..config import from_dict, to_dict
from ..errors import ConfigError
from ..io.files import atomic_write_text
from ..metrics.psnr import psnr
from ..nets.translate import TranslateNetConfig, TranslationNets
from ..registry import write_model_folder
from ..train import FamilyRunResult, TrainConfig, train
from ..train.datasets import to_signed, to_uint8
from .common import load_family_model
from .translate_data import (TASKS, DomainSet, PairedImages, PairedSet, load_translation_data,
                             parse_select)

FAMILY = "translate"
METHODS = ("pix2pix", "cyclegan")

PRESETS = {
    "tiny": TranslateNetConfig(image_size=16, channels=8, max_channels=32, dropout_layers=1,
                               resnet_blocks=1, d_channels=8, d_layers=1),
    # 32 px emoji: a 5-level U-Net (32 -> 1), a PatchGAN whose patches are 16 px (half the side)
    "emoji32": TranslateNetConfig(image_size=32, channels=32, max_channels=256, dropout_layers=2,
                                  resnet_blocks=4, d_channels=64, d_layers=1),
    # 64 px: 16 px patches are a quarter of the side, as pix2pix's 70 px of 256
    "emoji64": TranslateNetConfig(image_size=64, channels=32, max_channels=256, dropout_layers=3,
                                  resnet_blocks=6, d_channels=64, d_layers=1),
}
#: CycleGAN runs its two generators six times a step (pix2pix: once), so its generators are
#: half as wide: 13 instead of 8 images/s at 32 px on one busy CPU core (pix2pix: 44)
CYCLE_OVERRIDES = {"tiny": {}, "emoji32": {"channels": 16}, "emoji64": {"channels": 16}}
LOOP_PRESETS = {
    "tiny": {"max_steps": 40, "batch_size": 8, "learning_rate": 2e-3},
    "emoji32": {"max_steps": 20000, "batch_size": 16, "learning_rate": 2e-4},
    "emoji64": {"max_steps": 20000, "batch_size": 16, "learning_rate": 2e-4},
}
#: both papers: Adam(0.5, 0.999), lr decayed linearly to 0, no clipping, no EMA
_TRAINING = {"betas": (0.5, 0.999), "decay": "linear", "min_lr_ratio": 0.0, "grad_clip": None,
             "ema_decay": None, "weight_decay": 0.0, "eval_every": 500, "checkpoint_every": 500}
MIN_PAIRS = {"tiny": 4, "emoji32": 64, "emoji64": 64}
#: held-out pairs scored at each evaluation during training (all of them at the end)
EVAL_PAIRS = 256


@dataclass(frozen=True)
class TranslateConfig:
    """What to learn and how: method, task, loss weights, pairing; stored in config.json."""

    method: Literal["pix2pix", "cyclegan"] = "pix2pix"
    task: Literal["translate", "colorize", "edges2image"] = "translate"
    #: False: pix2pix without D, the plain L1 U-Net baseline
    adversarial: bool = True
    #: None: the paper's choice (pix2pix BCE, CycleGAN LSGAN)
    gan_loss: Literal["bce", "lsgan"] | None = None
    #: None: the paper's choice (pix2pix U-Net, CycleGAN ResNet)
    generator: Literal["unet", "resnet"] | None = None
    lambda_l1: float = 100.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    #: pix2pix's random jitter and mirroring (a shift of up to 1/16 of the side, a flip),
    #: applied alike to both images of a pair
    augment: bool = True
    #: pairing key: "stem" (file name) or a captions.jsonl field such as "unified"
    pair_by: str = "stem"
    select_a: str | None = None
    select_b: str | None = None
    held_out_fraction: float = 0.1

    def __post_init__(self):
        for name, allowed in (("method", METHODS), ("task", TASKS),
                              ("gan_loss", (None, "bce", "lsgan")),
                              ("generator", (None, "unet", "resnet"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}", field=name,
                                  fix=f"choose one of {', '.join(a for a in allowed if a)}")
        for name in ("lambda_l1", "lambda_cycle", "lambda_identity"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"must be a number >= 0, got {value}", field=name)
        if self.method == "cyclegan" and not self.adversarial:
            raise ConfigError("CycleGAN without its discriminators learns nothing but the "
                              "identity", field="adversarial",
                              fix="keep the adversarial term, or use pix2pix for an L1 baseline")
        if not 0 <= self.held_out_fraction < 1:
            raise ConfigError(f"must be in [0, 1), got {self.held_out_fraction}",
                              field="held_out_fraction")
        if not self.pair_by.strip():
            raise ConfigError("is empty", field="pair_by", fix="use stem or a caption field")
        parse_select(self.select_a, "select_a")
        parse_select(self.select_b, "select_b")
        pix2pix = self.method == "pix2pix"
        if self.gan_loss is None:
            object.__setattr__(self, "gan_loss", "bce" if pix2pix else "lsgan")
        if self.generator is None:
            object.__setattr__(self, "generator", "unet" if pix2pix else "resnet")


def translate_net_config(preset: str, settings: TranslateConfig, **overrides
                         ) -> TranslateNetConfig:
    """The preset's networks for this method (CycleGAN's generators carry no dropout)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown translate preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(PRESETS)}")
    method_fields = {"generator": settings.generator}
    if settings.method == "cyclegan":
        method_fields.update(dropout_layers=0, **CYCLE_OVERRIDES[preset])
    return dataclasses.replace(PRESETS[preset], **{**method_fields, **overrides})


def gan_loss(logits: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    """BCE on logits (pix2pix) or least squares (LSGAN, CycleGAN) toward 1 (real) or 0."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` with its parameters detached: gradients reach x only."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    params.update(dict(module.named_buffers()))
    return functional_call(module, params, (x,))


def jitter(images: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """One random shift (edge-replicated, up to 1/16 of the side) and flip per sample, the same
    for every tensor in `images` (both images of a pair)."""
    B, _, H, W = images[0].shape
    s = max(1, H // 16)
    shifts = torch.randint(0, 2 * s + 1, (B, 2), generator=generator,
                           device=generator.device).tolist()
    flips = torch.rand(B, generator=generator, device=generator.device) < 0.5
    out = []
    for x in images:
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        crops = torch.stack([padded[i, :, dy:dy + H, dx:dx + W]
                             for i, (dy, dx) in enumerate(shifts)])
        out.append(torch.where(flips.to(x.device)[:, None, None, None], crops.flip(-1), crops))
    return out


class Pix2PixObjective:
    """lambda_l1 L1 + the conditional adversarial loss (or L1 alone), one simultaneous step."""

    def __init__(self, settings: TranslateConfig):
        self.settings = settings

    def __call__(self, model: TranslationNets, batch, generator: torch.Generator):
        a, b = to_signed(batch[0]), to_signed(batch[1])
        if self.settings.augment:
            a, b = jitter([a, b], generator)
        fake = model.g_ab(a, noise=generator)  # dropout noise, as the paper trains
        l1 = (fake - b).abs().mean()
        loss, metrics = self.settings.lambda_l1 * l1, {"l1": l1.item()}
        if self.settings.adversarial:
            D, kind = model.d_b, self.settings.gan_loss
            d_real = D(torch.cat([a, b], dim=1))
            d_fake = D(torch.cat([a, fake.detach()], dim=1))
            loss_d = 0.5 * (gan_loss(d_real, True, kind) + gan_loss(d_fake, False, kind))
            loss_g = gan_loss(frozen(D, torch.cat([a, fake], dim=1)), True, kind)
            loss = loss + loss_d + loss_g
            metrics.update(loss_d=loss_d.item(), loss_g=loss_g.item(),
                           d_real=d_real.mean().item(), d_fake=d_fake.mean().item())
        return loss, metrics


class CycleGANObjective:
    """Two adversarial losses + cycle + identity; B images drawn at random for each A image."""

    def __init__(self, settings: TranslateConfig, images_b: torch.Tensor):
        self.settings = settings
        self.images_b = images_b  # uint8 [N_B, 3, S, S], on the CPU

    def __call__(self, model: TranslationNets, batch, generator: torch.Generator):
        a = to_signed(batch)
        rows = torch.randint(len(self.images_b), (a.shape[0],), generator=generator,
                             device=generator.device).cpu()
        b = to_signed(self.images_b[rows].to(a.device))
        if self.settings.augment:
            (a,), (b,) = jitter([a], generator), jitter([b], generator)
        G, F_, kind = model.g_ab, model.g_ba, self.settings.gan_loss
        fake_b, fake_a = G(a), F_(b)
        cycle = (F_(fake_b) - a).abs().mean() + (G(fake_a) - b).abs().mean()
        loss_d = 0.5 * (gan_loss(model.d_b(b), True, kind)
                        + gan_loss(model.d_b(fake_b.detach()), False, kind)) \
            + 0.5 * (gan_loss(model.d_a(a), True, kind)
                     + gan_loss(model.d_a(fake_a.detach()), False, kind))
        loss_g = gan_loss(frozen(model.d_b, fake_b), True, kind) \
            + gan_loss(frozen(model.d_a, fake_a), True, kind)
        loss = loss_d + loss_g + self.settings.lambda_cycle * cycle
        metrics = {"cycle": cycle.item(), "loss_d": loss_d.item(), "loss_g": loss_g.item()}
        if self.settings.lambda_identity > 0:
            identity = (G(b) - b).abs().mean() + (F_(a) - a).abs().mean()
            loss = loss + self.settings.lambda_cycle * self.settings.lambda_identity * identity
            metrics["identity"] = identity.item()
        return loss, metrics


class TranslateModel(nn.Module):
    """A trained translator: `g_ab` (A -> B) and, for CycleGAN, `g_ba` (B -> A)."""

    family = FAMILY
    has_latent = False

    def __init__(self, net: TranslateNetConfig, settings: TranslateConfig):
        super().__init__()
        self.net_config, self.settings = net, settings
        self.image_size = net.image_size
        nets = TranslationNets(net, two_way=settings.method == "cyclegan", discriminators=False)
        self.g_ab = nets.g_ab
        self.g_ba = nets.g_ba

    def generator_for(self, direction: str) -> nn.Module:
        """The network for "a2b" or (CycleGAN) "b2a"."""
        if direction == "a2b":
            return self.g_ab
        if direction == "b2a" and self.g_ba is not None:
            return self.g_ba
        raise ConfigError(f"this {self.settings.method} model has no direction {direction!r}",
                          field="direction",
                          fix="use a2b" + (" or b2a" if self.g_ba is not None else ""))

    def sample(self, n: int, generators: Sequence[torch.Generator],
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """Translate `condition` (n input images in [-1, 1]) with per-sample dropout noise."""
        if condition is None:
            raise ConfigError("a translator needs input images", field="condition",
                              fix="pass the images to translate")
        if len(condition) != n:
            raise ConfigError(f"{len(condition)} images for n={n}", field="condition")
        return translate(self, condition, generators=generators)


@torch.no_grad()
def translate(model: TranslateModel, images: torch.Tensor, direction: str = "a2b",
              generators: Sequence[torch.Generator] | None = None,
              batch_size: int = 64) -> torch.Tensor:
    """Images [N, 3, S, S] in [-1, 1] -> translations [N, 3, S, S] in [-1, 1], on the CPU.

    Deterministic unless `generators` (one per image) are given: then image i's dropout noise
    comes from generators[i] alone.
    """
    net = model.generator_for(direction)
    size = model.image_size
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
        raise ConfigError(f"expected images [N, 3, {size}, {size}], got {list(images.shape)}",
                          field="images", fix=f"resize the inputs to {size}x{size}")
    if generators is not None and len(generators) != len(images):
        raise ConfigError(f"{len(generators)} generators for {len(images)} images",
                          field="generators")
    net.eval()
    first = next(net.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    parts = []
    for start in range(0, len(images), batch_size):
        noise = None if generators is None else list(generators[start:start + batch_size])
        parts.append(net(images[start:start + batch_size].to(device).float(), noise=noise).cpu())
    return torch.cat(parts) if parts else images.new_zeros(images.shape)


def chroma_error(images_u8: torch.Tensor, targets_u8: torch.Tensor) -> float:
    """Mean |difference| of the YCbCr chroma channels (ITU-R 601), in [0, 1] units."""
    def chroma(x: torch.Tensor) -> torch.Tensor:
        r, g, b = (x.double() / 255).unbind(dim=1)
        return torch.stack([-0.168736 * r - 0.331264 * g + 0.5 * b,
                            0.5 * r - 0.418688 * g - 0.081312 * b], dim=1)

    return (chroma(images_u8) - chroma(targets_u8)).abs().mean().item()


def _pixel_figures(images_u8: torch.Tensor, targets_u8: torch.Tensor, prefix: str) -> dict:
    l1 = (images_u8.double() - targets_u8.double()).abs().mean().item() / 255
    return {f"{prefix}l1": l1, f"{prefix}psnr": psnr(targets_u8, images_u8)}


@torch.no_grad()
def evaluate_translation(model: TranslateModel, pairs: PairedImages | tuple,
                         embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         extractor=None, direction: str = "a2b") -> dict:
    """Held-out figures of the model and of the identity baseline (the input copied).

    `pairs`: `PairedImages` or (inputs, targets) uint8 [N, 3, S, S]. Pixel L1 (in [0, 1] units)
    and PSNR always; `embed` (images [N, 3, S, S] in [0, 1] -> [N, D]) adds the mean cosine to
    the true target; `extractor` (a metrics FeatureExtractor) adds the Fréchet distance; a
    colorize model adds the chroma error; a CycleGAN adds both cycle reconstruction errors.
    """
    from ..metrics.evaluate import extract_features
    from ..metrics.frechet import fd_from_features

    inputs, targets = (pairs.a, pairs.b) if isinstance(pairs, PairedImages) else pairs
    if direction == "b2a":
        inputs, targets = targets, inputs
    if len(inputs) == 0 or inputs.shape != targets.shape:
        raise ConfigError(f"need matching non-empty image sets, got {list(inputs.shape)} and "
                          f"{list(targets.shape)}", field="pairs")
    outputs = to_uint8(translate(model, to_signed(inputs), direction))
    figures: dict = {"count": len(inputs), **_pixel_figures(outputs, targets, ""),
                     **_pixel_figures(inputs, targets, "identity_")}
    if embed is not None:
        target_e = F.normalize(embed(targets.float() / 255).float(), dim=-1)
        for prefix, images in (("", outputs), ("identity_", inputs)):
            e = F.normalize(embed(images.float() / 255).float(), dim=-1)
            figures[f"{prefix}cosine"] = (e * target_e).sum(dim=-1).mean().item()
    if extractor is not None:
        reference, _ = extract_features(targets, extractor, field="targets")
        for prefix, images in (("", outputs), ("identity_", inputs)):
            features, _ = extract_features(images, extractor, field="images")
            figures[f"{prefix}{extractor.distance_name}"] = fd_from_features(features, reference)
    if model.settings.task == "colorize":
        figures["chroma_error"] = chroma_error(outputs, targets)
        figures["identity_chroma_error"] = chroma_error(inputs, targets)
    if model.g_ba is not None:
        back = "b2a" if direction == "a2b" else "a2b"
        rec_in = to_uint8(translate(model, to_signed(outputs), back))
        rec_target = to_uint8(translate(model, translate(model, to_signed(targets), back),
                                        direction))
        figures["cycle_l1_input"] = _pixel_figures(rec_in, inputs, "")["l1"]
        figures["cycle_l1_target"] = _pixel_figures(rec_target, targets, "")["l1"]
    return figures


def train_translate(data_b: str | Path, out: str | Path, data_a: str | Path | None = None,
                    settings: TranslateConfig = TranslateConfig(), preset: str = "emoji32",
                    overrides: dict | None = None, net_overrides: dict | None = None,
                    show_progress: bool = True, resume: bool = True,
                    stop_after: int | None = None) -> FamilyRunResult:
    """Train a translator A -> B (A made from B for colorize/edges2image); write `out/model/`."""
    if preset not in LOOP_PRESETS:
        raise ConfigError(f"unknown translate preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(LOOP_PRESETS)}")
    net = translate_net_config(preset, settings, **(net_overrides or {}))
    config = from_dict(TrainConfig, {**_TRAINING, **LOOP_PRESETS[preset], **(overrides or {})})
    started, out = time.perf_counter(), Path(out)
    pix2pix = settings.method == "pix2pix"
    data = load_translation_data(
        data_b, data_a, task=settings.task, paired=pix2pix, image_size=net.image_size,
        pair_by=settings.pair_by, select_a=settings.select_a, select_b=settings.select_b,
        held_out_fraction=settings.held_out_fraction, min_pairs=MIN_PAIRS[preset])
    _check_run_folder(out, {"translate": to_dict(settings), "net": to_dict(net)}, resume)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        nets = TranslationNets(net, two_way=not pix2pix, discriminators=settings.adversarial)
    if pix2pix:
        dataset, objective = PairedSet(data.train_a, data.train_b), Pix2PixObjective(settings)
    else:
        dataset, objective = DomainSet(data.train_a), CycleGANObjective(settings, data.train_b)
    probe = PairedImages(data.held_out.a[:EVAL_PAIRS], data.held_out.b[:EVAL_PAIRS],
                         data.held_out.keys[:EVAL_PAIRS])

    def evaluate(step: int, module: TranslationNets) -> dict:
        view = TranslateModel(net, settings)
        view.g_ab, view.g_ba = module.g_ab, module.g_ba
        figures = evaluate_translation(view, probe) if len(probe) else {}
        return {k: v for k, v in figures.items() if k in ("l1", "psnr", "chroma_error")}

    result = train(nets, dataset, objective, config, out, on_eval=evaluate,
                   show_progress=show_progress, resume=resume, stop_after=stop_after)
    final = TranslateModel(net, settings)
    final.load_state_dict({k: v for k, v in nets.state_dict().items()
                           if k.startswith(("g_ab.", "g_ba."))})
    final.eval().requires_grad_(False)
    final_eval = evaluate_translation(final, data.held_out) if len(data.held_out) else {}
    sources = {"data_a": str(data_a) if data_a is not None else None, "data_b": str(data_b)}
    folder_config = {"family": FAMILY, "translate": to_dict(settings), "net": to_dict(net),
                     "train": to_dict(config), "preset": preset, "steps": result.step,
                     **sources, "counts": data.counts, "eval": final_eval}
    card = _card(settings, net, config, preset, result.step, sources, data.counts, final_eval,
                 sum(p.numel() for p in final.parameters()))
    model_dir = write_model_folder(out / "model", final.state_dict(), folder_config, card)
    return FamilyRunResult(model_dir, result.step, result.stopped, final_eval,
                           time.perf_counter() - started)


def _check_run_folder(out: Path, settings: dict, resume: bool) -> None:
    """A run folder belongs to one method/task/network: refuse to resume it with others."""
    from ..train.state import checkpoint_dirs

    path = out / "translate.json"
    text = json.dumps(settings, sort_keys=True)
    if checkpoint_dirs(out / "checkpoints"):
        if not resume:
            raise ConfigError(f"{out} already holds a run", field="out",
                              fix="choose a new output folder, or resume this run")
        if path.is_file() and json.loads(path.read_text()) != json.loads(text):
            raise ConfigError(f"{out} holds a translation run with other settings",
                              field="out",
                              fix="use a new --out folder, or the same method, task and preset")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def load_translate(spec: str | Path, device: str | torch.device = "cpu") -> TranslateModel:
    """Load a translator by registry name or model-folder path (hash-verified), in eval mode."""
    return load_family_model(spec, FAMILY, "a translation", lambda config: TranslateModel(
        from_dict(TranslateNetConfig, config["net"]),
        from_dict(TranslateConfig, config["translate"])), device)


def _card(settings: TranslateConfig, net: TranslateNetConfig, loop: TrainConfig, preset: str,
          steps: int, sources: dict, counts: dict, figures: dict, parameters: int) -> str:
    inputs = f" --data-a {sources['data_a']}" if sources["data_a"] else ""
    command = f"imagesynth train translate{inputs} --data-b {sources['data_b']}" + "".join(
        f" --{flag}" + (f" {value}" if value else "")
        for flag, value in _flags(settings, loop, preset)) + " --out OUT"
    if settings.method == "pix2pix":
        losses = (f"lambda_l1 {settings.lambda_l1:g} x L1" + (
            f" + {settings.gan_loss.upper()} adversarial loss of a conditional PatchGAN"
            if settings.adversarial else " only (no discriminator)"))
    else:
        losses = (f"{settings.gan_loss.upper()} adversarial losses of two PatchGANs + "
                  f"{settings.lambda_cycle:g} x cycle + "
                  f"{settings.lambda_cycle * settings.lambda_identity:g} x identity")
    shown = "\n".join(f"| {key} | {value:.4g} |" if isinstance(value, float) else
                      f"| {key} | {value} |" for key, value in figures.items())
    return (f"# Image-to-image translation ({settings.method}, task {settings.task})\n\n"
            f"Preset `{preset}`: {net.image_size} px, {net.generator} generator(s), "
            f"{parameters:,} generator parameters; {steps} of {loop.max_steps} steps of batch "
            f"{loop.batch_size}. Loss: {losses}. Data: {counts}.\n\n"
            f"Reproduce (rerun the same command to resume):\n\n    {command}\n\n"
            f"Measured on the held-out pairs (a {settings.held_out_fraction:g} share of the keys, "
            f"by hash); `identity_` rows are the input copied unchanged:\n\n"
            f"| figure | value |\n|---|---|\n{shown}\n")


def _flags(settings: TranslateConfig, loop: TrainConfig, preset: str) -> list[tuple[str, str]]:
    """The `train translate` options that reproduce a run (paper defaults left out)."""
    paper = TranslateConfig(method=settings.method)
    flags = []
    for name in ("method", "task", "pair_by", "select_a", "select_b", "gan_loss", "generator",
                 "lambda_l1", "lambda_cycle", "lambda_identity"):
        value = getattr(settings, name)
        if name in ("method", "task", "pair_by") or value != getattr(paper, name):
            flags.append((name.replace("_", "-"), f"{value:g}" if isinstance(value, float)
                          else str(value)))
    if settings.held_out_fraction != paper.held_out_fraction:
        flags.append(("held-out", f"{settings.held_out_fraction:g}"))
    flags += [(f"no-{name}", "") for name in ("adversarial", "augment")
              if not getattr(settings, name)]
    flags += [("preset", preset), ("steps", str(loop.max_steps))]
    preset_loop = LOOP_PRESETS[preset]
    if loop.batch_size != preset_loop["batch_size"]:
        flags.append(("batch-size", str(loop.batch_size)))
    if loop.learning_rate != preset_loop["learning_rate"]:
        flags.append(("lr", f"{loop.learning_rate:g}"))
    if loop.seed:
        flags.append(("seed", str(loop.seed)))
    return flags


@dataclass(frozen=True)
class TranslateImagesConfig:
    """What `imagesynth translate` takes; every output's recipe records it."""

    model: str
    images: tuple[str, ...]
    direction: Literal["a2b", "b2a"] = "a2b"
    #: None: deterministic (no dropout noise); an integer: image i's noise from seed + i
    seed: int | None = None
    #: make the model's input from each image first (grey for colorize, edges for edges2image)
    derive_input: bool = False

    def __post_init__(self):
        if not self.images:
            raise ConfigError("no input images", field="images", fix="name one or more images")
        if self.direction not in ("a2b", "b2a"):
            raise ConfigError(f"must be a2b or b2a, got {self.direction!r}", field="direction")
        if self.seed is not None and not 0 <= self.seed < 2 ** 63 - len(self.images):
            raise ConfigError(f"must be a non-negative integer, got {self.seed}", field="seed")


def translate_images(config: TranslateImagesConfig, model: TranslateModel | None = None
                     ) -> tuple[list, list[dict]]:
    """Translate image files (resized to the model's size): PIL images and one recipe each."""
    from PIL import Image

    from .. import __version__
    from ..data.folder import square_resize
    from ..diffusion.noise import generators_from_seeds
    from ..io.files import sha256_file
    from ..io.images import open_image
    from ..registry import Registry
    from .translate_data import task_input, to_tensor_u8

    model = model if model is not None else load_translate(config.model)
    if config.derive_input and model.settings.task == "translate":
        raise ConfigError("this model's inputs are images of domain A, not derived ones",
                          field="derive_input", fix="leave out --derive-input")
    pictures = [square_resize(open_image(path, field="images"), model.image_size)
                for path in config.images]
    inputs = to_tensor_u8(pictures)
    if config.derive_input:
        inputs = task_input(model.settings.task, inputs)
    seeds = None if config.seed is None else [config.seed + i for i in range(len(pictures))]
    outputs = to_uint8(translate(model, to_signed(inputs), config.direction,
                                 generators=None if seeds is None
                                 else generators_from_seeds(seeds)))
    model_hash = Registry().get(str(config.model)).weights_sha256
    images, recipes = [], []
    for i, path in enumerate(config.images):
        images.append(Image.fromarray(outputs[i].permute(1, 2, 0).numpy(), "RGB"))
        single = dataclasses.replace(config, images=(str(path),),
                                     seed=None if seeds is None else seeds[i])
        recipes.append({
            "kind": "translate", "family": FAMILY, "model": str(config.model),
            "model_hash": model_hash, "input": Path(path).name,
            "input_sha256": sha256_file(path), "seed": single.seed,
            "size": [model.image_size, model.image_size], "method": model.settings.method,
            "task": model.settings.task, "sampler": f"translate-{model.settings.method}",
            "translate": to_dict(single),
            "versions": {"imagesynth": __version__, "torch": torch.__version__}})
    return images, recipes
