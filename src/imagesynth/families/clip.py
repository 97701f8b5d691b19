"""Train a CLIP on any captioned folder with the shared loop; evaluate retrieval on the val split."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ..config import from_dict, to_dict
from ..data.folder import CaptionedImageFolder
from ..errors import DataError
from ..nets.clip import CLIPConfig, CLIPModel
from ..registry import write_model_folder
from ..text import CachedTextEncoder, load_text_encoder
from ..paths import cache_dir
from ..train import FamilyRunResult, TrainConfig, train
from ..train.datasets import CaptionedTrainingSet, caption_choice_table, caption_options, images_as_uint8

#: named presets: architecture + loop settings sized for the data they are meant for
PRESETS: dict[str, tuple[CLIPConfig, dict]] = {
    "tiny": (CLIPConfig(image_size=16, widths=(8, 16), blocks_per_stage=1, embed_dim=32,
                        text_hidden=64),
             dict(batch_size=16, learning_rate=2e-3, warmup_steps=5, max_steps=50)),
    "shapes": (CLIPConfig(image_size=32, widths=(32, 64, 128, 256), blocks_per_stage=1,
                          embed_dim=128),
               dict(batch_size=128, learning_rate=1e-3, warmup_steps=200, max_steps=3000)),
    "emoji": (CLIPConfig(image_size=64, widths=(32, 64, 128, 256), blocks_per_stage=2,
                         stem_stride=2, embed_dim=256),
              dict(batch_size=128, learning_rate=1e-3, warmup_steps=200, max_steps=6000)),
}


class CLIPTrainingSet(CaptionedTrainingSet):
    """Images (uint8, kept in memory) with indices into a table of caption features.

    Each image has one or more captions; which one a step uses is drawn by the objective from
    the step's generator, so caption variety costs nothing and resume stays exact.
    """

    def __init__(self, folder: CaptionedImageFolder, caption_index: dict[str, int]):
        self.items = folder.items
        super().__init__(images_as_uint8(folder), caption_choice_table(self.items, caption_index))
        self.images = self.samples


def random_zoom_shift(images: torch.Tensor, generator: torch.Generator,
                      min_scale: float = 0.85, max_shift: float = 0.08) -> torch.Tensor:
    """Per-image random zoom-in and shift (edge pixels extend the background)."""
    batch = images.shape[0]
    device = images.device
    scale = min_scale + (1 - min_scale) * torch.rand(batch, generator=generator, device=device)
    shift = (torch.rand(batch, 2, generator=generator, device=device) * 2 - 1) * max_shift
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear",
                                           padding_mode="border", align_corners=False)


class CLIPObjective:
    """Symmetric contrastive loss on (image, randomly chosen caption) pairs.

    Small data sets (1,911 emoji) overfit without augmentation, so images get a random zoom
    and shift; colours and orientation carry meaning ("red", "left arrow") and are untouched.
    With `adversarial_eps` > 0 every step trains on the images pushed up the loss by one signed
    gradient step inside an L-inf ball of that radius (fast adversarial training, Wong et al.
    2020): a robust image tower has gradients that look like image features rather than noise,
    which is what CLIP-guided synthesis follows.
    """

    def __init__(self, text_features: torch.Tensor, augment: bool = True,
                 adversarial_eps: float = 0.0):
        if not 0.0 <= adversarial_eps < 0.5:
            raise DataError(f"adversarial_eps {adversarial_eps} is out of range",
                            field="adversarial_eps", fix="use 0 (off) or e.g. 4/255 ≈ 0.0157")
        self.text_features = text_features  # [num_captions, text_dim]
        self.augment = augment
        self.adversarial_eps = adversarial_eps

    def _perturb(self, model: CLIPModel, images: torch.Tensor, features: torch.Tensor,
                 caption_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random start in the eps-ball, one signed step of 1.25 eps, projected back (FGSM-RS)."""
        eps = self.adversarial_eps
        start = (torch.rand(images.shape, generator=generator, device=images.device) * 2 - 1) * eps
        delta = start.requires_grad_(True)
        loss, _ = model.contrastive_loss((images + delta).clamp(0, 1), features, caption_ids)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + 1.25 * eps * grad.sign()).clamp(-eps, eps)
        return (images + delta).clamp(0, 1)

    def __call__(self, model: CLIPModel, batch, generator: torch.Generator):
        images_u8, choices = batch
        device = images_u8.device
        counts = (choices >= 0).sum(dim=1)
        pick = (torch.rand(len(choices), generator=generator, device=device) * counts).long()
        caption_ids = choices.gather(1, pick[:, None]).squeeze(1)
        features = self.text_features.to(device)[caption_ids]
        images = images_u8.float() / 255.0
        if self.augment:
            images = random_zoom_shift(images, generator)
        if self.adversarial_eps:
            images = self._perturb(model, images, features, caption_ids, generator)
        return model.contrastive_loss(images, features, caption_ids)


