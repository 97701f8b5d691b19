"""`imagesynth sweep`: image quality against sampler steps, as paired errors to a converged sample.

Image i (prompt i // seeds, seed i) starts from the same noise in every run, so each run's image
is compared with the same image of a converged reference run (DPM++ 2M at 200 steps by default):
the RMSE between the two is the sampler's own discretisation error, free of the image-to-image
spread that set distances (FD) carry. Besides that pixel RMSE (images in [-1, 1]; for latent
models also in the denoiser's space) each row has a feature-space error (cosine distance of CLIP
image embeddings), the task score (ShapesWorld checker pass rate, or CLIP top-5 of the emoji
name), FD against the converged set when the set is large enough, and seconds per image.

Each sampler also runs once at about `converged_nfe` evaluations (Heun 250 steps = 499 NFE):
its own converged error, the floor its rows are judged against ("within 5 % of its 500-NFE
paired error, relative to the data scale").
"""

from __future__ import annotations

import json
import math
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError

#: short names the CLI accepts for our samplers
ALIASES = {"euler_a": "euler_ancestral"}
#: samplers that draw fresh noise at every step (their paired error includes that noise)
STOCHASTIC = ("euler_ancestral", "ddpm")
DEFAULT_SAMPLERS = ("euler", "heun", "dpmpp_2m", "euler_ancestral")
DEFAULT_STEPS = (4, 6, 8, 12, 20, 35, 50)
#: "within 5 % ... relative to the data scale"
TOLERANCE = 0.05
#: EDM's headline budget: Heun with 18 steps, 35 network evaluations
HEUN_CHECK_NFE = 35
#: DPM++ 2M must meet the tolerance at or below this many evaluations
DPMPP_CHECK_NFE = 20
#: the bundled models' CLIPs, for the feature-space error and the emoji rank
BUNDLED_CLIPS = {"shapes": "shapes-clip", "emoji": "emoji-clip"}
TASKS = ("auto", "shapes", "emoji", "none")
ProgressFn = Callable[[str, int, int], None]


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations of `steps` sampler steps: Heun spends 2 per step except the last."""
    return 2 * steps - 1 if sampler == "heun" else steps


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The step count whose NFE is closest to `nfe` from above (Heun: (nfe + 1) // 2)."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def _sampler_name(name: str, field_name: str) -> str:
    from ..diffusion.samplers import SAMPLERS

    name = ALIASES.get(name.strip(), name.strip())
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}", field=field_name,
                          fix=f"choose from {', '.join(SAMPLERS)} (euler_a = euler_ancestral)")
    return name


@dataclass(frozen=True)
class SweepConfig:
    """What `imagesynth sweep` takes."""

    model: str = "shapes"
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    steps: tuple[int, ...] = DEFAULT_STEPS  # sampler steps, shared by all samplers, increasing
    prompts: tuple[str, ...] = ()  # empty: `prompt_count` prompts of the model's default set
    prompt_count: int = 16
    seeds: int = 1  # seeds per prompt; image i uses seed i
    guidance: float | None = None  # None: the model's default
    negative_prompt: str = ""
    reference: str = "dpmpp_2m:200"  # SAMPLER:STEPS of the converged reference
    converged_nfe: int = 500  # each sampler's own converged run; 0 skips them
    converged_samplers: tuple[str, ...] | None = None  # None: every swept sampler
    clip: str = "auto"  # CLIP for the feature error and emoji rank; auto: the bundled one; "": none
    task: str = "auto"
    emoji_data: str = "data/emoji"  # the emoji folder: prompt names and the labels ranked

    def __post_init__(self):
        if not self.samplers:
            raise ConfigError("no sampler given", field="samplers", fix="e.g. euler,heun,dpmpp_2m")
        samplers = tuple(_sampler_name(s, "samplers") for s in self.samplers)
        if len(set(samplers)) != len(samplers):
            raise ConfigError(f"a sampler is listed twice in {','.join(samplers)}", field="samplers")
        object.__setattr__(self, "samplers", samplers)
        steps = self.steps
        if not steps:
            raise ConfigError("the list is empty", field="steps", fix="e.g. --steps 4,8,16,32")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
            raise ConfigError(f"must be integers >= 1, got {list(steps)}", field="steps")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"must increase, got {','.join(map(str, steps))}", field="steps",
                              fix="list each step count once, smallest first")
        sampler, reference_steps = self.reference_run
        if sampler in STOCHASTIC:
            raise ConfigError(f"{sampler} adds noise, so it converges to no fixed image",
                              field="reference", fix="use a deterministic sampler, e.g. dpmpp_2m:200")
        for name, value, low in (("prompt_count", self.prompt_count, 1), ("seeds", self.seeds, 1),
                                 ("converged_nfe", self.converged_nfe, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"must be an integer >= {low}, got {value!r}", field=name)
        # the Heun check row (35 NFE) runs too, so the converged runs must lie above it as well
        top = max([nfe_of(s, steps[-1]) for s in samplers]
                  + ([HEUN_CHECK_NFE] if "heun" in samplers else []))
        if 0 < self.converged_nfe <= top:
            raise ConfigError(f"{self.converged_nfe} is not above the sweep's largest NFE ({top})",
                              field="converged_nfe", fix="use e.g. 500, or 0 to skip")
        if self.converged_samplers is not None:
            chosen = tuple(_sampler_name(s, "converged_samplers") for s in self.converged_samplers)
            stray = [s for s in chosen if s not in samplers]
            if stray:
                raise ConfigError(f"{stray[0]} is not swept", field="converged_samplers",
                                  fix=f"pick from {','.join(samplers)}")
            object.__setattr__(self, "converged_samplers", chosen)
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ConfigError(f"must be a number >= 0, got {self.guidance!r}", field="guidance")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}", field="task",
                              fix=f"choose from {', '.join(TASKS)}")
        if any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ConfigError("a prompt is empty", field="prompts", fix="one prompt per line")

    @property
    def reference_run(self) -> tuple[str, int]:
        """The reference as (sampler, steps)."""
        name, sep, count = self.reference.partition(":")
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise ConfigError(f"{self.reference!r} is not SAMPLER:STEPS", field="reference",
                              fix="e.g. dpmpp_2m:200")
        return _sampler_name(name, "reference"), int(count)

    def converged_for(self, sampler: str) -> bool:
        """Whether `sampler` gets its own run at about `converged_nfe` evaluations."""
        return self.converged_nfe > 0 and (self.converged_samplers is None
                                           or sampler in self.converged_samplers)


@dataclass(frozen=True)
class SweepRow:
    """One sampler at one step count, measured against the reference images."""

    sampler: str
    steps: int
    nfe: int
    role: str  # "grid", "check" (Heun at 35 NFE) or "converged"
    rmse_pixels: float
    rmse_latent: float | None
    rmse_own_converged: float | None  # pixels, against this sampler's converged run
    excess: float | None  # (rmse_pixels - own converged rmse_pixels) / data scale
    feature_distance: float | None
    task_score: float | None
    fd: float | None
    seconds_per_image: float


def shapes_prompts(count: int) -> list[str]:
    """`count` prompts spread over the held-out singles, positions and two-object relations."""
    from ..data.shapes import COLOURS, HELD_OUT_PAIRS, POSITIONS, RELATIONS, SHAPES

    rng = np.random.default_rng(0)
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    pool = [f"a {c} {s}" for c, s in HELD_OUT_PAIRS]
    pool += [f"a {c} {s} on the {p}" for c, s in HELD_OUT_PAIRS for p in POSITIONS]
    for colour, shape in HELD_OUT_PAIRS:
        for relation in RELATIONS:
            partners = [(c, s) for c, s in seen if c != colour and s != shape]
            other = partners[rng.integers(len(partners))]
            pool.append(f"a {colour} {shape} {relation} a {other[0]} {other[1]}")
    return _spread(pool, count)


def _spread(pool: list[str], count: int) -> list[str]:
    picks = np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int)
    return [pool[i] for i in sorted(set(picks.tolist()))]


def _emoji_records(folder: str) -> list[dict]:
    path = Path(folder) / "captions.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} is missing", field="emoji_data",
                          fix="build it with `imagesynth data emoji --out data/emoji`, or pass --prompts")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def emoji_prompts(folder: str, count: int, style: str = "twitter") -> list[str]:
    """"NAME, STYLE style" for `count` names spread evenly over the folder's sorted names."""
    names = sorted({r["name"] for r in _emoji_records(folder) if r.get("style") == style})
    return [f"{name}, {style} style" for name in _spread(names, count)]


