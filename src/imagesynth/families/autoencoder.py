"""Train the KL autoencoder on any image folder with the shared loop; measure PSNR and FD.

Loss (Rombach et al. 2022, app. G, without the adversarial and LPIPS terms, whose weights
cannot be had offline): L = ||x - D(z)||^2 + w_KL * KL(q(z|x) || N(0, I)), z ~ q(z|x), with both
terms summed over elements as in SD's `LPIPSWithDiscriminator`; here both are divided by the
pixel count, which keeps w_KL's meaning (SD: 1e-6) and makes the loss a per-pixel error.
SD uses L1; without a perceptual term, L2 reconstructed better here (val PSNR +0.1 and +0.7 dB,
two seeds, `tiny` preset on 16 px emoji, 500 steps), so it is the default and L1 an option.
A vector VAE is also a generator: `VAEModel` samples its prior behind the family interface.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from ..config import from_dict, to_dict
from ..data.folder import CaptionedImageFolder
from ..errors import ConfigError, DataError, ModelNotFoundError
from ..metrics import ModuleExtractor, fd_from_features
from ..registry import write_model_folder
from ..train import FamilyRunResult, TrainConfig, train
from ..metrics.psnr import psnr
from ..nets.autoencoder import Autoencoder, autoencoder_config, model_config
from ..train.datasets import ImageTensorSet, spread_subset, to_signed, to_uint8

#: loop settings per architecture preset (batch, LR, length sized for that data)
LOOP_PRESETS: dict[str, dict] = {
    "tiny": dict(batch_size=16, learning_rate=2e-3, warmup_steps=5, max_steps=60,
                 eval_every=30, ema_decay=0.99),
    "shapes-f4": dict(batch_size=32, learning_rate=1e-3, warmup_steps=100, max_steps=4000,
                      eval_every=500),
    "emoji-f4": dict(batch_size=32, learning_rate=1e-3, warmup_steps=100, max_steps=8000,
                     eval_every=500),
    "tiny-v8": dict(batch_size=16, learning_rate=2e-3, warmup_steps=5, max_steps=60,
                    eval_every=30, ema_decay=0.99),
    # the bundled model's recipe: 5.5 min on one GPU; on 2 CPU cores about 3 h (resumable)
    "shapes-v32": dict(batch_size=128, learning_rate=1e-3, warmup_steps=100, max_steps=15000,
                       eval_every=500),
}

#: default KL weight per preset. Grid latents only need to stay bounded for diffusion (SD: 1e-6).
#: A vector VAE's latent is searched by CLIP-guided synthesis, so its posteriors should overlap
#: into one smooth space: 0.03 (a Gaussian likelihood with sigma = sqrt(0.03 / 2) = 0.12 in
#: [-1, 1] units) reached the same PSNR as 0.005 on ShapesWorld with a KL 40 % lower
KL_WEIGHTS: dict[str, float] = {"tiny-v8": 0.03, "shapes-v32": 0.03}

#: at most this many validation images are reconstructed at each periodic eval
EVAL_IMAGES = 512
#: at most this many images enter the final FD (reconstructions vs originals) and the
#: scaling factor (2,048 images x 1,024 latent elements pin the std far below 1 %)
FD_IMAGES = 2048
SCALING_IMAGES = 2048


@dataclass(frozen=True)
class AutoencoderLoss:
    """Objective settings: reconstruction norm, KL weight (SD: 1e-6), random h-flips."""

    reconstruction: Literal["l1", "l2"] = "l2"
    kl_weight: float = 1e-6  # the grid presets' value; see KL_WEIGHTS
    flip: bool = True

    def __post_init__(self):
        if self.reconstruction not in ("l1", "l2"):
            raise ConfigError("must be 'l1' or 'l2'", field="reconstruction")
        if not self.kl_weight >= 0:
            raise ConfigError("must be non-negative", field="kl_weight")


def preset_loss(preset: str, reconstruction: str = "l2",
                kl_weight: float | None = None) -> AutoencoderLoss:
    """The objective for `preset`, its KL weight from `KL_WEIGHTS` unless given."""
    if kl_weight is None:
        kl_weight = KL_WEIGHTS.get(preset, AutoencoderLoss.kl_weight)
    return AutoencoderLoss(reconstruction=reconstruction, kl_weight=kl_weight)


class AutoencoderObjective:
    """Reconstruction of a posterior sample plus the KL term; all randomness from `generator`."""

    def __init__(self, loss: AutoencoderLoss):
        self.loss = loss

    def __call__(self, model: Autoencoder, batch: torch.Tensor, generator: torch.Generator):
        x = to_signed(batch)  # [B, 3, H, W]
        if self.loss.flip:
            flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        posterior = model.posterior(x)
        z = posterior.sample(generator)
        x_hat = model.vae.decode(z).sample.float()
        error = x_hat - x
        reconstruction = error.abs().mean() if self.loss.reconstruction == "l1" else \
            error.square().mean()
        kl = posterior.kl().float().mean() / x[0].numel()  # per pixel, as the L1 term
        loss = reconstruction + self.loss.kl_weight * kl
        return loss, {"reconstruction": reconstruction.item(), "kl": kl.item()}


def _batches(images_u8: torch.Tensor, batch_size: int):
    for start in range(0, len(images_u8), batch_size):
        yield images_u8[start:start + batch_size]


@torch.no_grad()
def reconstruct_uint8(model: Autoencoder, images_u8: torch.Tensor,
                      batch_size: int = 64) -> torch.Tensor:
    """decode(encode(x)) for uint8 images, returned as uint8 (what a saved PNG would hold)."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([to_uint8(model.reconstruct(to_signed(batch.to(device)))).cpu()
                      for batch in _batches(images_u8, batch_size)])


