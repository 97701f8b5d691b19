"""`imagesynth compare`: every generator family on the same data and budget, measured alike.

The lecture notes sum the families up in a table of claims ("Types of image generators": speed,
quality, diversity, latent space). This trains (or loads) one model per family on one captioned
folder with the same wall-clock budget each, samples them conditioned on the held-out images'
captions where the family is conditional, and measures the same columns for all: images/s at
batch 32 on this machine, FD and precision/recall/density/coverage against the held-out images
in one named feature space, PPL (pixel-space path length) where there is a continuous latent,
bits/dim where the likelihood is exact, the ShapesWorld checker where the data is ShapesWorld,
and CLIP score where conditioned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..families.sampling import FAMILIES

#: the seed's table ("Types of image generators", lecture 004): speed, quality, diversity, latent
SEED_CLAIMS = {"vae": ("fast", "low", "high", "yes"), "gan": ("fast", "high", "low", "yes"),
               "flow": ("fast", "medium", "high", "yes"),
               "ar": ("slow", "high", "high", "no"),
               "diffusion": ("slow", "very high", "high", "somewhat")}
PRESETS = {"vae": "shapes-v32", "gan": "shapes", "flow": "shapes", "ar": "shapes",
           "diffusion": "shapes"}
LATENT_FAMILIES = ("vae", "gan", "flow")
#: the share of the autoregressive budget its first stage (the VQ tokenizer) gets: the bundled
#: `shapes-ar` recipe's 8 of 22 minutes
AR_TOKENIZER_SHARE = 8 / 22


@dataclass(frozen=True)
class CompareConfig:
    """What `imagesynth compare` takes."""

    data: str
    families: tuple[str, ...] = FAMILIES
    models: dict[str, str] = field(default_factory=dict)  # family -> trained model (no training)
    budget_minutes: float = 10.0
    runs: str = "runs/compare"
    samples: int = 512
    seed: int = 0
    extractor: str = "clip:shapes-clip"
    clip: str | None = "shapes-clip"
    speed_batch: int = 32
    ppl_samples: int = 256
    size: int = 32  # the side every model must generate (and the reference is read at)

    def __post_init__(self):
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ConfigError(f"unknown family {', '.join(unknown) or '(none given)'}",
                              field="families", fix=f"choose from {','.join(FAMILIES)}")
        stray = [f for f in self.models if f not in FAMILIES]
        if stray:
            raise ConfigError(f"unknown family {stray[0]!r} in --model", field="model",
                              fix="write --model FAMILY=NAME, e.g. --model gan=runs/gan/model")
        if not (math.isfinite(self.budget_minutes) and self.budget_minutes > 0):
            raise ConfigError(f"must be > 0, got {self.budget_minutes}", field="budget_minutes")
        if not 16 <= self.samples <= 50_000:
            raise ConfigError(f"must be between 16 and 50000, got {self.samples}", field="samples")


def train_family(family: str, data: str, out: Path, minutes: float) -> str:
    """Train one family's preset for `minutes` of wall clock; return its model folder."""
    budget = {"max_minutes": minutes, "max_steps": 10 ** 7, "eval_every": None}
    if family == "vae":
        from ..families.autoencoder import train_autoencoder

        result = train_autoencoder(data, out, preset=PRESETS[family], overrides=budget)
    elif family == "gan":
        from ..families.gan import train_gan

        result = train_gan(data, out, preset=PRESETS[family], overrides=budget)
    elif family == "flow":
        from ..families.flow import train_flow

        result = train_flow(data, out, preset=PRESETS[family], overrides=budget)
    elif family == "ar":
        from ..families.ar import train_ar

        # two stages, one budget: the tokenizer would otherwise train its full schedule first
        result = train_ar(data, out, preset=PRESETS[family],
                          overrides={**budget, "max_minutes": minutes * (1 - AR_TOKENIZER_SHARE)},
                          tokenizer_overrides={**budget,
                                               "max_minutes": minutes * AR_TOKENIZER_SHARE})
    else:
        from ..families.diffusion import train_diffusion

        result = train_diffusion(data, out, preset=PRESETS[family], overrides=budget)
    return str(result.model_dir)


