"""The one CLIP-guided optimisation loop: drawer -> cutouts -> scorer -> loss -> gradient step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import __version__
from ..config import from_dict, to_dict
from ..errors import ConfigError, IntegrityError, NumericError
from ..io.files import sha256_file
from ..io.images import open_image, parse_colour
from ..io.pngmeta import save_png
from ..scorers import Scorer
from .cutouts import CutoutConfig, augmented_cutouts
from .diffusion_drawer import (DEFAULT_STEPS, check_options, conditioning_texts,
                               missing_model_error, no_init_image_error)
from .drawers import DRAWERS, Decoder, build_drawer, clamp_with_grad
from .gan_drawer import (check_gan_options, gan_hash, load_gan_model, missing_gan_error,
                         prompt_condition)
from .losses import (directional_loss, prompt_loss, range_loss, saturation_loss,
                     spherical_distance_loss, total_variation_loss)
from .prompts import WeightedPrompt, normalised_weights, parse_prompts

#: learning rates that work for each drawer's parametrisation at the default settings
DEFAULT_LEARNING_RATES = {"pixels": 0.1, "fourier": 0.05, "pixelart": 0.1, "decoder": 0.05,
                          "diffusion-latent": 0.05, "gan": 0.05}
MAX_SIDE = 2048
#: learning-rate schedules: constant, or cosine decay to zero over the steps (StyleCLIP's ramp-down)
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class DreamConfig:
    """Everything that determines a CLIP-guided image (stored in the PNG, replayed by `reproduce`)."""

    prompt: str
    drawer: str = "pixels"
    steps: int = 300
    width: int = 64
    height: int = 64
    cutouts: int = 32
    cut_power: float = 1.0
    cutout_noise: float = 0.05
    cutout_jitter: float = 0.0  # random zoom/shift of each cutout (0 = off)
    flip: bool = True
    learning_rate: float | None = None  # None: the drawer's default
    lr_schedule: str = "constant"  # or "cosine": decay to zero by the last step
    seed: int = 0
    init_image: str | None = None
    init_colour: str | None = None  # start from a plain canvas of this colour ("white", "#rrggbb")
    init_noise: float = 0.0  # std of seeded noise added to the drawer's parameters after init
    init_candidates: int = 1  # random starts to draw; the one scorer A likes best is optimised
    image_prompts: tuple[str, ...] = ()
    style: str | None = None
    edit_to: str | None = None  # edit the init image toward this text (directional CLIP loss)
    content_weight: float = 0.5  # editing: keep the init image's embedding
    tv_weight: float = 0.0
    range_weight: float = 0.0
    saturation_weight: float = 0.0
    scorer: str = "shapes-clip"
    held_out_scorer: str | None = None
    cells: int = 8  # pixelart: cells along the short side
    palette: tuple[str, ...] = ()  # pixelart: hex colours such as "#ff0000"
    decoder: str | None = None  # decoder drawer: autoencoder name or folder
    diffusion_model: str | None = None  # diffusion-latent drawer: diffusion model name or folder
    diffusion_steps: int = DEFAULT_STEPS  # diffusion-latent: sampler steps per render
    diffusion_sampler: str = "dpmpp_2m"  # diffusion-latent: a deterministic sampler
    diffusion_guidance: float | None = None  # diffusion-latent: CFG scale (None: model default)
    gan: str | None = None  # gan drawer: GAN name or folder
    gan_latent: str = "w"  # gan drawer: "w", "w+" (one w per layer) or "z" (z + condition)
    gan_truncation: float = 1.0  # gan drawer: the start's psi toward the condition's mean w
    gan_start: str = "prompt"  # gan drawer: start conditioned on the prompt, or "random"
    eval_every: int = 25
    frame_every: int = 10

    def __post_init__(self):
        if self.drawer not in DRAWERS:
            raise ConfigError(f"unknown drawer {self.drawer!r}", field="drawer",
                              fix=f"choose one of {', '.join(DRAWERS)}")
        if self.steps < 1:
            raise ConfigError(f"must be >= 1, got {self.steps}", field="steps")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_SIDE:
                raise ConfigError(f"must be between 1 and {MAX_SIDE}, got {value}", field="size")
        if self.init_colour is not None:
            if self.init_image is not None:
                raise ConfigError("give either an init image or an init colour, not both",
                                  field="init_colour", fix="drop --init-colour or --init-image")
            colour_rgb(self.init_colour)
        if self.init_candidates < 1:
            raise ConfigError(f"must be >= 1, got {self.init_candidates}",
                              field="init_candidates")
        if self.init_candidates > 1 and (self.init_image or self.init_colour):
            raise ConfigError("candidates are random starts; an init image or colour fixes the "
                              "start", field="init_candidates",
                              fix="drop --init-candidates or the init image/colour")
        if not (math.isfinite(self.init_noise) and self.init_noise >= 0):
            raise ConfigError(f"must be >= 0, got {self.init_noise}", field="init_noise")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate)
                                                   and self.learning_rate > 0):
            raise ConfigError(f"must be > 0, got {self.learning_rate}", field="lr")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown schedule {self.lr_schedule!r}", field="lr_schedule",
                              fix=f"choose one of {', '.join(LR_SCHEDULES)}")
        for name in ("content_weight", "tv_weight", "range_weight", "saturation_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"must be >= 0, got {value}", field=name)
        if self.eval_every < 1 or self.frame_every < 1:
            raise ConfigError("must be >= 1", field="eval_every" if self.eval_every < 1
                              else "frame_every")
        if self.edit_to is not None and self.init_image is None:
            raise ConfigError("editing needs an image to edit", field="edit_to",
                              fix="pass --init-image FILE together with --edit-to")
        if self.drawer == "diffusion-latent" and (self.init_image or self.init_colour):
            raise no_init_image_error()
        check_options(self.diffusion_steps, self.diffusion_sampler, self.diffusion_guidance)
        check_gan_options(self.gan_latent, self.gan_truncation, self.gan_start)
        CutoutConfig(self.cutouts, self.cut_power, self.cutout_noise, self.flip,
                     self.cutout_jitter)  # validates

    @property
    def lr(self) -> float:
        """The learning rate in effect."""
        return self.learning_rate or DEFAULT_LEARNING_RATES[self.drawer]


@dataclass
class DreamResult:
    """The final image, its recipe and the score history (scorer A, and held-out scorer B)."""

    image: Image.Image
    recipe: dict
    history: list[dict] = field(default_factory=list)
    adversarial: bool = False
    frames: list[Image.Image] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Write the PNG with its full recipe."""
        return save_png(self.image, path, self.recipe)


