"""The autoregressive family: an image patch is a word (DALL-E, Ramesh et al. 2021).

Two stages, both on the shared loop:
1. a VQ tokenizer (`imagesynth.nets.vq`) turns each f x f patch into one of K codes, trained on
   L = ||x - D(z_q)||^2 + beta ||z_e - sg(e)||^2 (VQ-VAE eq. 3, its codebook term replaced by
   EMA updates); it reports val PSNR, codebook usage and perplexity, then is frozen;
2. the data set is encoded to token grids once, and a decoder-only transformer
   (`imagesynth.nets.ar_transformer`) learns p(t_j | caption, t_<j) by cross-entropy, with 10 %
   of captions replaced by the empty caption "", so one network gives both p(t | c) and p(t)
   for classifier-free guidance on logits: l = l_u + s (l_c - l_u).
Sampling draws the grid in raster order with a KV cache (temperature, top-k, top-p), each
sample's tokens from its own generator, and decodes it. `condition` is a prompt or list of
prompts (encoded with the model's text encoder, MiniLM), a precomputed `TextEncoding`, or a
tensor of token states [n, T, 384] (padding = all-zero rows, as MiniLM pads); None means the
empty caption, whose states the model folder stores. The latent of `encode`/`decode` is the
token grid [B, h, w] (int64 code indices).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import from_dict, to_dict
from ..data.folder import CaptionedImageFolder
from ..train.datasets import (CaptionedTrainingSet, caption_choice_table, caption_options,
                              encode_caption_table)
from ..errors import ConfigError, InputImageError
from ..io.checkpoint import load_weights, read_config, save_weights
from ..io.files import sha256_file
from ..nets.ar_transformer import ARTransformer, draw_tokens, pad_condition
from ..train.datasets import ImageTensorSet, spread_subset, to_signed, to_uint8
from ..metrics.psnr import psnr
from ..nets.vq import VQTokenizer
from ..paths import cache_dir
from ..registry import Registry, write_model_folder
from ..train import FamilyRunResult, TrainConfig, train
from ..train.loop import _resume_relevant
from .common import load_family_model, training_folder

FAMILY = "ar"
#: at most this many images enter each periodic evaluation
EVAL_IMAGES = 512


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture and loss weights of the VQ tokenizer; stored in config.json."""

    image_size: int = 32
    image_channels: int = 3
    #: encoder widths, full resolution first; each later entry halves the side (f = 2^(n-1))
    channels: tuple[int, ...] = (32, 64, 128)
    #: K, the vocabulary of image words, and D, the code vectors' length
    num_codes: int = 256
    code_dim: int = 32
    #: beta of VQ-VAE eq. 3 (their value)
    commitment_weight: float = 0.25
    #: gamma of the codebook's EMA (VQ-VAE app. A.1: 0.99)
    codebook_decay: float = 0.99
    #: training steps a code may go unpicked before it is restarted from an encoder output
    dead_after: int = 50
    #: random horizontal flips (the tokenizer never sees captions, so "left" cannot break)
    flip: bool = True

    def __post_init__(self):
        for name in ("image_channels", "num_codes", "code_dim", "dead_after"):
            if getattr(self, name) < 1:
                raise ConfigError("must be at least 1", field=name)
        if not self.channels or min(self.channels) < 1:
            raise ConfigError("needs at least one positive width", field="channels")
        if self.image_size < 1 or self.image_size % self.downsample_factor:
            raise ConfigError(f"must be a positive multiple of the downsample factor "
                              f"{self.downsample_factor}", field="image_size")
        if not self.commitment_weight >= 0:
            raise ConfigError("must be non-negative", field="commitment_weight")
        if not 0.0 <= self.codebook_decay < 1.0:
            raise ConfigError("must be in [0, 1)", field="codebook_decay")

    @property
    def downsample_factor(self) -> int:
        """f: image side / token-grid side."""
        return 2 ** (len(self.channels) - 1)

    @property
    def tokens_per_side(self) -> int:
        """h = w = image_size / f."""
        return self.image_size // self.downsample_factor


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture and conditioning of the token transformer; stored in config.json."""

    width: int = 256
    depth: int = 6
    heads: int = 8
    dropout: float = 0.0
    text_encoder: str = "minilm"
    #: width of the text encoder's token states (set from the encoder at training time)
    text_dim: int = 384
    #: caption tokens kept (longer prompts are cut); ShapesWorld captions take <= 12
    max_text_tokens: int = 32
    #: fraction of training captions replaced by "" (the unconditional branch for CFG)
    condition_dropout: float = 0.1

    def __post_init__(self):
        for name in ("width", "depth", "heads", "text_dim", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError("must be at least 1", field=name)
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by {self.heads} heads",
                              field="heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("must be in [0, 1)", field="dropout")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ConfigError("must be in [0, 1)", field="condition_dropout")


#: `tiny` is for tests (16 px -> 4x4 tokens, trains in seconds); `shapes` is 32 px ShapesWorld
PRESETS: dict[str, tuple[TokenizerConfig, TransformerConfig]] = {
    "tiny": (TokenizerConfig(image_size=16, channels=(16, 32, 32), num_codes=32, code_dim=8,
                             dead_after=10),
             TransformerConfig(width=32, depth=2, heads=2, max_text_tokens=16)),
    # sized for CPU: ~300 tokenizer and ~300 transformer training images/s on one core
    "shapes": (TokenizerConfig(image_size=32, channels=(16, 32, 64), num_codes=256,
                               code_dim=32),
               TransformerConfig(width=128, depth=4, heads=4, max_text_tokens=16)),
}
#: loop settings per preset and stage. The tokenizer trains without a weight EMA: its codebook
#: is fitted to the live encoder's outputs, which averaged encoder weights would not produce.
TOKENIZER_LOOP_PRESETS: dict[str, dict] = {
    "tiny": dict(batch_size=16, learning_rate=3e-3, warmup_steps=5, max_steps=80,
                 eval_every=40, ema_decay=None, checkpoint_every=80),
    "shapes": dict(batch_size=64, learning_rate=1e-3, warmup_steps=100, max_steps=4000,
                   eval_every=500, ema_decay=None, checkpoint_every=250),
}
LOOP_PRESETS: dict[str, dict] = {
    "tiny": dict(batch_size=16, learning_rate=3e-3, warmup_steps=5, max_steps=60,
                 eval_every=30, ema_decay=0.9, checkpoint_every=60),
    "shapes": dict(batch_size=64, learning_rate=1e-3, warmup_steps=200, max_steps=20000,
                   eval_every=500, ema_decay=0.999, checkpoint_every=250),
}
#: fewer training images than this and the preset memorises rather than models the data
MIN_IMAGES: dict[str, int] = {"tiny": 32, "shapes": 1000}


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ConfigError(f"unknown ar preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(PRESETS)}")


def tokenizer_config(preset: str, **overrides) -> TokenizerConfig:
    """The named preset's tokenizer config, with fields replaced by `overrides`."""
    _check_preset(preset)
    return dataclasses.replace(PRESETS[preset][0], **overrides)