@torch.no_grad()
def measure_scaling_factor(model: Autoencoder, images_u8: torch.Tensor,
                           batch_size: int = 64) -> float:
    """1 / std of the posterior means (unscaled) over every element of the given images."""
    model.eval()
    device = next(model.parameters()).device
    count, total, total_sq = 0, 0.0, 0.0
    for batch in _batches(images_u8, batch_size):
        mu = model.posterior(to_signed(batch.to(device))).mean.double()
        count += mu.numel()
        total += mu.sum().item()
        total_sq += mu.square().sum().item()
    variance = total_sq / count - (total / count) ** 2
    if not variance > 0:
        raise DataError("the latents have zero variance", field="data",
                        fix="train longer or check the data")
    return 1.0 / math.sqrt(variance)


@torch.no_grad()
def fit_latent_prior(model: Autoencoder, images_u8: torch.Tensor, seed: int = 0,
                     batch_size: int = 256) -> None:
    """Fit a vector VAE's sampling mixture to the scaled posterior means of `images_u8`."""
    from sklearn.mixture import GaussianMixture

    model.eval()
    device = next(model.parameters()).device
    latents = torch.cat([model.encode(to_signed(batch.to(device))).flatten(1).cpu()
                         for batch in _batches(images_u8, batch_size)]).double().numpy()
    prior = model.latent_prior
    # reg_covar keeps every covariance positive definite in scaled (unit-std) latent units
    mixture = GaussianMixture(len(prior.weights), covariance_type="full", reg_covar=1e-4,
                              random_state=seed).fit(latents)
    prior.set(torch.from_numpy(mixture.weights_), torch.from_numpy(mixture.means_),
              torch.from_numpy(mixture.covariances_))


class PixelStatistics(nn.Module):
    """Raw-pixel features: 8x8 average-pooled RGB (192-d), a weak but weight-free extractor."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> [N, 192]."""
        return nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)


class CLIPImageFeatures(nn.Module):
    """A CLIP scorer's unit image embeddings as a feature module."""

    def __init__(self, scorer):
        super().__init__()
        self.scorer = scorer
        self.model = scorer.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> [N, D]."""
        return self.scorer.embed_image(images)


def fd_extractor(clip: str | None = None) -> ModuleExtractor:
    """`FD_clip_<name>` with a local imagesynth CLIP's image tower, else `FD_pixels8x8`."""
    if clip is None:
        return ModuleExtractor(PixelStatistics(), "pixels8x8")
    from ..clip import load_clip

    scorer = load_clip(clip)
    name = "clip_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in scorer.name)
    return ModuleExtractor(CLIPImageFeatures(scorer), name,
                           image_size=scorer.model.config.image_size)


def reconstruction_fd(images_u8: torch.Tensor, reconstructions_u8: torch.Tensor,
                      extractor: ModuleExtractor, batch_size: int = 256) -> float:
    """Fréchet distance between extractor features of originals and reconstructions."""
    def features(images: torch.Tensor) -> np.ndarray:
        arrays = images.permute(0, 2, 3, 1).numpy()
        return np.concatenate([extractor.extract(list(arrays[i:i + batch_size]))[0]
                               for i in range(0, len(arrays), batch_size)])
    return fd_from_features(features(images_u8), features(reconstructions_u8))