def _is_shapes(captions: list[str]) -> bool:
    from ..data.shapes import parse_caption

    try:
        for caption in captions[:50]:
            parse_caption(caption)
    except Exception:  # a caption outside ShapesWorld's grammar: not ShapesWorld data
        return False
    return True


def _sample(model, family: str, captions: list[str], seed: int, batch: int
            ) -> tuple[torch.Tensor, float]:
    """Images [N, 3, S, S] in [-1, 1] for one seed and (if conditional) one caption each."""
    from ..diffusion.noise import generators_from_seeds

    conditional = family in ("ar", "diffusion") or (
        family == "gan" and model.config.condition_dim > 0)
    chunks, started = [], time.perf_counter()
    for start in range(0, len(captions), batch):
        part = captions[start:start + batch]
        generators = generators_from_seeds(range(seed + start, seed + start + len(part)))
        condition = None
        if conditional:
            condition = model.condition_for(part) if family == "gan" else part
        with torch.no_grad():
            chunks.append(model.sample(len(part), generators, condition).float().cpu())
    return torch.cat(chunks), time.perf_counter() - started


def _ppl(model, family: str, captions: list[str], samples: int) -> float | None:
    """Perceptual path length in pixel space (squared L2 / eps^2, Karras et al. 2019)."""
    from ..metrics.ppl import perceptual_path_length

    if family not in LATENT_FAMILIES:
        return None
    if family == "gan":
        dim = model.config.z_dim
        condition = model.condition_for(captions[:1]) if model.config.condition_dim else None

        def generate(z):
            c = None if condition is None else condition.expand(z.shape[0], -1)
            return model.generator(z, c).clamp(-1, 1)
    elif family == "vae":
        dim = model.latent_dim

        def generate(z):
            return model.decode(z[:, :, None, None])
    else:
        dim = model.latent_dim

        def generate(z):
            return model.decode(z)
    result = perceptual_path_length(generate, dim, num_samples=samples, batch_size=32,
                                    generator=0)
    return result.mean


def measure_family(model, family: str, reference_u8: torch.Tensor, captions: list[str],
                   config: CompareConfig, extractor, reference_features: np.ndarray,
                   scorer=None) -> dict:
    """One row of the table."""
    from ..data.shapes_check import check, detect_objects
    from ..metrics.evaluate import compute_metrics, extract_features
    from ..pipeline import _to_pil

    prompts = [captions[i % len(captions)] for i in range(config.samples)]
    images, seconds = _sample(model, family, prompts, config.seed, config.speed_batch)
    images01 = ((images + 1) / 2).clamp(0, 1)
    features, _ = extract_features(images01, extractor)
    row = {"family": family, "images_per_second": round(len(images) / seconds, 2),
           **compute_metrics(features, reference_features, ("fd", "pr", "dc"),
                             distance_name=extractor.distance_name)}
    row["ppl_pixels"] = _ppl(model, family, captions, config.ppl_samples)
    row["bits_per_dim"] = None
    if family == "flow":
        from ..families.flow import bits_per_dim

        row["bits_per_dim"] = bits_per_dim(model, reference_u8)
    conditional = family in ("ar", "diffusion") or (
        family == "gan" and model.config.condition_dim > 0)
    pil = _to_pil(images)
    if _is_shapes(captions):
        counts = [len(detect_objects(np.asarray(image))) for image in pil]
        row["scene_rate"] = float(np.mean([1 <= c <= 2 for c in counts]))
        row["checker_pass"] = float(np.mean([check(image, prompt).ok for image, prompt
                                             in zip(pil, prompts)])) if conditional else None
    if scorer is not None and conditional:
        with torch.no_grad():
            image_embeddings = torch.nn.functional.normalize(
                scorer.embed_image(images01).float(), dim=-1)
            text_embeddings = torch.nn.functional.normalize(
                scorer.embed_text(prompts).float(), dim=-1)
        row["clip_score"] = float(100 * (image_embeddings * text_embeddings).sum(-1)
                                  .clamp(min=0).mean())
    else:
        row["clip_score"] = None
    return row