def ar_config(preset: str, **overrides) -> TransformerConfig:
    """The named preset's transformer config, with fields replaced by `overrides`."""
    _check_preset(preset)
    return dataclasses.replace(PRESETS[preset][1], **overrides)


def build_tokenizer(config: TokenizerConfig) -> VQTokenizer:
    """The VQ tokenizer network of `config`."""
    return VQTokenizer(config.image_channels, config.channels, config.num_codes,
                       config.code_dim, config.codebook_decay, config.dead_after)


def build_transformer(config: TransformerConfig, tokenizer: TokenizerConfig) -> ARTransformer:
    """The token transformer of `config` over `tokenizer`'s vocabulary and grid."""
    return ARTransformer(tokenizer.num_codes, tokenizer.tokens_per_side ** 2, config.width,
                         config.depth, config.heads, config.text_dim, config.max_text_tokens,
                         config.dropout)


def _jsonable(config) -> dict:
    """A config as config.json holds it (tuples become lists), for comparisons."""
    return json.loads(json.dumps(to_dict(config)))


def check_sampling(n: int, generators: Sequence, temperature: float, top_k: int | None,
                   top_p: float | None, guidance_scale: float) -> None:
    """Refuse bad sampling settings with one-line errors naming the field."""
    if n < 1:
        raise ConfigError(f"must be at least 1, got {n}", field="n")
    if len(generators) != n:
        raise ConfigError(f"expected one generator per image ({n}), got {len(generators)}",
                          field="generator", fix="pass generators_from_seeds(seeds)")
    if not temperature > 0:  # also refuses NaN
        raise ConfigError(f"must be positive, got {temperature}", field="temperature",
                          fix="use a temperature in (0, 1]; lower is more conservative")
    if top_k is not None and not top_k >= 1:
        raise ConfigError(f"must be at least 1, got {top_k}", field="top_k",
                          fix="use None for no top-k cut")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"must lie in (0, 1], got {top_p}", field="top_p",
                          fix="use None (or 1.0) for no nucleus cut")
    if not guidance_scale >= 0:
        raise ConfigError(f"must be non-negative, got {guidance_scale}", field="guidance",
                          fix="use 1.0 for plain conditional sampling, 2-5 for stronger")