@torch.no_grad()
def retrieval_recall(model: CLIPModel, images: torch.Tensor, text_features: torch.Tensor,
                     ks: tuple[int, ...] = (1, 5), batch_size: int = 256) -> dict[str, float]:
    """Image→text and text→image recall@k for matching rows (images in [0, 1])."""
    model.eval()
    device = next(model.parameters()).device
    image_emb = torch.cat([model.encode_image(images[i:i + batch_size].to(device))
                           for i in range(0, len(images), batch_size)])
    text_emb = model.encode_text_features(text_features.to(device))
    similarity = image_emb @ text_emb.T
    target = torch.arange(len(similarity), device=device)
    results = {}
    for direction, sim in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        # rank of the true match = number of candidates scoring strictly higher
        true = sim.gather(1, target[:, None])
        rank = (sim > true).sum(dim=1)
        for k in ks:
            results[f"{direction}_recall@{k}"] = (rank < k).float().mean().item()
    return results


def train_clip(data: str | Path, out: str | Path, preset: str = "emoji",
               overrides: dict | None = None, clip_overrides: dict | None = None,
               val_data: str | Path | None = None, augment: bool = True,
               adversarial_eps: float = 0.0, show_progress: bool = True,
               resume: bool = True) -> FamilyRunResult:
    """Train a CLIP on `data` (any captioned folder) into `out`; write `out/model/` at the end.

    Validation uses the val split of `data`, or all of `val_data` when given (then every image
    of `data` trains) — e.g. train on twitter emoji, validate on google emoji.
    """
    if preset not in PRESETS:
        raise DataError(f"unknown preset {preset!r}", field="preset",
                        fix=f"choose one of {', '.join(PRESETS)}")
    clip_config, loop = PRESETS[preset]
    clip_config = dataclasses.replace(clip_config, **(clip_overrides or {}))
    config = from_dict(TrainConfig, {"eval_every": 500, "checkpoint_every": 250, **loop,
                                     **(overrides or {})})
    started = time.perf_counter()
    out = Path(out)
    encoder = CachedTextEncoder(load_text_encoder(clip_config.text_encoder),
                                db_path=cache_dir("text") / "embeddings.sqlite")
    size = clip_config.image_size
    if val_data is None:
        train_folder = CaptionedImageFolder(data, resolution=size, split="train")
        val_folder = CaptionedImageFolder(data, resolution=size, split="val")
    else:
        train_folder = CaptionedImageFolder(data, resolution=size)
        val_folder = CaptionedImageFolder(val_data, resolution=size)
    captions = sorted({c for item in train_folder.items + val_folder.items
                       for c in caption_options(item)})
    caption_index = {c: i for i, c in enumerate(captions)}
    text_features = torch.cat([encoder.encode(captions[i:i + 256]).pooled
                               for i in range(0, len(captions), 256)])
    train_set = CLIPTrainingSet(train_folder, caption_index)
    val_images = val_text = None
    if len(val_folder):
        val_set = CLIPTrainingSet(val_folder, caption_index)
        val_images = val_set.images.float() / 255.0
        val_text = text_features[[caption_index[i.caption] for i in val_folder.items]]

    def evaluate(step: int, model: CLIPModel) -> dict[str, float]:
        return retrieval_recall(model, val_images, val_text) if val_images is not None else {}

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = CLIPModel(clip_config)
    model = model.to(memory_format=torch.channels_last)
    objective = CLIPObjective(text_features, augment, adversarial_eps)
    result = train(model, train_set, objective, config, out,
                   on_eval=evaluate, show_progress=show_progress, resume=resume)
    final_model = result.ema if result.ema is not None else model
    final_eval = evaluate(result.step, final_model)
    model_config = {"family": "clip", "clip": to_dict(clip_config), "train": to_dict(config),
                    "steps": result.step, "data": Path(data).name, "augment": augment,
                    "val_data": Path(val_data).name if val_data else None, "eval": final_eval,
                    "adversarial_eps": adversarial_eps}
    card = (f"# CLIP trained on {Path(data).name}\n\nPreset `{preset}`, {result.step} steps.\n\n"
            f"Validation retrieval (EMA weights): `{json.dumps(final_eval)}`\n")
    model_dir = write_model_folder(out / "model", final_model.state_dict(), model_config, card)
    return FamilyRunResult(model_dir, result.step, result.stopped, final_eval,
                         time.perf_counter() - started)