def _is_shapes(prompts: list[str]) -> bool:
    from ..data.shapes import parse_caption

    try:
        for prompt in prompts:
            parse_caption(prompt)
    except Exception:  # outside the ShapesWorld grammar: the checker cannot judge it
        return False
    return True


class _Counted:
    """Counts denoiser calls: one call is one NFE (CFG runs both branches in that call)."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        return self.denoiser(x, sigma, **cond)


def batched_guidance(pipe, prompts: list[str], negative_prompt: str, scale: float):
    """One CFG denoiser for the whole batch: every image and both branches in one UNet call.

    The pipeline evaluates each image alone so batches never change its bytes; the sweep only
    compares runs made with this same denoiser, and a batched call is 1.5x cheaper on CPU.
    """
    from ..diffusion import ClassifierFreeGuidance

    if not hasattr(pipe, "encode_prompts"):  # other pipelines: their own (per-image) guidance
        return pipe.guided_denoiser(prompts, negative_prompt, scale)
    states, mask = pipe.encode_prompts(prompts)
    negative, negative_mask = pipe.encode_prompts([negative_prompt] * len(prompts))
    length = max(states.shape[1], negative.shape[1])

    def pad(t):
        return torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1]))

    def pad_mask(m):
        return torch.nn.functional.pad(m, (0, length - m.shape[1]))

    return ClassifierFreeGuidance(
        pipe.denoiser, {"encoder_hidden_states": pad(states), "encoder_attention_mask": pad_mask(mask)},
        {"encoder_hidden_states": pad(negative), "encoder_attention_mask": pad_mask(negative_mask)},
        scale)


@dataclass
class _Run:
    samples: torch.Tensor  # the denoiser's space
    images: torch.Tensor  # [-1, 1], clamped as the saved images are
    nfe: int
    seconds: float


@torch.no_grad()
def _sample(pipe, denoiser, sampler: str, steps: int, seeds: list[int]) -> _Run:
    from ..diffusion import get_sampler, randn_like_per_sample
    from ..diffusion.noise import generators_from_seeds

    generators = generators_from_seeds(seeds)  # exactly the pipeline's noise for these seeds
    sigmas = pipe.sigmas(steps)
    template = torch.empty(len(seeds), *pipe.latent_shape(pipe.image_size), device=pipe.device)
    x = randn_like_per_sample(template, generators) * pipe.noise_scale(sigmas)
    counted = _Counted(denoiser)
    started = time.perf_counter()
    samples = get_sampler(sampler)(counted, x, sigmas, generator=generators)
    images = pipe._decode(samples).clamp(-1, 1)
    return _Run(samples.float().cpu(), images.float().cpu(), counted.calls,
                time.perf_counter() - started)


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    # pooled over images: sqrt of the mean over images of each image's mean squared error
    return float(((a - b) ** 2).mean().sqrt())


class _Judge:
    """Feature embeddings, task score and FD of a run's images (the CLIP is loaded once)."""

    def __init__(self, config: SweepConfig, pipe, prompts: list[str], model: str):
        self.prompts, self.scorer, self.label_emb, self.targets = prompts, None, None, None
        clip = BUNDLED_CLIPS.get(Path(model).name, "") if config.clip == "auto" else config.clip
        task = config.task
        if task == "auto":
            task = "shapes" if _is_shapes(prompts) else (
                "emoji" if pipe.config.get("data") == "emoji" and clip else "none")
        self.task = None if task == "none" else task
        if clip:
            from ..clip.foreign import load_scorer

            self.scorer = load_scorer(clip)
        self.clip = clip or None
        if self.task == "emoji":
            self._emoji_labels(config.emoji_data)

    def _emoji_labels(self, folder: str) -> None:
        from ..clip.evaluation import embed_labels

        if self.scorer is None:
            raise ConfigError("the emoji rank needs a CLIP", field="clip", fix="pass --clip emoji-clip")
        parsed = [re.fullmatch(r"(.+), (\w+) style", p) for p in self.prompts]
        if not all(parsed):
            raise ConfigError("emoji prompts must read 'NAME, STYLE style'", field="prompts",
                              fix='e.g. "red apple, twitter style"')
        styles = {m[2] for m in parsed}
        names = sorted({r["name"] for r in _emoji_records(folder) if r.get("style") in styles})
        index = {name: i for i, name in enumerate(names)}
        unknown = [m[1] for m in parsed if m[1] not in index]
        if unknown:
            raise ConfigError(f"{unknown[0]!r} is no emoji name of {folder}", field="prompts")
        self.label_emb = embed_labels(self.scorer, names, ["{}"])
        self.targets = torch.tensor([index[m[1]] for m in parsed])
        self.labels = len(names)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor | None:
        """Unit CLIP image embeddings of images in [-1, 1], or None without a CLIP."""
        if self.scorer is None:
            return None
        from ..clip.evaluation import embed_images
        from ..clip.foreign import scorer_image_size

        images01 = (images + 1) / 2
        size = scorer_image_size(self.scorer)
        if images01.shape[-1] != size:
            images01 = torch.nn.functional.interpolate(images01, size=(size, size), mode="area")
        return torch.nn.functional.normalize(embed_images(self.scorer, images01).float(), dim=-1)

    def task_score(self, images: torch.Tensor, embeddings: torch.Tensor | None) -> float | None:
        """Checker pass rate (shapes) or the fraction of images whose emoji ranks in the top 5."""
        if self.task == "shapes":
            from ..data.shapes_check import check
            from ..pipeline import _to_pil

            return float(np.mean([check(image, prompt).ok
                                  for image, prompt in zip(_to_pil(images), self.prompts)]))
        if self.task == "emoji":
            from ..clip.evaluation import target_ranks

            return float((target_ranks(embeddings, self.label_emb, self.targets) < 5).float().mean())
        return None