class ARModel(nn.Module):
    """Tokenizer + token transformer behind the family interface."""

    family = FAMILY
    has_latent = True

    def __init__(self, tokenizer_config: TokenizerConfig, config: TransformerConfig,
                 text_encoder=None):
        super().__init__()
        self.tokenizer_config, self.config = tokenizer_config, config
        self.tokenizer = build_tokenizer(tokenizer_config)
        self.transformer = build_transformer(config, tokenizer_config)
        # The empty caption's token states: the unconditional branch exactly as trained, kept
        # with the weights so unconditional and guided sampling need no text encoder.
        self.register_buffer("empty_states", torch.zeros(1, config.max_text_tokens,
                                                         config.text_dim))
        self.register_buffer("empty_mask", torch.ones(1, config.max_text_tokens,
                                                      dtype=torch.bool))
        self.text_encoder = text_encoder  # loaded on first use with prompts

    @property
    def image_size(self) -> int:
        """The side length of the images it makes."""
        return self.tokenizer_config.image_size

    @property
    def tokens_per_side(self) -> int:
        """Side of the token grid (the latent)."""
        return self.tokenizer_config.tokens_per_side

    def set_empty_caption(self, states: torch.Tensor, mask: torch.Tensor) -> None:
        """Store the text encoder's encoding of "" ([1, T, D], [1, T]) as the uncond branch."""
        states, mask = pad_condition((states[:, :self.config.max_text_tokens],
                             mask[:, :self.config.max_text_tokens]), self.config.max_text_tokens)
        self.empty_states.copy_(states)
        self.empty_mask.copy_(mask)

    def unconditional(self, n: int):
        """The empty caption for `n` samples, trimmed to its real tokens."""
        length = max(1, int(self.empty_mask.sum()))
        return (self.empty_states[:, :length].expand(n, -1, -1),
                self.empty_mask[:, :length].expand(n, -1))

    def condition_for(self, condition, n: int):
        """(states [n, T, D], mask [n, T]) on the model's device (module docstring)."""
        device = self.empty_states.device
        if condition is None:
            return self.unconditional(n)
        if isinstance(condition, str) or (isinstance(condition, (list, tuple)) and condition
                                          and all(isinstance(c, str) for c in condition)):
            prompts = [condition] if isinstance(condition, str) else list(condition)
            if self.text_encoder is None:
                from ..text import load_text_encoder
                self.text_encoder = load_text_encoder(self.config.text_encoder)
            encoding = self.text_encoder(prompts)
            states, mask = encoding.states, encoding.mask
        elif torch.is_tensor(condition):
            states = condition
            mask = condition.abs().sum(-1) > 0 if condition.ndim == 3 else None
        elif hasattr(condition, "states") and hasattr(condition, "mask"):
            states, mask = condition.states, condition.mask
        else:
            raise ConfigError(f"unsupported condition {type(condition).__name__}",
                              field="condition", fix="pass prompts, a TextEncoding or states")
        if states.ndim != 3 or states.shape[-1] != self.config.text_dim or \
                states.shape[0] not in (1, n):
            raise ConfigError(f"expected token states [1 or {n}, T, {self.config.text_dim}], "
                              f"got {tuple(states.shape)}", field="condition",
                              fix="one prompt, or one per image")
        states = states[:, :self.config.max_text_tokens].to(device, torch.float32)
        mask = mask[:, :self.config.max_text_tokens].to(device).bool()
        return states.expand(n, -1, -1), mask.expand(n, -1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [-1, 1] -> token grid [B, h, w] (int64), deterministically."""
        expected = (self.tokenizer_config.image_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise InputImageError(f"expected images of shape [B, {expected[0]}, {expected[1]}, "
                                  f"{expected[2]}], got {tuple(images.shape)}", field="images",
                                  fix=f"resize to {self.image_size} px, values in [-1, 1]")
        return self.tokenizer.encode(images)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Token grid [B, h, w] (or flat [B, h*w]) -> images [B, 3, S, S] in [-1, 1]."""
        side = self.tokens_per_side
        if latent.dtype.is_floating_point or latent.ndim not in (2, 3) or \
                latent[0].numel() != side * side:
            raise InputImageError(f"expected integer token grids [B, {side}, {side}], got "
                                  f"{latent.dtype} {tuple(latent.shape)}", field="latents",
                                  fix="pass tokens produced by encode() or sample_tokens()")
        if len(latent) and (latent.min() < 0 or latent.max() >= self.tokenizer.num_codes):
            raise InputImageError(f"token ids must lie in [0, {self.tokenizer.num_codes})",
                                  field="latents")
        codes = latent.reshape(len(latent), side, side).long().to(self.empty_states.device)
        return self.tokenizer.decode(codes).clamp(-1, 1)

    @torch.no_grad()
    def sample_tokens(self, n: int, generators: Sequence[torch.Generator], condition=None,
                      temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, guidance_scale: float = 1.0,
                      use_cache: bool = True) -> torch.Tensor:
        """Token grids [n, h*w]; the uncond branch runs only when guidance_scale != 1."""
        check_sampling(n, generators, temperature, top_k, top_p, guidance_scale)
        cond = self.condition_for(condition, n)
        uncond = None if guidance_scale == 1.0 else self.unconditional(n)
        return draw_tokens(self.transformer, cond, list(generators), uncond=uncond,
                           guidance_scale=guidance_scale, temperature=temperature,
                           top_k=top_k, top_p=top_p, use_cache=use_cache)

    @torch.no_grad()
    def sample(self, n: int, generators: Sequence[torch.Generator], condition=None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               guidance_scale: float = 1.0) -> torch.Tensor:
        """`n` images [n, 3, S, S] in [-1, 1]; image i depends only on generators[i]."""
        return self.decode(self.sample_tokens(n, generators, condition, temperature, top_k,
                                              top_p, guidance_scale))


class TokenizerObjective:
    """Reconstruction MSE + beta * commitment; flips and code restarts from the step generator."""

    def __init__(self, config: TokenizerConfig):
        self.config = config

    def __call__(self, model: VQTokenizer, batch: torch.Tensor, generator: torch.Generator):
        x = to_signed(batch)  # [B, 3, H, W]
        if self.config.flip:
            flip = torch.rand(len(x), generator=generator, device=generator.device) < 0.5
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        x_hat, quantized = model(x, generator)
        reconstruction = F.mse_loss(x_hat.float(), x)
        loss = reconstruction + self.config.commitment_weight * quantized.commitment
        return loss, {"reconstruction": reconstruction.item(),
                      "commitment": quantized.commitment.item(),
                      "perplexity": quantized.perplexity.item(),
                      "restarted": float(quantized.restarted)}


class TransformerObjective:
    """Cross-entropy of every image token given a random caption (10 % dropped to "")."""

    def __init__(self, text, condition_dropout: float):
        self.text, self.condition_dropout = text, condition_dropout

    def __call__(self, model: ARTransformer, batch, generator: torch.Generator):
        tokens, choices = batch  # [B, N] long, [B, K] caption rows (-1 pads)
        device = tokens.device
        counts = (choices >= 0).sum(dim=1)
        pick = (torch.rand(len(choices), generator=generator, device=device) * counts).long()
        rows = choices.gather(1, pick[:, None]).squeeze(1)
        dropped = torch.rand(len(rows), generator=generator, device=device) < \
            self.condition_dropout
        rows = torch.where(dropped, torch.full_like(rows, self.text.empty), rows).cpu()
        cond = (self.text.states[rows].to(device), self.text.mask[rows].to(device))
        logits = model(tokens[:, :-1], cond)  # [B, N, V]: row j predicts token j
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        return loss, {"dropped": dropped.float().mean().item()}


@torch.no_grad()
def encode_tokens(tokenizer: VQTokenizer, images_u8: torch.Tensor,
                  batch_size: int = 256) -> torch.Tensor:
    """uint8 images [N, 3, S, S] -> flat token grids [N, h*w] (int64, on CPU)."""
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    return torch.cat([tokenizer.encode(to_signed(images_u8[i:i + batch_size].to(device)))
                      .flatten(1).cpu() for i in range(0, len(images_u8), batch_size)])


def code_statistics(tokens: torch.Tensor, num_codes: int) -> dict[str, float]:
    """Codebook usage (fraction of codes used) and perplexity exp(H) of the code histogram."""
    histogram = torch.bincount(tokens.flatten(), minlength=num_codes).double()
    p = histogram / histogram.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codebook_usage": float((histogram > 0).double().mean()),
            "perplexity": float(entropy.exp())}