def to_pil(image: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] in [0, 1] -> an 8-bit RGB PIL image."""
    array = (image[0].detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
    return Image.fromarray(array.astype(np.uint8), mode="RGB")


def load_image_tensor(path: str, width: int, height: int, field_name: str) -> torch.Tensor:
    """Decode an image file (bounded decoder), resize to width x height: [1, 3, H, W] in [0, 1]."""
    image = open_image(path, mode="RGB", field=field_name)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def colour_rgb(text: str) -> tuple[float, float, float]:
    """A colour name or #rrggbb as RGB in [0, 1]."""
    return tuple(channel / 255.0 for channel in parse_colour(text, "init_colour"))


def parse_palette(colours: tuple[str, ...]) -> torch.Tensor | None:
    """("#ff0000", "00f") -> [K, 3] in [0, 1]; empty -> None."""
    if not colours:
        return None
    rows = []
    for colour in colours:
        text = colour.strip().lstrip("#")
        if len(text) == 3:
            text = "".join(c * 2 for c in text)
        try:
            if len(text) != 6:
                raise ValueError
            rows.append([int(text[i:i + 2], 16) / 255.0 for i in (0, 2, 4)])
        except ValueError:
            raise ConfigError(f"{colour!r} is not a hex colour", field="palette",
                              fix='write colours like "#ff0000,#00ff00"') from None
    return torch.tensor(rows)