def fd_min_images(dim: int) -> int:
    """Images FD needs in `dim` dimensions: d + 1, so both covariances can be full rank."""
    return dim + 1


def _fd(embeddings: torch.Tensor | None, reference: torch.Tensor | None) -> float | None:
    from ..metrics.frechet import fd_from_features

    if embeddings is None or len(embeddings) < fd_min_images(embeddings.shape[1]):
        return None
    return float(fd_from_features(embeddings.double().numpy(), reference.double().numpy()))


def _plan(config: SweepConfig) -> list[tuple[str, int, str]]:
    """(sampler, steps, role) of every run after the reference, converged runs first."""
    runs = []
    for sampler in config.samplers:
        if config.converged_for(sampler):
            runs.append((sampler, steps_for_nfe(sampler, config.converged_nfe), "converged"))
        steps = set(config.steps)
        if sampler == "heun":
            steps.add(steps_for_nfe("heun", HEUN_CHECK_NFE))
        runs += [(sampler, s, "grid" if s in config.steps else "check") for s in sorted(steps)]
    return runs


def run_sweep(config: SweepConfig, pipe=None, progress: ProgressFn | None = None) -> "SweepResult":
    """Run the reference, then every sampler at every step count; measure each against it."""
    if pipe is None:
        from ..pipeline import load_pipeline

        pipe = load_pipeline(config.model)
    model = getattr(pipe, "model_name", config.model)
    if config.prompts:
        base = list(config.prompts)
    elif str(pipe.config.get("data", "")).startswith("shapes"):
        base = shapes_prompts(config.prompt_count)
    elif pipe.config.get("data") == "emoji":
        base = emoji_prompts(config.emoji_data, config.prompt_count)
    else:
        raise ConfigError(f"no default prompts for model {model!r}", field="prompts",
                          fix="pass --prompts FILE (one prompt per line)")
    prompts = [p for p in base for _ in range(config.seeds)]
    seeds = list(range(len(prompts)))
    guidance = pipe.default_guidance if config.guidance is None else config.guidance
    judge = _Judge(config, pipe, prompts, model)
    denoiser = batched_guidance(pipe, prompts, config.negative_prompt, guidance)
    plan = _plan(config)
    total = len(plan) + 1
    ref_sampler, ref_steps = config.reference_run
    reference = _sample(pipe, denoiser, ref_sampler, ref_steps, seeds)
    if progress:
        progress(f"reference {ref_sampler} {ref_steps} steps", 1, total)
    latent = pipe.autoencoder is not None
    ref_emb = judge.embed(reference.images)
    scale = {"pixels": float(reference.images.std())}
    if latent:
        scale["latent"] = float(reference.samples.std())
    own: dict[str, _Run] = {}
    floors: dict[str, float] = {}
    rows = []
    for done, (sampler, steps, role) in enumerate(plan, start=2):
        run = _sample(pipe, denoiser, sampler, steps, seeds)
        rmse = _rmse(run.images, reference.images)
        if role == "converged":
            own[sampler], floors[sampler] = run, rmse
        emb = judge.embed(run.images)
        rows.append(SweepRow(
            sampler=sampler, steps=steps, nfe=run.nfe, role=role, rmse_pixels=rmse,
            rmse_latent=_rmse(run.samples, reference.samples) if latent else None,
            rmse_own_converged=_rmse(run.images, own[sampler].images) if sampler in own else None,
            # a stochastic sampler's converged run is just another draw: no floor to subtract
            excess=(rmse - floors[sampler]) / scale["pixels"]
            if sampler in floors and sampler not in STOCHASTIC else None,
            feature_distance=None if emb is None else float(1 - (emb * ref_emb).sum(-1).mean()),
            task_score=judge.task_score(run.images, emb), fd=_fd(emb, ref_emb),
            seconds_per_image=run.seconds / len(seeds)))
        if progress:
            progress(f"{sampler} {steps} steps", done, total)
    return SweepResult(
        model=model, prompts=base, seeds=config.seeds, guidance=guidance,
        negative_prompt=config.negative_prompt, data_scale=scale,
        reference={"sampler": ref_sampler, "steps": ref_steps, "nfe": reference.nfe,
                   "task_score": judge.task_score(reference.images, ref_emb),
                   "seconds_per_image": reference.seconds / len(seeds)},
        rows=rows, feature=None if judge.clip is None else f"clip:{judge.clip}", task=judge.task,
        fd_min_images=None if ref_emb is None else fd_min_images(ref_emb.shape[1]),
        machine={"python": platform.python_version(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "device": str(pipe.device),
                 "batch": len(seeds)},
        default_sampler=pipe.default_sampler)


@dataclass(frozen=True)
class SweepResult:
    """The sweep's measurements, with the checks and recommendation derived from them."""

    model: str
    prompts: list[str]
    seeds: int
    guidance: float
    negative_prompt: str
    data_scale: dict[str, float]  # std of the reference images (pixels) and samples (latent)
    reference: dict[str, Any]
    rows: list[SweepRow]
    feature: str | None
    task: str | None
    fd_min_images: int | None
    machine: dict[str, Any]
    default_sampler: str = "dpmpp_2m"
    tolerance: float = field(default=TOLERANCE)

    @property
    def images(self) -> int:
        """Images per run."""
        return len(self.prompts) * self.seeds

    def rows_of(self, sampler: str) -> list[SweepRow]:
        """One sampler's rows by increasing NFE."""
        return sorted((r for r in self.rows if r.sampler == sampler), key=lambda r: r.nfe)

    def criteria(self) -> dict[str, dict]:
        """Heun at 35 NFE and DPM++ 2M at <= 20 NFE against their own converged errors."""
        out = {}
        heun = [r for r in self.rows_of("heun") if r.nfe == HEUN_CHECK_NFE]
        if heun and heun[0].excess is not None:
            out["heun_35_nfe"] = self._verdict(heun[0])
        dpmpp = [r for r in self.rows_of("dpmpp_2m") if r.nfe <= DPMPP_CHECK_NFE and r.excess is not None]
        if dpmpp:
            passing = [r for r in dpmpp if r.excess <= self.tolerance]
            out["dpmpp_2m_le_20_nfe"] = self._verdict(passing[0] if passing else dpmpp[-1])
        return out

    def _verdict(self, row: SweepRow) -> dict:
        floor = next(r for r in self.rows_of(row.sampler) if r.role == "converged")
        return {"sampler": row.sampler, "steps": row.steps, "nfe": row.nfe,
                "rmse_pixels": row.rmse_pixels, "converged_nfe": floor.nfe,
                "converged_rmse_pixels": floor.rmse_pixels, "excess": row.excess,
                "rmse_own_converged_over_scale": row.rmse_own_converged / self.data_scale["pixels"],
                "met": row.excess <= self.tolerance}

    def recommended(self) -> dict[str, dict]:
        """Per deterministic sampler: the fewest steps whose excess error is within tolerance.

        Without its own converged run a sampler's floor is taken as 0: every deterministic
        sampler tends to the same ODE solution as the reference, so that is the stricter test.
        """
        out = {}
        scale = self.data_scale["pixels"]
        for sampler in dict.fromkeys(r.sampler for r in self.rows):
            if sampler in STOCHASTIC:
                continue
            rows = [r for r in self.rows_of(sampler) if r.role != "converged"]
            for r in rows:
                excess = r.excess if r.excess is not None else r.rmse_pixels / scale
                if excess <= self.tolerance:
                    out[sampler] = {"steps": r.steps, "nfe": r.nfe, "excess": excess,
                                    "floor": "own converged" if r.excess is not None else "0",
                                    "task_score": r.task_score}
                    break
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "SweepResult":
        """Rebuild a result from `to_dict()` output (derived keys are recomputed)."""
        names = {f for f in cls.__dataclass_fields__}
        kept = {k: v for k, v in data.items() if k in names}
        kept["rows"] = [SweepRow(**row) for row in data["rows"]]
        return cls(**kept)

    def to_dict(self) -> dict:
        """Everything as plain JSON-able data."""
        data = asdict(self)
        data.update(images=self.images, criteria=self.criteria(), recommended=self.recommended())
        return data

    def to_json(self) -> str:
        """The result as indented JSON."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        """The table, the two checks and the recommendation, as Markdown."""
        def cell(value, digits=4):
            return "—" if value is None else f"{value:.{digits}g}"

        ref = self.reference
        lines = [f"Model `{self.model}`: {len(self.prompts)} prompts × {self.seeds} seed(s) = "
                 f"{self.images} images (image i uses seed i), guidance {self.guidance:g}. "
                 f"Reference: {ref['sampler']} at {ref['steps']} steps ({ref['nfe']} NFE), task "
                 f"score {cell(ref['task_score'], 3)}, {ref['seconds_per_image']:.2f} s/image. Data "
                 f"scale (std of the reference images in [-1, 1]): {self.data_scale['pixels']:.4f}"
                 + (f"; of its latents: {self.data_scale['latent']:.4f}" if "latent" in self.data_scale
                    else "") + ".", "",
                 f"| sampler | steps | NFE | RMSE pixels | RMSE / scale | excess / scale | vs own "
                 f"converged / scale | RMSE latent | {self.feature or 'feature'} cos dist | task "
                 f"({self.task or '—'}) | FD | s/image |", "|" + "---|" * 12]
        scale = self.data_scale["pixels"]
        for sampler in dict.fromkeys(r.sampler for r in self.rows):
            for r in self.rows_of(sampler):
                steps = f"{r.steps}" + (" (converged)" if r.role == "converged" else "")
                own = None if r.rmse_own_converged is None else r.rmse_own_converged / scale
                lines.append(f"| {sampler} | {steps} | {r.nfe} | {cell(r.rmse_pixels)} | "
                             f"{cell(r.rmse_pixels / scale, 3)} | {cell(r.excess, 3)} | "
                             f"{cell(own, 3)} | {cell(r.rmse_latent)} | "
                             f"{cell(r.feature_distance, 3)} | {cell(r.task_score, 3)} | "
                             f"{cell(r.fd, 3)} | {r.seconds_per_image:.2f} |")
        if self.fd_min_images is not None and self.images < self.fd_min_images:
            lines += ["", f"FD needs at least {self.fd_min_images} images (feature dim + 1); "
                          f"this sweep has {self.images}, so it is not reported."]
        lines += ["", f"Checks (excess = (RMSE − own converged RMSE) / data scale ≤ "
                      f"{self.tolerance:.0%}):", ""]
        for name, v in self.criteria().items():
            lines.append(f"- {name}: {v['sampler']} {v['steps']} steps ({v['nfe']} NFE) RMSE "
                         f"{v['rmse_pixels']:.4f}, own {v['converged_nfe']}-NFE RMSE "
                         f"{v['converged_rmse_pixels']:.4f}, excess {v['excess']:.3f} → "
                         f"{'met' if v['met'] else 'NOT met'}")
        lines += ["", "Recommended steps (fewest with excess ≤ tolerance):", ""]
        for sampler, v in self.recommended().items():
            lines.append(f"- {sampler}: {v['steps']} steps ({v['nfe']} NFE), excess "
                         f"{v['excess']:.3f} (floor: {v['floor']}), task {cell(v['task_score'], 3)}")
        return "\n".join(lines) + "\n"

    def figure(self, path: str | Path) -> Path:
        """Error, feature distance and task score against NFE, one line per sampler (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        panels = [("rmse_pixels", "paired RMSE, pixels [-1, 1]", True)]
        if self.feature:
            panels.append(("feature_distance", f"paired cosine distance, {self.feature}", True))
        if self.task:
            panels.append(("task_score", f"task score ({self.task})", False))
        figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
        for ax, (key, label, log) in zip(axes[0], panels):
            for sampler in dict.fromkeys(r.sampler for r in self.rows):
                rows = self.rows_of(sampler)
                values = [getattr(r, key) for r in rows]
                if log:  # an exact zero has no place on a log axis
                    values = [v if v and v > 0 else float("nan") for v in values]
                line, = ax.plot([r.nfe for r in rows], values, marker="o", ms=3, label=sampler)
                ends = [(r.nfe, v) for r, v in zip(rows, values) if r.role == "converged"]
                if ends:  # the sampler's own converged run: the floor its rows are judged by
                    ax.plot(*zip(*ends), marker="D", ms=7, mfc="none", color=line.get_color(),
                            ls="none")
            if key == "rmse_pixels":
                ax.axhline(self.tolerance * self.data_scale["pixels"], color="grey", ls=":",
                           label=f"{self.tolerance:.0%} of data scale")
            if key == "task_score" and self.reference["task_score"] is not None:
                ax.axhline(self.reference["task_score"], color="black", ls="--", label="reference")
            ax.set(xscale="log", xlabel="NFE (network evaluations)", ylabel=label)
            nfes = [r.nfe for r in self.rows]
            ax.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
                           if min(nfes) <= t <= max(nfes) * 1.05])
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].legend(fontsize=8, title="◇ own converged run", title_fontsize=7)
        ref = self.reference
        figure.suptitle(f"{Path(self.model).name}: {self.images} images vs {ref['sampler']} "
                        f"{ref['steps']} steps")
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return path