@torch.no_grad()
def tokenizer_metrics(tokenizer: VQTokenizer, images_u8: torch.Tensor,
                      batch_size: int = 256) -> dict[str, float]:
    """PSNR of decode(encode(x)) on uint8 images, with the codes' usage and perplexity."""
    tokens = encode_tokens(tokenizer, images_u8, batch_size)
    side = images_u8.shape[-1] // tokenizer.downsample_factor
    device = next(tokenizer.parameters()).device
    recon = torch.cat([to_uint8(tokenizer.decode(tokens[i:i + batch_size].view(-1, side, side)
                                                 .to(device))).cpu()
                       for i in range(0, len(tokens), batch_size)])
    return {"psnr": psnr(images_u8, recon), **code_statistics(tokens, tokenizer.num_codes)}


@torch.no_grad()
def token_loss(transformer: ARTransformer, tokens: torch.Tensor, cond_rows: torch.Tensor, text,
               batch_size: int = 256) -> float:
    """Mean cross-entropy (nats per token) of token grids [N, h*w] under their captions."""
    transformer.eval()
    device = next(transformer.parameters()).device
    total = 0.0
    for i in range(0, len(tokens), batch_size):
        batch, rows = tokens[i:i + batch_size].to(device), cond_rows[i:i + batch_size]
        logits = transformer(batch[:, :-1], (text.states[rows].to(device),
                                             text.mask[rows].to(device)))
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.reshape(-1),
                                 reduction="sum").item()
    return total / tokens.numel()