def train_autoencoder(data: str | Path, out: str | Path, preset: str = "emoji-f4",
                      overrides: dict | None = None, autoencoder_overrides: dict | None = None,
                      loss: AutoencoderLoss | None = None, fd_clip: str | None = None,
                      show_progress: bool = True, resume: bool = True,
                      stop_after: int | None = None) -> FamilyRunResult:
    """Train an autoencoder on `data` into `out`; measure the scaling factor; write `out/model/`.

    A vector VAE also gets its sampling prior: a Gaussian mixture fitted to its training latents.
    Periodic evals log val-split PSNR; the final eval adds FD of reconstructions vs originals
    (`FD_pixels8x8`, or `FD_clip_<name>` with `fd_clip`) over train + val images.
    """
    if preset not in LOOP_PRESETS:
        raise ConfigError(f"unknown autoencoder preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(LOOP_PRESETS)}")
    ae_config = autoencoder_config(preset, **(autoencoder_overrides or {}))
    config = from_dict(TrainConfig, {"checkpoint_every": 250, **LOOP_PRESETS[preset],
                                     **(overrides or {})})
    loss = loss or preset_loss(preset)
    started = time.perf_counter()
    out = Path(out)
    if not Path(data).is_dir():
        raise DataError(f"{data} is not a folder", field="data",
                        fix="point --data at a folder of images (e.g. from `imagesynth data`)")
    size = ae_config.image_size
    train_set = ImageTensorSet(CaptionedImageFolder(data, resolution=size, split="train"))
    val_folder = CaptionedImageFolder(data, resolution=size, split="val")
    val_images = ImageTensorSet(val_folder).images if len(val_folder) else train_set.images
    eval_images = spread_subset(val_images, EVAL_IMAGES)

    def evaluate(step: int, model: Autoencoder) -> dict[str, float]:
        return {"psnr_val": psnr(eval_images, reconstruct_uint8(model, eval_images))}

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = Autoencoder(ae_config)
    result = train(model, train_set, AutoencoderObjective(loss), config, out,
                   on_eval=evaluate, show_progress=show_progress, resume=resume,
                   stop_after=stop_after)
    final = (result.ema if result.ema is not None else model).eval()
    scaling_factor = measure_scaling_factor(final, spread_subset(train_set.images,
                                                                 SCALING_IMAGES))
    final.with_scaling_factor(scaling_factor)
    if final.latent_prior is not None:
        fit_latent_prior(final, train_set.images, seed=config.seed)
    everything = torch.cat([train_set.images, val_images]) if len(val_folder) else \
        train_set.images
    everything = spread_subset(everything, FD_IMAGES)
    extractor = fd_extractor(fd_clip)
    train_eval = spread_subset(train_set.images, EVAL_IMAGES)
    final_eval = {"psnr_val": psnr(val_images, reconstruct_uint8(final, val_images)),
                  "psnr_train": psnr(train_eval, reconstruct_uint8(final, train_eval)),
                  extractor.distance_name: reconstruction_fd(
                      everything, reconstruct_uint8(final, everything), extractor),
                  "fd_images": len(everything), "scaling_factor": scaling_factor}
    folder_config = model_config(final.config, train=to_dict(config),
                                 loss=dataclasses.asdict(loss), preset=preset,
                                 steps=result.step, data=Path(data).name, eval=final_eval)
    card = _card(preset, final.config, config, result.step, Path(data).name, final_eval,
                 loss)
    model_dir = write_model_folder(out / "model", final.state_dict(), folder_config, card)
    return FamilyRunResult(model_dir, result.step, result.stopped, final_eval,
                                time.perf_counter() - started)