def scorer_input_size(scorer: Scorer, default: int = 224) -> int:
    """The side the scorer's image tower works at (cutouts are made at this size)."""
    config = getattr(getattr(scorer, "model", None), "config", None)
    size = getattr(config, "image_size", None) or getattr(scorer, "input_size", None)
    return int(size[0] if isinstance(size, (tuple, list)) else size) if size else default


def _seeds(seed: int) -> tuple[int, int]:
    """Two independent 63-bit seeds (drawer init, cutouts) derived from the user's seed."""
    first, second = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(first) >> 1, int(second) >> 1


class _Targets:
    """A scorer's unit embeddings of the prompts [P, D] and their normalised weights [P]."""

    def __init__(self, scorer: Scorer, targets: list[WeightedPrompt], width: int, height: int):
        rows = []
        with torch.no_grad():
            for target in targets:
                if target.is_image:
                    image = load_image_tensor(target.text, width, height, "image_prompt")
                    rows.append(scorer.embed_image(image)[0])
                else:
                    rows.append(scorer.embed_text([target.text])[0])
        self.embeddings = F.normalize(torch.stack(rows).float(), dim=-1)
        self.weights = torch.tensor(normalised_weights(targets))

    def score(self, scorer: Scorer, image: torch.Tensor) -> float:
        """Weighted cosine similarity of the whole image to the prompts (higher is better)."""
        with torch.no_grad():
            embedding = F.normalize(scorer.embed_image(image).float(), dim=-1)
        return float((embedding @ self.embeddings.T.to(embedding))[0] @ self.weights.to(embedding))


def _load_decoder(spec: str | None) -> Decoder | None:
    if spec is None:
        return None
    try:
        from ..nets.autoencoder import load_autoencoder
    except ImportError:
        raise ConfigError("this installation has no autoencoder support", field="decoder") from None
    return load_autoencoder(spec)


def _decoder_hash(spec: str) -> str | None:
    """SHA-256 of an autoencoder's weights (what a decoder-drawer recipe pins)."""
    from ..registry import Registry

    return Registry().get(spec).weights_sha256


def _load_diffusion(spec: str | None):
    if spec is None:
        raise missing_model_error()
    from ..pipeline import load_pipeline

    # CPU, like the scorer and every generator of the loop: same seed, same bytes.
    return load_pipeline(spec, device="cpu")