def _train_tokenizer(config: TokenizerConfig, loop: TrainConfig, train_set: ImageTensorSet,
                     val_images: torch.Tensor, run_dir: Path, show_progress: bool,
                     resume: bool):
    """Stage 1: train, or load once frozen; returns (tokenizer, eval, stopped, steps)."""
    model_dir = run_dir / "model"
    if (model_dir / "config.json").is_file():  # frozen: stage 2's tokens depend on it
        saved = json.loads((model_dir / "config.json").read_text())
        if saved["tokenizer"] != _jsonable(config) or \
                _resume_relevant(saved["train"]) != _resume_relevant(_jsonable(loop)):
            raise ConfigError(f"{run_dir} holds a tokenizer with different settings",
                              field="run_dir", fix="use a new --out folder, or the same settings")
        tokenizer = build_tokenizer(config)
        registry = Registry()
        tokenizer.load_state_dict(registry.load_state_dict(registry.get(str(model_dir))))
        return tokenizer.eval(), saved["eval"], "finished", saved["steps"]
    eval_images = spread_subset(val_images, EVAL_IMAGES)

    def evaluate(step: int, model: VQTokenizer) -> dict[str, float]:
        return {f"{k}_val": v for k, v in tokenizer_metrics(model, eval_images).items()}

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(loop.seed)
        tokenizer = build_tokenizer(config)
    result = train(tokenizer, train_set, TokenizerObjective(config), loop, run_dir,
                   on_eval=evaluate, show_progress=show_progress, resume=resume)
    tokenizer.eval()
    if result.stopped == "interrupted":
        return tokenizer, dict(result.last_metrics), result.stopped, result.step
    # A finished stage and one that ran out of its time budget both freeze the tokenizer here.
    final = {f"{k}_val": v for k, v in tokenizer_metrics(tokenizer, val_images).items()}
    final.update({f"{k}_train": v for k, v in code_statistics(
        encode_tokens(tokenizer, train_set.images), config.num_codes).items()})
    write_model_folder(model_dir, tokenizer.state_dict(),
                       {"family": "vq", "tokenizer": to_dict(config), "train": to_dict(loop),
                        "steps": result.step, "eval": final},
                       f"# VQ tokenizer\n\nStage 1 of an `ar` model; metrics: `{json.dumps(final)}`\n")
    return tokenizer, final, result.stopped, result.step


def _main_caption_rows(items, index: dict[str, int]) -> torch.Tensor:
    """[N] row of each item's main caption in the text table."""
    return torch.tensor([index[item.caption] for item in items], dtype=torch.long)