def run_compare(config: CompareConfig, on_progress: Callable[[str], None] = print) -> dict:
    """Train or load each family, measure it, and return the report (rows + the seed's claims)."""
    from ..data.folder import CaptionedImageFolder
    from ..families.sampling import load_family
    from ..metrics.evaluate import extract_features
    from ..metrics.extractors import create_extractor
    from ..train.datasets import images_as_uint8

    reference = CaptionedImageFolder(config.data, resolution=config.size, split="val")
    if len(reference) < 16:
        raise ConfigError(f"{config.data} has {len(reference)} held-out (val) images; the "
                          "comparison needs at least 16", field="data",
                          fix="use a larger folder (e.g. `imagesynth data shapes --count 30000`)")
    reference_u8 = images_as_uint8(reference)
    captions = [item.caption for item in reference.items]
    extractor = create_extractor(config.extractor)
    reference_features, _ = extract_features(reference_u8, extractor)
    scorer = None
    if config.clip:
        from ..clip.foreign import load_scorer

        scorer = load_scorer(config.clip)
    rows, models = [], {}
    for family in config.families:
        spec = config.models.get(family)
        trained_for = None
        if spec is None:
            on_progress(f"training {family} for {config.budget_minutes:g} min")
            spec = train_family(family, config.data, Path(config.runs) / family,
                                config.budget_minutes)
            trained_for = config.budget_minutes
        on_progress(f"measuring {family} ({spec})")
        model = load_family(spec)
        if model.image_size != config.size:
            raise ConfigError(f"the {family} model {spec!r} makes {model.image_size} px images, "
                              f"the comparison is at {config.size} px", field="model",
                              fix=f"compare models of one size (--size {model.image_size})")
        row = measure_family(model, family, reference_u8, captions, config, extractor,
                             reference_features, scorer)
        row.update(model=spec, trained_minutes=trained_for,
                   seed_claims=dict(zip(("speed", "quality", "diversity", "latent"),
                                        SEED_CLAIMS[family])))
        rows.append(row)
        models[family] = spec
    return {"data": Path(config.data).name, "reference_images": len(reference),
            "samples_per_family": config.samples, "extractor": extractor.distance_name,
            "clip": config.clip, "budget_minutes": config.budget_minutes, "rows": rows}


def markdown_table(report: dict) -> str:
    """The measured table beside the seed's claims, as Markdown."""
    fd = report["extractor"]
    head = (f"| family | seed: speed / quality / diversity / latent | images/s | {fd} | "
            "precision | recall | density | coverage | PPL (pixels) | bits/dim | scenes | "
            "checker pass | CLIP score |")
    lines = [head, "|" + "---|" * 13]

    def cell(value, digits=3):
        if value is None:
            return "—"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    for row in report["rows"]:
        claims = " / ".join(row["seed_claims"].values())
        lines.append(f"| {row['family']} | {claims} | {cell(row['images_per_second'], 1)} | "
                     f"{cell(row[fd], 4)} | {cell(row['precision'])} | {cell(row['recall'])} | "
                     f"{cell(row['density'])} | {cell(row['coverage'])} | "
                     f"{cell(row['ppl_pixels'], 1)} | {cell(row['bits_per_dim'])} | "
                     f"{cell(row.get('scene_rate'))} | {cell(row.get('checker_pass'))} | "
                     f"{cell(row['clip_score'], 1)} |")
    return "\n".join(lines) + "\n"


def save_figure(report: dict, path: str | Path) -> Path:
    """Precision vs recall and images/s vs FD, one point per family (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd = report["extractor"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for row in report["rows"]:
        left.scatter(row["recall"], row["precision"], s=60)
        left.annotate(row["family"], (row["recall"], row["precision"]),
                      textcoords="offset points", xytext=(5, 5))
        right.scatter(row["images_per_second"], row[fd], s=60)
        right.annotate(row["family"], (row["images_per_second"], row[fd]),
                       textcoords="offset points", xytext=(5, 5))
    left.set(xlabel="recall (diversity)", ylabel="precision (fidelity)", xlim=(-0.05, 1.05),
             ylim=(-0.05, 1.05), title="precision vs recall")
    right.set(xscale="log", xlabel="images/s (CPU, batch 32)", ylabel=f"{fd} (lower is better)",
              title="speed vs quality")
    figure.suptitle(f"Generator families on {report['data']} "
                    f"({report['samples_per_family']} samples each)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