def dream(config: DreamConfig, *, scorer: Scorer | None = None,
          held_out_scorer: Scorer | None = None, decoder: Decoder | None = None,
          diffusion=None, gan=None, show_progress: bool = False, keep_frames: bool = False,
          frames_dir: str | Path | None = None,
          on_step: Callable[[int, torch.Tensor, float], None] | None = None,
          on_frame: Callable[[int, Image.Image], None] | None = None) -> DreamResult:
    """Optimise the drawer's parameters so the image matches the prompt under scorer A.

    Pass loaded scorers/decoder/diffusion pipeline/GAN to skip loading them from `config`. The
    held-out scorer B only evaluates; the result is flagged adversarial when A's score rose while
    B's fell. `on_frame(step, image)` receives each recorded frame (e.g. to stream a video).
    """
    from ..clip.foreign import load_scorer

    targets = parse_prompts(config.prompt, config.image_prompts, config.style)
    if decoder is None and config.drawer == "decoder":
        decoder = _load_decoder(config.decoder)
        if decoder is None:
            raise ConfigError("the decoder drawer needs an autoencoder", field="decoder",
                              fix="pass --decoder NAME_OR_FOLDER (an imagesynth autoencoder)")
    if diffusion is None and config.drawer == "diffusion-latent":
        diffusion = _load_diffusion(config.diffusion_model)
    prompt, negative_prompt = conditioning_texts(targets)
    gan_condition = None
    if config.drawer == "gan":
        if gan is None:
            if config.gan is None:
                raise missing_gan_error()
            gan = load_gan_model(config.gan)
        if config.gan_start == "prompt" and gan.config.condition_dim:
            gan_condition = prompt_condition(gan, prompt)  # once, shared by every candidate
    scorer = scorer if scorer is not None else load_scorer(config.scorer)
    if held_out_scorer is None and config.held_out_scorer:
        held_out_scorer = load_scorer(config.held_out_scorer)
    W, H = config.width, config.height
    init_seed, cutout_seed = _seeds(config.seed)
    init_generator = torch.Generator().manual_seed(init_seed)
    guide = _Targets(scorer, targets, W, H)

    def new_drawer() -> torch.nn.Module:
        return build_drawer(config.drawer, H, W, init_generator,
                            cells=config.cells, palette=parse_palette(config.palette),
                            decoder=decoder, diffusion=diffusion, prompt=prompt,
                            negative_prompt=negative_prompt,
                            diffusion_steps=config.diffusion_steps,
                            diffusion_sampler=config.diffusion_sampler,
                            diffusion_guidance=config.diffusion_guidance, gan=gan,
                            gan_latent=config.gan_latent, gan_truncation=config.gan_truncation,
                            gan_start=config.gan_start, gan_condition=gan_condition)

    drawer = new_drawer()
    if config.init_candidates > 1:
        # Rerank random starts with scorer A (DALL-E's CLIP reranking, here of starting points):
        # a generator's prior sample that already resembles the prompt needs the gradient only
        # to refine it, not to cross regions of the latent space that decode to no scene.
        with torch.no_grad():
            best_score = guide.score(scorer, drawer.render())
            for _ in range(config.init_candidates - 1):
                candidate = new_drawer()
                score = guide.score(scorer, candidate.render())
                if score > best_score:
                    drawer, best_score = candidate, score
    init = None
    if config.init_image is not None:
        init = load_image_tensor(config.init_image, W, H, "init_image")
        drawer.init_from_image(init)
    elif config.init_colour is not None:
        canvas = torch.tensor(colour_rgb(config.init_colour)).view(1, 3, 1, 1).expand(1, 3, H, W)
        drawer.init_from_image(canvas.contiguous())
    if config.init_noise > 0:
        # Seeds then differ even from a shared init image (pixray's init_noise): a blank
        # canvas plus noise lets each seed grow its own object instead of the same one.
        with torch.no_grad():
            for parameter in drawer.parameters():
                parameter.add_(config.init_noise * torch.randn(
                    parameter.shape, generator=init_generator).to(parameter))
    cut_generator = torch.Generator().manual_seed(cutout_seed)
    cut_config = CutoutConfig(config.cutouts, config.cut_power, config.cutout_noise, config.flip,
                              config.cutout_jitter)
    cut_size = scorer_input_size(scorer)

    editing = config.edit_to is not None
    if editing:
        # The score while editing is the similarity to the edit text.
        score_targets = [WeightedPrompt(config.edit_to)]
        source_texts = [t.text for t in targets if not t.is_image and t.weight > 0]
        if not source_texts:
            raise ConfigError("editing needs a positive text prompt describing the original",
                              field="prompt", fix='e.g. "a photo of a red circle"')
        with torch.no_grad():
            text_direction = (F.normalize(scorer.embed_text([config.edit_to]).float(), dim=-1)
                              - F.normalize(scorer.embed_text(source_texts).float(), dim=-1)
                              .mean(0, keepdim=True))
    else:
        score_targets = targets
    score_a = _Targets(scorer, score_targets, W, H) if editing else guide
    score_b = _Targets(held_out_scorer, score_targets, W, H) if held_out_scorer is not None else None

    parameters = list(drawer.parameters())
    optimiser = torch.optim.Adam(parameters, lr=config.lr)
    if config.lr_schedule == "cosine":
        # step s (1-based) runs at lr * (1 + cos(pi * (s - 1) / steps)) / 2: full at first, ~0 last
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda done: (1 + math.cos(math.pi * done / config.steps)) / 2)
    else:
        schedule = None
    history: list[dict] = []
    frames: list[Image.Image] = []
    if frames_dir is not None:
        frames_dir = Path(frames_dir)
        frames_dir.mkdir(parents=True, exist_ok=True)

    def evaluate(step: int, image: torch.Tensor) -> dict:
        row = {"step": step, "score": score_a.score(scorer, image)}
        if score_b is not None:
            row["held_out_score"] = score_b.score(held_out_scorer, image)
        history.append(row)
        return row

    def record_frame(step: int, image: torch.Tensor) -> None:
        if not (keep_frames or frames_dir is not None or on_frame is not None):
            return
        frame = to_pil(image)
        if keep_frames:
            frames.append(frame)
        if frames_dir is not None:
            frame.save(frames_dir / f"frame_{step:05d}.png")
        if on_frame is not None:
            on_frame(step, frame)

    progress = _progress(show_progress, config.steps)
    task = progress.add_task("dreaming", total=config.steps, score=float("nan")) if progress else None
    with torch.no_grad():
        image = drawer.render()
    last = evaluate(0, image)
    record_frame(0, image)
    try:
        if progress:
            progress.start()
        for step in range(1, config.steps + 1):
            optimiser.zero_grad(set_to_none=True)
            # One render per step: drawers with an `unclamped` image (decoders, diffusion) give it
            # to the range loss, so an expensive decode or sampler run is not repeated.
            raw = drawer.unclamped() if hasattr(drawer, "unclamped") else None
            image = clamp_with_grad(raw) if raw is not None else drawer.render()  # [1, 3, H, W]
            if editing:
                # crops shared by the edited and the original image: ΔI compares like with like
                cuts = augmented_cutouts(torch.cat([image, init]), cut_size, cut_config, cut_generator)
                embeddings = scorer.embed_image(cuts).float().view(config.cutouts, 2, -1)
                e, e_src = embeddings[:, 0], embeddings[:, 1].detach()
                loss = (directional_loss(e, e_src, text_direction)
                        + config.content_weight * spherical_distance_loss(e, e_src).mean())
            else:
                cuts = augmented_cutouts(image, cut_size, cut_config, cut_generator)
                e = scorer.embed_image(cuts).float()
                loss = prompt_loss(e, guide.embeddings, guide.weights)
            if config.tv_weight:
                loss = loss + config.tv_weight * total_variation_loss(image)
            if config.range_weight:
                loss = loss + config.range_weight * range_loss(raw if raw is not None else image)
            if config.saturation_weight:
                loss = loss + config.saturation_weight * saturation_loss(image)
            if not torch.isfinite(loss):
                raise NumericError(f"the loss became {float(loss)} at step {step}", field="lr",
                                   fix="lower the learning rate")
            loss.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            if step % config.eval_every == 0 or step == config.steps or step % config.frame_every == 0:
                with torch.no_grad():
                    image = drawer.render()
                if step % config.eval_every == 0 or step == config.steps:
                    last = evaluate(step, image)
                if step % config.frame_every == 0 or step == config.steps:
                    record_frame(step, image)
            if on_step is not None:
                on_step(step, image, float(loss.detach()))
            if progress:
                progress.update(task, advance=1, score=last["score"])
    finally:
        if progress:
            progress.stop()

    with torch.no_grad():
        final = drawer.render()
    first = history[0]
    adversarial = bool(score_b is not None and last["score"] > first["score"]
                       and last["held_out_score"] < first["held_out_score"])
    extra = {}
    if config.drawer == "diffusion-latent":
        # Record what was resolved (model path, default guidance) so a replay cannot drift.
        config = replace(config, diffusion_model=diffusion.model_name,
                         diffusion_guidance=drawer.guidance_scale)
        extra["diffusion"] = drawer.recipe()
    if config.drawer == "decoder" and config.decoder is not None:
        extra["decoder"] = {"model": config.decoder, "model_hash": _decoder_hash(config.decoder)}
    if config.drawer == "gan":
        extra["gan"] = {"model": config.gan,
                        "model_hash": gan_hash(config.gan) if config.gan else None,
                        **drawer.recipe()}
    recipe = {**_recipe(config, scorer, held_out_scorer, history, adversarial), **extra}
    return DreamResult(to_pil(final), recipe, history, adversarial, frames)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("score {task.fields[score]:.4f}"), TimeRemainingColumn())