def _cached_tokens(tokenizer: VQTokenizer, tokenizer_hash: str, images_u8: torch.Tensor,
                   path: Path) -> torch.Tensor:
    """Encode the images once per (tokenizer, data) and keep the grids in the run folder."""
    if path.is_file() and (read_config(path) or {}).get("tokenizer") == tokenizer_hash:
        tokens = load_weights(path)["tokens"]
        if len(tokens) == len(images_u8):
            return tokens
    tokens = encode_tokens(tokenizer, images_u8)
    save_weights(path, {"tokens": tokens.contiguous()}, config={"tokenizer": tokenizer_hash})
    return tokens


def train_ar(data: str | Path, out: str | Path, preset: str = "shapes",
             overrides: dict | None = None, tokenizer_overrides: dict | None = None,
             ar_overrides: dict | None = None, vq_overrides: dict | None = None,
             text_encoder=None, show_progress: bool = True, resume: bool = True,
             stop_after: int | None = None) -> FamilyRunResult:
    """Train tokenizer then transformer on a captioned folder into `out`; write `out/model/`.

    `overrides`/`tokenizer_overrides` replace loop settings (TrainConfig) of the transformer /
    tokenizer stage, `ar_overrides`/`vq_overrides` their architectures. Stage 1 runs in
    `out/tokenizer/` and is frozen once it finishes or spends its `max_minutes`; if it is
    interrupted the result points at that run folder (rerun to resume). `stop_after` applies
    to the transformer stage. `text_encoder` reuses a loaded encoder named like the config's.
    """
    _check_preset(preset)
    vq = tokenizer_config(preset, **(vq_overrides or {}))
    transformer_config = ar_config(preset, **(ar_overrides or {}))
    tokenizer_loop = from_dict(TrainConfig, {**TOKENIZER_LOOP_PRESETS[preset],
                                             **(tokenizer_overrides or {})})
    loop = from_dict(TrainConfig, {**LOOP_PRESETS[preset], **(overrides or {})})
    started, out = time.perf_counter(), Path(out)
    train_folder = training_folder(data, vq.image_size, preset, MIN_IMAGES[preset])
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already holds a run", field="run_dir",
                          fix="choose a new output folder, or resume this run")
    train_set = ImageTensorSet(train_folder)
    val_folder = CaptionedImageFolder(data, resolution=vq.image_size, split="val")
    val_items = val_folder if len(val_folder) else train_folder  # tiny folders may lack a val split
    val_images = ImageTensorSet(val_items).images

    # Stage 1: the tokenizer.
    tokenizer, tokenizer_eval, stopped, tokenizer_steps = _train_tokenizer(
        vq, tokenizer_loop, train_set, val_images, out / "tokenizer", show_progress, resume)
    if stopped == "interrupted":
        return FamilyRunResult(out / "tokenizer", tokenizer_steps, stopped,
                               {"stage": "tokenizer", **tokenizer_eval},
                               time.perf_counter() - started)
    tokenizer_hash = sha256_file(out / "tokenizer" / "model" / "model.safetensors")
    train_tokens = _cached_tokens(tokenizer, tokenizer_hash, train_set.images,
                                  out / "tokens-train.safetensors")
    val_tokens = _cached_tokens(tokenizer, tokenizer_hash, val_images,
                                out / "tokens-val.safetensors")

    # Stage 2: the transformer on (caption, token grid) pairs.
    from ..text import CachedTextEncoder, load_text_encoder

    encoder = CachedTextEncoder(text_encoder or load_text_encoder(transformer_config.text_encoder),
                                db_path=cache_dir("text") / "embeddings.sqlite")
    transformer_config = dataclasses.replace(transformer_config, text_dim=encoder.state_dim)
    captions = sorted({c for folder in (train_folder, val_items) for item in folder.items
                       for c in caption_options(item)})
    text = encode_caption_table(encoder, captions)
    keep = min(text.states.shape[1], transformer_config.max_text_tokens)
    text = dataclasses.replace(text, states=text.states[:, :keep], mask=text.mask[:, :keep])
    choices = caption_choice_table(train_folder.items, text.index)
    val_rows = _main_caption_rows(val_items.items, text.index)
    eval_pick = spread_subset(torch.arange(len(val_tokens)), EVAL_IMAGES)

    def evaluate(step: int, model: ARTransformer) -> dict[str, float]:
        return {"val_loss": token_loss(model, val_tokens[eval_pick], val_rows[eval_pick], text)}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(loop.seed)
        transformer = build_transformer(transformer_config, vq)
    result = train(transformer, CaptionedTrainingSet(train_tokens, choices),
                   TransformerObjective(text, transformer_config.condition_dropout), loop,
                   out / "transformer", on_eval=evaluate, show_progress=show_progress,
                   resume=resume, stop_after=stop_after)
    final = (result.ema if result.ema is not None else transformer).eval()
    model = ARModel(vq, transformer_config, text_encoder=encoder)
    model.tokenizer.load_state_dict(tokenizer.state_dict())
    model.transformer.load_state_dict(final.state_dict())
    model.set_empty_caption(text.states[text.empty:text.empty + 1],
                            text.mask[text.empty:text.empty + 1])
    model.to(next(final.parameters()).device).eval()
    train_pick = spread_subset(torch.arange(len(train_tokens)), EVAL_IMAGES)
    train_rows = _main_caption_rows([train_folder.items[i] for i in train_pick.tolist()],
                                    text.index)
    final_eval = {**tokenizer_eval,
                  "val_loss": token_loss(final, val_tokens, val_rows, text),
                  "train_loss": token_loss(final, train_tokens[train_pick], train_rows, text),
                  "val_images": len(val_tokens)}
    parameters = {"tokenizer": sum(p.numel() for p in model.tokenizer.parameters()),
                  "transformer": sum(p.numel() for p in model.transformer.parameters())}
    folder_config = {"family": FAMILY, "tokenizer": to_dict(vq),
                     "transformer": to_dict(transformer_config), "preset": preset,
                     "train": to_dict(loop), "tokenizer_train": to_dict(tokenizer_loop),
                     "steps": result.step, "tokenizer_steps": tokenizer_steps,
                     "parameters": parameters, "data": Path(data).name, "eval": final_eval}
    card = _card(preset, vq, transformer_config, loop, tokenizer_loop, result.step,
                 tokenizer_steps, Path(data).name, final_eval, parameters)
    model_dir = write_model_folder(out / "model", model.state_dict(), folder_config, card)
    return FamilyRunResult(model_dir, result.step, result.stopped, final_eval,
                           time.perf_counter() - started)


