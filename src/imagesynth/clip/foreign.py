"""Foreign CLIP models from local files (HF `CLIPModel` folders, open_clip checkpoints) as Scorers.

Model specs understood by `load_scorer`:

- `NAME` or `PATH`            an imagesynth CLIP (registry name or model folder), via `load_clip`
- `hf:FOLDER`                 a Hugging Face `CLIPModel` folder: config.json, *.safetensors,
                              tokenizer files (vocab.json + merges.txt or tokenizer.json) and
                              preprocessor_config.json
- `openclip:ARCH:WEIGHTS`     an open_clip checkpoint (.safetensors, or .pt/.bin through the safe
                              loader); ARCH is a built-in open_clip architecture name
                              (`ViT-B-32`) or the path of a model-config JSON file

Preprocessing happens inside `embed_image`, in torch, so gradients reach the pixels: resize the
shortest side (bicubic, antialiased), centre crop, normalise with the model's mean/std. The
reference pipelines resize uint8 PIL images and round the result to 8 bits; torch resizes
floats with the same antialiased bicubic kernel (a = -0.5), so the two differ by that rounding:
measured at 224 px on photos-like inputs, mean 0.004 and max 0.016 in normalised units (about
one 8-bit level), and not at all when the image already has the model's input size.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, MissingFileError, ModelNotFoundError
from ..io.checkpoint import load_weights
from ..io.files import sha256_file
from ..text import force_offline, validate_texts
from .scorer import CLIPScorer, load_clip

OPEN_CLIP_REQUIREMENT = "open_clip_torch==3.3.0"


def resize_center_crop(images: torch.Tensor, shortest_side: int, crop_size: tuple[int, int],
                       floor_offsets: bool = False) -> torch.Tensor:
    """[B,3,H,W] -> [B,3,*crop_size]: resize the shortest side (bicubic), then centre crop.

    Sizes follow torchvision's `Resize(int)`; crop offsets are rounded like torchvision's
    `CenterCrop` (open_clip), or floored like transformers' `center_crop` (`floor_offsets`).
    """
    height, width = images.shape[-2:]
    new_h = shortest_side if height <= width else int(shortest_side * height / width)
    new_w = shortest_side if width <= height else int(shortest_side * width / height)
    if (new_h, new_w) != (height, width):
        # antialias=True is torch's port of PIL's resampling (a = -0.5), up- and downscaling
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic",
                               antialias=True, align_corners=False)
    crop_h, crop_w = crop_size
    if new_h < crop_h or new_w < crop_w:
        raise ConfigError(f"resized image {new_h}x{new_w} is smaller than the crop {crop_size}",
                          field="images")
    if floor_offsets:
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    else:
        top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
    return images[..., top:top + crop_h, left:left + crop_w]


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}",
                          field="images")


def _features(output) -> torch.Tensor:
    """transformers returns a tensor or (since v5) an output object with projected pooler_output."""
    return output if torch.is_tensor(output) else output.pooler_output


class HFCLIPScorer:
    """A transformers `CLIPModel` folder as a Scorer (differentiable preprocessing in torch)."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"{folder} is not a Hugging Face model folder (no "
                                     "config.json)", field="model",
                                     fix="pass hf:FOLDER with config.json, weights, tokenizer "
                                         "files and preprocessor_config.json")
        if not list(folder.glob("*.safetensors")):
            raise MissingFileError(f"{folder} has no .safetensors weights", field="model",
                                   fix="convert the weights to safetensors "
                                       "(save_pretrained(..., safe_serialization=True))")
        processor_file = folder / "preprocessor_config.json"
        if not processor_file.is_file():
            raise MissingFileError(f"{folder} has no preprocessor_config.json", field="model",
                                   fix="copy the model's preprocessor_config.json into the folder")
        tokenizer_dir = folder if (folder / "vocab.json").is_file() else folder / "tokenizer"
        if not (tokenizer_dir / "vocab.json").is_file():
            raise MissingFileError(f"no CLIP tokenizer (vocab.json, merges.txt) in {folder}",
                                   field="model",
                                   fix="save the tokenizer beside the model or in tokenizer/")
        force_offline()
        from transformers import CLIPModel, CLIPTokenizer

        try:
            # float32 whatever the file stores: half precision is slow or missing on CPUs
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True,
                                                   use_safetensors=True, dtype=torch.float32)
            self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder} could not be loaded as a CLIPModel ({exc})",
                                  field="model", fix="check the folder's config and weights "
                                                     "and tokenizer files") from None
        self.model = self.model.to(device).eval().requires_grad_(False)
        processor = json.loads(processor_file.read_text())
        self.shortest_side, self.crop_size = _processor_sizes(processor)
        self.image_size = max(self.crop_size)
        self.max_length = self.model.config.text_config.max_position_embeddings
        mean = processor.get("image_mean", [0.48145466, 0.4578275, 0.40821073])
        std = processor.get("image_std", [0.26862954, 0.26130258, 0.27577711])
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.folder = folder
        self.name = f"hf:{folder.name}"

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device

    def identity(self) -> str:
        """SHA-256 over the folder's weights, config, tokenizer and preprocessor files."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()
                           and p.suffix in {".json", ".txt", ".safetensors"}):
            name = path.relative_to(self.folder).as_posix()
            digest.update(f"{name}:{sha256_file(path)}\n".encode())
        return digest.hexdigest()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the vision tower's normalised input (differentiable)."""
        _check_images(images)
        images = resize_center_crop(images.to(self.device), self.shortest_side, self.crop_size,
                                    floor_offsets=True)
        return (images - self.mean) / self.std

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings [B, D] (gradients flow to `images`)."""
        pixel_values = self.preprocess(images)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixel_values)),
                           dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings [N, D]."""
        tokens = self.tokenizer(validate_texts(list(texts)), padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(self.device)
        output = self.model.get_text_features(input_ids=tokens["input_ids"],
                                              attention_mask=tokens["attention_mask"])
        return F.normalize(_features(output), dim=-1)

    def logit_scale(self) -> float:
        """The model's learned inverse temperature exp(t)."""
        return float(self.model.logit_scale.detach().exp())


def _processor_sizes(processor: dict) -> tuple[int, tuple[int, int]]:
    """(shortest side, (crop h, crop w)) from a CLIPImageProcessor config."""
    size = processor.get("size", 224)
    shortest = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
    crop = processor.get("crop_size", shortest)
    if isinstance(crop, dict):
        crop = (crop.get("height", shortest), crop.get("width", shortest))
    elif isinstance(crop, int):
        crop = (crop, crop)
    if not isinstance(shortest, int) or not processor.get("do_center_crop", True):
        raise ConfigError("only shortest-side resize + centre crop preprocessing is supported",
                          field="preprocessor_config.json")
    return shortest, tuple(crop)


def _import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise MissingFileError("open_clip is not installed", field="model",
                               fix=f"pip install {OPEN_CLIP_REQUIREMENT}") from None
    return open_clip


class OpenCLIPScorer:
    """An open_clip checkpoint (local weights + architecture name or config JSON) as a Scorer."""

    def __init__(self, architecture: str, weights: str | Path,
                 device: str | torch.device = "cpu", trust_pickle: str | None = None):
        open_clip = _import_open_clip()
        force_offline()
        weights = Path(weights).expanduser()
        if architecture.startswith(("hf-hub:", "local-dir:")):
            raise ConfigError(f"{architecture!r} would download or re-read a hub folder",
                              field="model", fix="pass a built-in architecture name or the "
                                                 "path of the model-config JSON")
        config_path = Path(architecture).expanduser()
        if config_path.suffix == ".json":
            if not config_path.is_file():
                raise MissingFileError(f"no model config at {config_path}", field="model",
                                       fix="pass an existing open_clip model-config JSON")
            open_clip.add_model_config(config_path)  # registers it under the file's stem
            architecture = config_path.stem
        model_config = open_clip.get_model_config(architecture)
        if model_config is None:
            raise ModelNotFoundError(f"unknown open_clip architecture {architecture!r}",
                                     field="model", fix="use a name from "
                                     "open_clip.list_models() or a model-config JSON path")
        text_config = model_config.get("text_cfg", {})
        if text_config.get("hf_model_name") or text_config.get("hf_tokenizer_name"):
            raise ConfigError(f"{architecture!r} uses a Hugging Face text tower, which open_clip "
                              "fetches from the hub", field="model",
                              fix="use an architecture with the built-in CLIP text tower")
        state_dict = load_weights(weights, trust_pickle=trust_pickle)
        # open_clip checkpoints from training carry a DistributedDataParallel prefix
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        model = open_clip.create_model(architecture, pretrained=None, pretrained_image=False,
                                       pretrained_text=False)
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{weights.name} does not fit architecture {architecture!r} "
                                  f"({str(exc).splitlines()[0]})", field="model",
                                  fix="pass the architecture the checkpoint was trained with")
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(architecture)
        cfg = self.model.visual.preprocess_cfg
        if cfg.get("resize_mode", "shortest") != "shortest":
            raise ConfigError(f"resize mode {cfg['resize_mode']!r} is not supported",
                              field="model", fix="use a model with shortest-side resizing")
        size = cfg.get("size", 224)
        self.crop_size = (size, size) if isinstance(size, int) else tuple(size)
        self.shortest_side = max(self.crop_size)
        self.image_size = max(self.crop_size)
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self.weights = weights
        self.architecture = architecture
        self.name = f"openclip:{architecture}:{weights.name}"

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device

    def identity(self) -> str:
        """SHA-256 over the architecture's config and the weights file."""
        open_clip = _import_open_clip()
        config = json.dumps(open_clip.get_model_config(self.architecture), sort_keys=True)
        return hashlib.sha256(f"{config}\n{sha256_file(self.weights)}".encode()).hexdigest()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the vision tower's normalised input (differentiable)."""
        _check_images(images)
        images = resize_center_crop(images.to(self.device), self.shortest_side, self.crop_size)
        return (images - self.mean) / self.std

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings [B, D] (gradients flow to `images`)."""
        return F.normalize(self.model.encode_image(self.preprocess(images)), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings [N, D]."""
        tokens = self.tokenizer(validate_texts(list(texts))).to(self.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    def logit_scale(self) -> float:
        """The model's learned inverse temperature exp(t), clamped at 100 as in CLIP."""
        return min(float(self.model.logit_scale.detach().exp()), 100.0)


def scorer_identity(scorer) -> str:
    """A stable identity for any Scorer: weights hash (own `identity()` or parameter hash)."""
    if callable(getattr(scorer, "identity", None)):
        return scorer.identity()
    raise ConfigError(f"cannot identify scorer {getattr(scorer, 'name', scorer)!r}",
                      field="model", fix="give the scorer an identity() method")


def scorer_image_size(scorer) -> int:
    """The side length the scorer's image tower works at (for pre-shrinking huge inputs)."""
    if isinstance(scorer, CLIPScorer):
        return scorer.model.config.image_size
    return int(getattr(scorer, "image_size", 224))


def load_scorer(spec: str, device: str | torch.device = "cpu"):
    """Resolve a model spec (`NAME`, `PATH`, `hf:FOLDER`, `openclip:ARCH:WEIGHTS`) to a Scorer."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty model spec", field="model",
                          fix="pass a model name, a folder, hf:FOLDER or openclip:ARCH:WEIGHTS")
    if spec.startswith("hf:"):
        return HFCLIPScorer(spec[3:], device=device)
    if spec.startswith("openclip:"):
        rest = spec[len("openclip:"):]
        if rest.startswith(("hf-hub:", "local-dir:")):
            raise ConfigError(f"{spec!r} names a hub model, which open_clip would download",
                              field="model", fix="pass a built-in architecture name or the "
                                                 "path of the model-config JSON")
        architecture, sep, weights = rest.partition(":")
        if not sep or not architecture or not weights:
            raise ConfigError(f"{spec!r} is not openclip:ARCH:WEIGHTS", field="model",
                              fix="e.g. openclip:ViT-B-32:/models/vit-b-32.safetensors")
        return OpenCLIPScorer(architecture, weights, device=device)
    return load_clip(spec, device=device)


def logit_scale_of(scorer, default: float = 100.0) -> float:
    """The scorer's `logit_scale()` when it has one, else CLIP's usual 100."""
    method = getattr(scorer, "logit_scale", None)
    value = float(method()) if callable(method) else default
    if not math.isfinite(value) or value <= 0:
        return default
    return value
