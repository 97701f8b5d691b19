"""The GAN family: a caption-conditional StyleGAN-lite trained on the shared loop.

Objective (one loss, one optimiser step, so the one loop trains it): the non-saturating GAN
loss (Goodfellow et al. 2014) for both players plus the R1 penalty on real images (Mescheder
et al. 2018), with DiffAugment (Zhao et al. 2020) applied to every image the discriminator sees.
G and D are updated simultaneously from the same batch: D's loss sees a detached fake, and G's
loss goes through a parameter-detached copy of D (`torch.func.functional_call`), so each
player's gradient reaches only its own weights. The loop's EMA of the module gives the EMA of G.
Sampling: w = mapping(z, c); truncation pulls w toward the per-condition mean w (BigGAN's /
StyleGAN's trick), w_psi = w_mean(c) + psi (w - w_mean(c)); the image is synthesis(w).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..config import from_dict, to_dict
from ..errors import ConfigError
from ..train.datasets import to_signed
from ..nets.gan import GAN, GANConfig
from ..registry import write_model_folder
from ..train import (BatchRandom, FamilyRunResult, TrainConfig, is_main_process, shard_aware,
                     train)
from ..train.distributed import check_batch_split
from .common import load_family_model, training_folder

FAMILY = "gan"
#: z draws that estimate each condition's mean w for truncation (fixed seed: deterministic)
MEAN_W_SAMPLES = 512
MEAN_W_SEED = 0x5EED
AUGMENTS = ("translation", "cutout", "color")

PRESETS = {
    "tiny": GANConfig(image_size=8, z_dim=16, w_dim=32, mapping_layers=2, channels=(32, 16),
                      d_channels=(16, 32)),
    # half GANConfig's default widths: 0.23 s a step of 32 on 2 CPU cores instead of 0.64, so a
    # CPU budget buys 2.75x the steps, and flat-coloured shapes need little capacity
    "shapes": GANConfig(channels=(64, 64, 32, 16), d_channels=(16, 32, 64, 64)),
}
LOOP_PRESETS = {
    "tiny": {"max_steps": 30, "batch_size": 8, "learning_rate": 2e-3},
    "shapes": {"max_steps": 20000, "batch_size": 32, "learning_rate": 2e-3},
}
#: every preset trains like StyleGAN2: Adam(0, 0.99), constant lr, no clipping, EMA of weights
_GAN_TRAINING = {"betas": (0.0, 0.99), "decay": "constant", "grad_clip": None,
                 "ema_decay": 0.995, "weight_decay": 0.0, "eval_every": 1000}
MIN_IMAGES = {"tiny": 16, "shapes": 1000}


@dataclass(frozen=True)
class GANObjectiveConfig:
    """The GAN loss's settings (stored in the model's config)."""

    r1_gamma: float = 1.0
    #: lazy regularisation (StyleGAN2 sec. 3.1): R1 on a random 1/r1_every of the steps, scaled
    #: by r1_every so its expected weight is unchanged; the coin comes from the step generator
    r1_every: int = 4
    augment: tuple[str, ...] = ("translation", "cutout")
    translation: float = 0.0625  # max shift as a fraction of the side (2 px at 32 px)
    cutout: float = 0.25  # side of the cut square as a fraction of the image side

    def __post_init__(self):
        unknown = [a for a in self.augment if a not in AUGMENTS]
        if unknown:
            raise ConfigError(f"unknown augmentation(s) {unknown}", field="augment",
                              fix=f"choose from {', '.join(AUGMENTS)}")
        if self.r1_gamma < 0:
            raise ConfigError(f"must be >= 0, got {self.r1_gamma}", field="r1_gamma")
        if self.r1_every < 1:
            raise ConfigError(f"must be >= 1, got {self.r1_every}", field="r1_every")


def gan_config(preset: str, **overrides) -> GANConfig:
    """The named preset's architecture, with fields replaced by `overrides`."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown GAN preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def diff_augment(x: torch.Tensor, settings: GANObjectiveConfig,
                 generator: torch.Generator | BatchRandom) -> torch.Tensor:
    """DiffAugment: differentiable random colour, translation and cutout, per sample."""
    B, _, H, W = x.shape
    rng = BatchRandom.of(generator, B)
    rand = lambda *shape: rng.rand(*shape).to(x)  # noqa: E731 - [B, *shape], per sample
    if "color" in settings.augment:
        x = x + (rand(1, 1, 1) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (rand(1, 1, 1) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (rand(1, 1, 1) + 0.5) + mean
    if "translation" in settings.augment and settings.translation > 0:
        shift = int(H * settings.translation + 0.5)
        dx = (rand() * (2 * shift + 1)).long() - shift
        dy = (rand() * (2 * shift + 1)).long() - shift
        # shift by integer pixels with white (+1) fill: the scenes' background
        padded = F.pad(x, (shift, shift, shift, shift), value=1.0)
        rows = (torch.arange(H, device=x.device)[None] + shift - dy[:, None].to(x.device))
        cols = (torch.arange(W, device=x.device)[None] + shift - dx[:, None].to(x.device))
        x = padded[torch.arange(B)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    if "cutout" in settings.augment and settings.cutout > 0:
        side = int(H * settings.cutout + 0.5)
        cy = (rand() * (H + 1 - side)).long()
        cx = (rand() * (W + 1 - side)).long()
        ys = torch.arange(H, device=x.device)[None]
        xs = torch.arange(W, device=x.device)[None]
        inside_y = (ys >= cy[:, None].to(x.device)) & (ys < (cy + side)[:, None].to(x.device))
        inside_x = (xs >= cx[:, None].to(x.device)) & (xs < (cx + side)[:, None].to(x.device))
        mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
        x = x * (~mask)
    return x


class GANObjective:
    """Non-saturating G and D losses + R1, on DiffAugmented images, for one simultaneous step."""

    def __init__(self, condition_table: torch.Tensor, settings: GANObjectiveConfig):
        self.condition_table = condition_table  # [N, condition_dim] pooled caption vectors
        self.settings = settings

    @shard_aware
    def __call__(self, model: GAN, batch, generator: torch.Generator | BatchRandom):
        images_u8, choices = batch
        real = to_signed(images_u8)
        B = real.shape[0]
        # per-sample draws are made for the global batch (a shard keeps its rows); the R1 coin
        # is one draw for the whole step, the same in every shard
        rng = BatchRandom.of(generator, B)
        counts = (choices >= 0).sum(dim=1)
        pick = (rng.rand().to(real) * counts).long().clamp(max=choices.shape[1] - 1)
        rows = choices[torch.arange(B), pick]
        condition = self.condition_table.to(real)[rows.cpu()] if self.condition_table.numel() \
            else None
        z = rng.randn(model.config.z_dim).to(real)
        fake = diff_augment(model.generator(z, condition), self.settings, rng)
        real_seen = diff_augment(real, self.settings, rng).detach()
        every = self.settings.r1_every
        coin = torch.rand((), generator=rng.generator)
        lazy_r1 = bool(coin < 1 / every) and self.settings.r1_gamma
        real_seen.requires_grad_(bool(lazy_r1))
        D = model.discriminator
        d_real = D(real_seen, condition)
        d_fake = D(fake.detach(), condition)
        loss_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        r1 = torch.zeros((), device=real.device)
        if lazy_r1:
            (gradient,) = torch.autograd.grad(d_real.sum(), real_seen, create_graph=True)
            r1 = gradient.square().sum(dim=(1, 2, 3)).mean()
        frozen = {name: p.detach() for name, p in D.named_parameters()}
        frozen.update(dict(D.named_buffers()))
        loss_g = F.softplus(-functional_call(D, frozen, (fake, condition))).mean()
        loss = loss_d + loss_g + self.settings.r1_gamma / 2 * every * r1
        return loss, {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "r1": r1.item(),
                      "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}


class GANModel(nn.Module):
    """A trained generator behind the family interface: sample, truncation, w latents."""

    family = FAMILY
    has_latent = True

    def __init__(self, config: GANConfig, text_encoder: str = "minilm"):
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.text_encoder_name = text_encoder
        self.gan = GAN(config)

    @property
    def generator(self):
        """The generator network (z, condition) -> image."""
        return self.gan.generator

    def condition_for(self, prompts: Sequence[str]) -> torch.Tensor:
        """Pooled text vectors [n, condition_dim] of prompts, with the model's text encoder."""
        from ..text import load_text_encoder

        encoder = load_text_encoder(self.text_encoder_name)
        return torch.cat([encoder([prompt]).pooled for prompt in prompts]).float()

    @torch.no_grad()
    def mean_w(self, condition: torch.Tensor | None) -> torch.Tensor:
        """Mean w [n, w_dim] of each condition row over fixed z draws (truncation's centre)."""
        device = next(self.parameters()).device
        z = torch.randn(MEAN_W_SAMPLES, self.config.z_dim,
                        generator=torch.Generator().manual_seed(MEAN_W_SEED)).to(device)
        if condition is None:
            return self.generator.mapping(z, None).mean(dim=0, keepdim=True)
        rows = [self.generator.mapping(z, c[None].expand(MEAN_W_SAMPLES, -1)).mean(dim=0)
                for c in condition.to(device)]
        return torch.stack(rows)

    @torch.no_grad()
    def latent(self, n: int, generators: Sequence[torch.Generator],
               condition: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        """w latents [n, w_dim]: z_i from generators[i] alone, mapped, then truncated."""
        check_truncation(truncation)
        if len(generators) != n:
            raise ConfigError(f"{len(generators)} generators for {n} samples", field="generators")
        device = next(self.parameters()).device
        z = torch.stack([torch.randn(self.config.z_dim, generator=g) for g in generators])
        condition = self._condition(condition, n, device)
        w = self.generator.mapping(z.to(device), condition)
        if truncation < 1.0:
            centre = self.mean_w(condition)
            w = centre + truncation * (w - centre)
        return w

    def _condition(self, condition, n: int, device) -> torch.Tensor | None:
        if self.config.condition_dim == 0:
            return None
        if condition is None:
            raise ConfigError("this GAN is conditional", field="condition",
                              fix="give a prompt (or a condition vector per sample)")
        condition = torch.as_tensor(condition, dtype=torch.float32).to(device)
        if condition.shape != (n, self.config.condition_dim):
            raise ConfigError(f"must have shape [{n}, {self.config.condition_dim}], got "
                              f"{list(condition.shape)}", field="condition")
        return condition

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """w [B, w_dim] -> images [B, 3, S, S] in [-1, 1]."""
        return self.generator.synthesis(latent).clamp(-1, 1)

    def sample(self, n: int, generators: Sequence[torch.Generator],
               condition: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        """`n` images [n, 3, S, S] in [-1, 1]; image i depends only on generators[i]."""
        return self.decode(self.latent(n, generators, condition, truncation))

    def encode(self, images: torch.Tensor, condition: torch.Tensor | None = None,
               steps: int = 200, learning_rate: float = 0.05) -> torch.Tensor:
        """Invert images into w by optimisation (the StyleGAN2 projector, pixel MSE), from mean w."""
        device = next(self.parameters()).device
        images = images.to(device)
        condition = self._condition(condition, images.shape[0], device)
        w = self.mean_w(condition).expand(images.shape[0], -1).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=learning_rate)
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            # clamped like decode(): a saturated pixel that matches its target costs nothing
            loss = F.mse_loss(self.generator.synthesis(w).clamp(-1, 1), images, reduction="sum")
            loss.backward()
            optimiser.step()
        return w.detach()


def check_truncation(truncation: float) -> None:
    """psi must lie in (0, 1]."""
    if not isinstance(truncation, (int, float)) or not 0 < truncation <= 1:
        raise ConfigError(f"must be in (0, 1], got {truncation!r}", field="truncation",
                          fix="1 keeps the full variety; 0.5-0.8 trades variety for quality")


def pooled_caption_table(encoder, captions: list[str], batch_size: int = 256
                         ) -> tuple[torch.Tensor, dict[str, int]]:
    """Pooled text vectors [N, D] of distinct captions, and each caption's row."""
    texts = list(dict.fromkeys(captions))
    pooled = torch.cat([encoder.encode(texts[i:i + batch_size]).pooled.float()
                        for i in range(0, len(texts), batch_size)])
    return pooled, {text: i for i, text in enumerate(texts)}


def train_gan(data: str | Path, out: str | Path, preset: str = "shapes",
              overrides: dict | None = None, gan_overrides: dict | None = None,
              objective: GANObjectiveConfig | None = None, text_encoder=None,
              show_progress: bool = True, resume: bool = True,
              stop_after: int | None = None) -> FamilyRunResult:
    """Train a caption-conditional GAN on a captioned folder into `out`; write `out/model/`."""
    from ..train.datasets import CaptionedTrainingSet, caption_choice_table, caption_options
    from ..train.datasets import images_as_uint8

    if preset not in LOOP_PRESETS:
        raise ConfigError(f"unknown GAN preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(LOOP_PRESETS)}")
    architecture = gan_config(preset, **(gan_overrides or {}))
    settings = objective or GANObjectiveConfig()
    config = from_dict(TrainConfig, {"checkpoint_every": 500, **_GAN_TRAINING,
                                     **LOOP_PRESETS[preset], **(overrides or {})})
    check_batch_split(config.batch_size, config.grad_accum)  # before the data and text encoder
    started, out = time.perf_counter(), Path(out)
    folder = training_folder(data, architecture.image_size, preset, MIN_IMAGES[preset])
    items = [folder.items[i] for i in range(len(folder))]
    if text_encoder is None:
        from ..text import load_text_encoder

        text_encoder = load_text_encoder("minilm")
    captions = [c for item in items for c in caption_options(item)]
    table, index = pooled_caption_table(text_encoder, captions)
    if table.shape[1] != architecture.condition_dim:
        architecture = dataclasses.replace(architecture, condition_dim=table.shape[1])
    dataset = CaptionedTrainingSet(images_as_uint8(folder), caption_choice_table(items, index))
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = GANModel(architecture)
    # probe: the plain one-object captions ("a red circle") when the data has them
    plain = sorted({c for c in captions if len(c.split()) == 3 and c.startswith("a ")})
    probe_prompts = (plain or sorted(set(captions)))[:24]
    probe = torch.stack([table[index[p]] for p in probe_prompts])

    def evaluate(step: int, module: GANModel) -> dict[str, float]:
        return {"checker_pass": checker_pass_rate(module, probe_prompts, probe, seeds=2)}

    result = train(model.gan, dataset, GANObjective(table, settings), config, out,
                   on_eval=evaluate_gan(model, evaluate), show_progress=show_progress,
                   resume=resume, stop_after=stop_after)
    if not is_main_process():  # under torchrun rank 0 evaluates and writes the model folder
        return FamilyRunResult(out / "model", result.step, result.stopped, result.last_metrics,
                               time.perf_counter() - started)
    final = GANModel(architecture)
    final.gan.load_state_dict((result.ema if result.ema is not None else model.gan).state_dict())
    final.eval().requires_grad_(False)
    final_eval = {"checker_pass_probe": checker_pass_rate(final, probe_prompts, probe, seeds=4)}
    folder_config = {"family": FAMILY, "gan": to_dict(architecture),
                     "objective": to_dict(settings), "text_encoder": "minilm",
                     "train": to_dict(config), "preset": preset, "steps": result.step,
                     "data": Path(data).name, "eval": final_eval}
    card = _card(preset, architecture, config, result.step, Path(data).name, final_eval,
                 sum(p.numel() for p in final.generator.parameters()))
    model_dir = write_model_folder(out / "model", final.state_dict(), folder_config, card)
    return FamilyRunResult(model_dir, result.step, result.stopped, final_eval,
                           time.perf_counter() - started)


def evaluate_gan(wrapper: GANModel, evaluate):
    """The loop evaluates its (EMA) GAN module; evaluate it through a family wrapper."""

    def on_eval(step: int, module: GAN) -> dict[str, float]:
        view = GANModel(wrapper.config)
        view.gan = module
        return evaluate(step, view.eval())

    return on_eval


@torch.no_grad()
def checker_pass_rate(model: GANModel, prompts: list[str], condition: torch.Tensor,
                      seeds: int = 4, truncation: float = 1.0) -> float:
    """Fraction of (prompt, seed) samples the ShapesWorld checker accepts (0 for non-shapes data)."""
    from ..data import check
    from ..data.shapes import parse_caption
    from ..pipeline import _to_pil

    passed = total = 0
    for prompt, row in zip(prompts, condition):
        try:
            parse_caption(prompt)
        except Exception:  # not a ShapesWorld caption: nothing to check
            continue
        generators = [torch.Generator().manual_seed(s) for s in range(seeds)]
        images = _to_pil(model.sample(seeds, generators, row[None].expand(seeds, -1),
                                      truncation))
        passed += sum(check(image, prompt).ok for image in images)
        total += seeds
    return passed / total if total else 0.0


def load_gan(spec: str | Path, device: str | torch.device = "cpu") -> GANModel:
    """Load a GAN by registry name or model-folder path (hash-verified), in eval mode."""
    return load_family_model(spec, FAMILY, "a GAN", lambda config: GANModel(
        from_dict(GANConfig, config["gan"]), config.get("text_encoder", "minilm")), device)


def _card(preset: str, architecture: GANConfig, train_config: TrainConfig, steps: int,
          data_name: str, final_eval: dict, parameters: int) -> str:
    command = (f"imagesynth train gan --data {data_name} --preset {preset} --out OUT "
               f"--steps {train_config.max_steps}")
    return (f"# Conditional GAN (StyleGAN-lite) trained on {data_name}\n\n"
            f"Preset `{preset}`: {architecture.image_size} px, z {architecture.z_dim} -> w "
            f"{architecture.w_dim}, generator {parameters:,} parameters; {steps} of "
            f"{train_config.max_steps} steps of batch {train_config.batch_size}. Conditioned on "
            f"MiniLM's pooled caption vector (mapping input, projection discriminator); "
            f"non-saturating loss, R1, DiffAugment, equalised lr, EMA of G.\n\n"
            f"Reproduce (rerun the same command to resume):\n\n    {command}\n\n"
            f"Measured: `{final_eval}`\n")