def load_ar(spec: str | Path, device: str | torch.device = "cpu",
            text_encoder=None) -> ARModel:
    """Load an ar model by registry name or model-folder path (hash-verified), in eval mode."""
    return load_family_model(spec, FAMILY, "an ar", lambda config: ARModel(
        from_dict(TokenizerConfig, config["tokenizer"]),
        from_dict(TransformerConfig, config["transformer"]), text_encoder), device)


def _card(preset: str, vq: TokenizerConfig, transformer: TransformerConfig, loop: TrainConfig,
          tokenizer_loop: TrainConfig, steps: int, tokenizer_steps: int, data_name: str,
          final_eval: dict, parameters: dict) -> str:
    def settings(config: TrainConfig) -> dict:
        return {"max_steps": config.max_steps, "batch_size": config.batch_size,
                "learning_rate": config.learning_rate, "seed": config.seed}

    command = (f"python -c \"from imagesynth.families.ar import train_ar; "
               f"train_ar('{data_name}', 'OUT', preset='{preset}', "
               f"overrides={settings(loop)}, tokenizer_overrides={settings(tokenizer_loop)})\"")
    grid = vq.tokens_per_side
    return (f"# Autoregressive image-token model trained on {data_name}\n\n"
            f"DALL-E-style two-stage model, preset `{preset}`, {vq.image_size} px. Tokenizer: "
            f"VQ-VAE with an EMA codebook of {vq.num_codes} x {vq.code_dim}, {grid}x{grid} tokens "
            f"per image, {parameters['tokenizer']:,} parameters, {tokenizer_steps} steps. "
            f"Transformer: {transformer.depth} pre-LN blocks of width {transformer.width}, "
            f"caption prefix from `{transformer.text_encoder}` token states, "
            f"{parameters['transformer']:,} parameters, {steps} of {loop.max_steps} steps, "
            f"{transformer.condition_dropout:.0%} condition dropout (CFG).\n\n"
            f"Reproduce (rerun the same command to resume):\n\n    {command}\n\n"
            f"Tokenizer PSNR / codebook usage and the transformer's cross-entropy "
            f"(nats per token, EMA weights): `{json.dumps(final_eval)}`\n")