def _card(preset: str, config, train_config: TrainConfig, steps: int, data_name: str,
          final_eval: dict, loss: AutoencoderLoss) -> str:
    latent = config.image_size // config.downsample_factor
    command = (f"imagesynth train autoencoder --data {data_name} --preset {preset} "
               f"--steps {train_config.max_steps} --batch-size {train_config.batch_size} "
               f"--lr {train_config.learning_rate:g} --precision {train_config.precision} "
               f"--seed {train_config.seed} --reconstruction {loss.reconstruction} "
               f"--kl-weight {loss.kl_weight:g}")
    if config.architecture == "vector":
        design = (f"Vector VAE (one latent vector per image), preset `{preset}`: "
                  f"{config.image_size} px RGB <-> {config.latent_channels}-d latents")
    else:
        design = (f"KL autoencoder (diffusers `AutoencoderKL`), preset `{preset}`: "
                  f"{config.image_size} px RGB <-> {latent}x{latent}x{config.latent_channels} "
                  f"latents (downsample factor {config.downsample_factor})")
    return (f"# Autoencoder trained on {data_name}\n\n"
            f"{design}, {steps} of {train_config.max_steps} steps.\n\n"
            f"Reproduce (rerun the same command to resume):\n\n    {command}\n\n"
            f"Scaling factor (1/std of training latents): {config.scaling_factor:.5f}\n\n"
            f"Reconstruction metrics (EMA weights): `{json.dumps(final_eval)}`\n\n"
            "FD_pixels8x8 is a Fréchet distance on 8x8-pooled raw pixels, not FID.\n")


# The VAE family: a trained vector VAE as a generator. Two priors: the Gaussian mixture fitted
# to the training encodings after training (ex-post density estimation, Ghosh et al. 2020; what
# `train_autoencoder` stores), and the N(0, I) the KL term pulls toward.

FAMILY = "vae"
PRIORS = ("mixture", "normal")


class VAEModel:
    """A vector VAE behind the family interface: prior samples, encode, decode."""

    family = FAMILY
    has_latent = True

    def __init__(self, autoencoder):
        if autoencoder.latent_prior is None:
            raise ModelNotFoundError("this autoencoder has a latent grid, not a vector latent "
                                     "with a prior", field="model",
                                     fix="use a vector VAE (e.g. shapes-v32) as a generator")
        self.autoencoder = autoencoder
        self.image_size = autoencoder.image_size
        self.latent_dim = autoencoder.latent_channels

    def latent(self, n: int, generators: Sequence[torch.Generator], prior: str = "mixture",
               temperature: float = 1.0) -> torch.Tensor:
        """Scaled latents [n, D, 1, 1], latent i drawn with generators[i] alone."""
        check_prior(prior)
        check_temperature(temperature)
        if len(generators) != n:
            raise ConfigError(f"{len(generators)} generators for {n} samples", field="generators")
        if prior == "mixture":
            rows = [self.autoencoder.latent_prior.sample(1, g) for g in generators]
            z = torch.cat(rows) if rows else torch.empty(0, self.latent_dim, 1, 1)
            if temperature != 1.0:  # shrink each draw toward its mixture's weighted mean
                centre = (self.autoencoder.latent_prior.weights[:, None]
                          * self.autoencoder.latent_prior.means).sum(0)[None, :, None, None]
                z = centre + temperature * (z - centre)
            return z
        return torch.stack([torch.randn(self.latent_dim, 1, 1, generator=g) for g in generators]
                           ) * temperature

    @torch.no_grad()
    def sample(self, n: int, generators: Sequence[torch.Generator], condition=None,
               prior: str = "mixture", temperature: float = 1.0) -> torch.Tensor:
        """`n` images [n, 3, S, S] in [-1, 1] decoded from prior draws (unconditional)."""
        if condition is not None:
            raise ConfigError("the VAE generator is unconditional", field="prompt",
                              fix="leave out the prompt for a VAE model")
        return self.decode(self.latent(n, generators, prior, temperature))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [-1, 1] -> scaled posterior means [B, D, 1, 1]."""
        return self.autoencoder.encode(images)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, D, 1, 1] (or [B, D]) -> images in [-1, 1]."""
        if latent.ndim == 2:
            latent = latent[:, :, None, None]
        return self.autoencoder.decode(latent)


def check_prior(prior: str) -> None:
    """The prior must be one of PRIORS."""
    if prior not in PRIORS:
        raise ConfigError(f"unknown prior {prior!r}", field="prior",
                          fix=f"choose one of {', '.join(PRIORS)}")


def check_temperature(temperature: float) -> None:
    """Sampling temperature must be > 0 (and finite)."""
    if not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ConfigError(f"must be > 0, got {temperature!r}", field="temperature",
                          fix="1 samples the model as trained; below 1 trades variety for "
                              "typical samples")


def load_vae(spec: str, device: str | torch.device = "cpu") -> VAEModel:
    """A vector VAE model folder or name as a generator."""
    from ..nets.autoencoder import load_autoencoder

    return VAEModel(load_autoencoder(spec, device=device))