def _identity(scorer: Scorer | None) -> str | None:
    method = getattr(scorer, "identity", None)
    return method() if callable(method) else None


def _recipe(config: DreamConfig, scorer: Scorer, held_out_scorer: Scorer | None,
            history: list[dict], adversarial: bool) -> dict:
    recipe: dict[str, Any] = {
        "kind": "dream", "prompt": config.prompt, "seed": config.seed, "steps": config.steps,
        "size": [config.width, config.height], "sampler": f"dream-{config.drawer}",
        "model": config.scorer, "model_hash": _identity(scorer),
        "dream": to_dict(config),
        "scores": {"final": history[-1], "initial": history[0], "adversarial": adversarial},
        "versions": {"imagesynth": __version__, "torch": torch.__version__},
    }
    if held_out_scorer is not None:
        recipe["held_out_model_hash"] = _identity(held_out_scorer)
    files = [p for p in ([config.init_image] if config.init_image else [])
             + [t.text for t in parse_prompts(config.prompt, config.image_prompts) if t.is_image]]
    if files:
        recipe["input_hashes"] = {p: sha256_file(p) for p in files}
    return recipe


def reproduce_from_recipe(recipe: dict, *, scorer: Scorer | None = None,
                          held_out_scorer: Scorer | None = None,
                          decoder: Decoder | None = None, diffusion=None,
                          gan=None) -> Image.Image:
    """Re-run the optimisation a `kind: dream` recipe describes; refuse if a model or input changed."""
    if recipe.get("kind") != "dream" or not isinstance(recipe.get("dream"), dict):
        raise ConfigError("this recipe was not written by `imagesynth dream`", field="image")
    config = from_dict(DreamConfig, recipe["dream"], prefix="dream.")
    for path, digest in (recipe.get("input_hashes") or {}).items():
        if not Path(path).is_file() or sha256_file(path) != digest:
            raise IntegrityError(f"input image {path!r} is missing or changed since the image "
                                 "was made", field="init_image",
                                 fix="put the original file back at that path")
    from ..clip.foreign import load_scorer

    scorer = scorer if scorer is not None else load_scorer(config.scorer)
    expected = recipe.get("model_hash")
    if expected and _identity(scorer) not in (None, expected):
        raise IntegrityError(f"scorer {config.scorer!r} is not the model that made this image",
                             field="model", fix="install the exact model the recipe names")
    if config.drawer == "diffusion-latent":
        diffusion = diffusion if diffusion is not None else _load_diffusion(config.diffusion_model)
        expected = (recipe.get("diffusion") or {}).get("model_hash")
        if expected and diffusion.model_hash != expected:
            raise IntegrityError(f"diffusion model {config.diffusion_model!r} is not the model "
                                 "that made this image (weights SHA-256 differs)",
                                 field="diffusion_model",
                                 fix="install the exact model the recipe names")
    expected = (recipe.get("decoder") or {}).get("model_hash")
    if expected and config.drawer == "decoder" and _decoder_hash(config.decoder) != expected:
        raise IntegrityError(f"autoencoder {config.decoder!r} is not the model that made this "
                             "image (weights SHA-256 differs)", field="decoder",
                             fix="install the exact model the recipe names")
    expected = (recipe.get("gan") or {}).get("model_hash")
    if expected and config.drawer == "gan" and config.gan and gan_hash(config.gan) != expected:
        raise IntegrityError(f"GAN {config.gan!r} is not the model that made this image "
                             "(weights SHA-256 differs)", field="gan",
                             fix="install the exact model the recipe names")
    result = dream(config, scorer=scorer, held_out_scorer=held_out_scorer, decoder=decoder,
                   diffusion=diffusion, gan=gan)
    return result.image
