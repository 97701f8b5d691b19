"""Model folders and the local registry: bundled models plus user models pinned by SHA-256.

A model folder holds `config.json`, one or more `*.safetensors` (the resolved config in their
metadata), `CARD.md`, and `SHA256SUMS`. Bundled models live in the repository's `models/`;
`imagesynth models add PATH` registers a user folder or single weights file in
`$IMAGESYNTH_HOME/registry.json` together with the hashes its files had when added.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import (CheckpointError, ConfigError, IntegrityError, ModelNotFoundError,
                     UsageError)
from .io.checkpoint import (PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, load_weights,
                            read_safetensors_header, save_weights)
from .io.files import atomic_write_text, sha256_file
from .paths import bundled_models_dir, home

WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
#: the family of Stable Diffusion weights in their own formats (diffusers folder, single file)
SD_FAMILY = "stable-diffusion"
SUMS_FILE = "SHA256SUMS"
#: text files a model folder may carry beside its weights, kept by copies (the training captions
#: that `generate --expand` rewrites prompts into)
COPIED_TEXT_FILES = ("captions.txt",)


@dataclass(frozen=True)
class ModelEntry:
    """One model the registry knows: where it is and the hashes its files must have."""

    name: str
    path: str
    source: str  # "bundled" or "user"
    family: str = "unknown"
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    added: str = ""
    trusted_pickle: str | None = None
    #: what detection found for foreign models (Stable Diffusion: arch, prediction, inpaint)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The folder (or single file) of the model."""
        return Path(self.path)

    @property
    def weights_sha256(self) -> str | None:
        """What recipes pin: the (first) safetensors file's hash; for Stable Diffusion folders,
        one hash over all files (`sd.loading.combined_hash`)."""
        if self.family == SD_FAMILY and self.files:
            from .sd.loading import combined_hash

            return combined_hash(self.files)
        weights = [rel for rel in sorted(self.files) if rel.endswith(".safetensors")]
        return self.files[weights[0]] if weights else None

    def config(self) -> dict:
        """The model's `config.json` (empty for a bare weights file)."""
        config_path = self.root / "config.json"
        return json.loads(config_path.read_text()) if config_path.is_file() else {}

    def size_bytes(self) -> int:
        """Total size of the recorded files."""
        base = self.root if self.root.is_dir() else self.root.parent
        return sum((base / rel).stat().st_size for rel in self.files if (base / rel).exists())


def _model_files(root: Path) -> list[Path]:
    """Files whose hashes pin a model: everything but the sums file and hidden files."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != SUMS_FILE
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def hash_model_files(root: Path) -> dict[str, str]:
    """Map each file of a model (relative path) to its SHA-256."""
    base = root if root.is_dir() else root.parent
    return {p.relative_to(base).as_posix(): sha256_file(p) for p in _model_files(root)}


def read_sums(folder: Path) -> dict[str, str]:
    """Parse a `SHA256SUMS` file (`<hash>  <relative path>` per line)."""
    sums = {}
    path = folder / SUMS_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                digest, rel = line.split(maxsplit=1)
                sums[rel.strip().lstrip("*")] = digest
    return sums


def write_model_folder(folder: str | Path, tensors: Mapping[str, torch.Tensor],
                       config: Mapping[str, Any], card: str,
                       weights_name: str = "model.safetensors",
                       extra_text: Mapping[str, str] | None = None) -> Path:
    """Write a complete model folder: weights (config in metadata), config.json, CARD.md, sums.

    `extra_text` adds small text files by name (e.g. `captions.txt`), covered by the sums too.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if "family" not in config:
        raise ConfigError("config has no 'family'", field="config.family",
                          fix="name the model family (e.g. 'diffusion', 'clip')")
    save_weights(folder / weights_name, tensors, config=dict(config))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "CARD.md", card)
    for name, text in (extra_text or {}).items():
        atomic_write_text(folder / name, text)
    write_sums(folder)
    return folder


def half_precision_copy(name_or_path: str, out: str | Path) -> Path:
    """Write `out`: the model's folder with float32 tensors stored as float16 (config, card kept).

    Loaders copy weights into float32 modules, so the copy runs as before with every weight
    rounded to fp16 (a new model: its hash and therefore its recipes differ).
    """
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists", field="out", fix="pick a new folder")
    registry = Registry()
    entry = registry.get(str(name_or_path))
    if entry.root.is_file():
        raise ConfigError("needs a model folder with config.json", field="model",
                          fix="pass an imagesynth model folder or name")
    tensors = {key: value.to(torch.float16) if value.dtype == torch.float32 else value
               for key, value in registry.load_state_dict(entry).items()}
    card_path = entry.root / "CARD.md"
    card = card_path.read_text() if card_path.is_file() else f"# {entry.name}\n"
    extra = {name: (entry.root / name).read_text(encoding="utf-8")
             for name in COPIED_TEXT_FILES if (entry.root / name).is_file()}
    return write_model_folder(out, tensors, entry.config(), card, extra_text=extra)


def write_sums(folder: str | Path) -> dict[str, str]:
    """(Re)write a model folder's SHA256SUMS, e.g. after its card was edited."""
    folder = Path(folder)
    sums = hash_model_files(folder)
    atomic_write_text(folder / SUMS_FILE,
                      "".join(f"{digest}  {rel}\n" for rel, digest in sorted(sums.items())))
    return sums


class Registry:
    """Bundled models (repo `models/`) plus user models recorded in `registry.json`."""

    def __init__(self, state_dir: Path | None = None, bundled_dir: Path | None = None):
        self.state_file = (state_dir or home()) / "registry.json"
        self.bundled_dir = bundled_dir or bundled_models_dir()

    def _read_user(self) -> dict[str, dict]:
        if not self.state_file.is_file():
            return {}
        try:
            return json.loads(self.state_file.read_text()).get("models", {})
        except json.JSONDecodeError:
            raise IntegrityError(f"{self.state_file} is not valid JSON", field="registry",
                                 fix="restore it or delete it and re-add your models") from None

    def _write_user(self, models: dict[str, dict]) -> None:
        atomic_write_text(self.state_file,
                          json.dumps({"version": 1, "models": models}, indent=2, sort_keys=True))

    def bundled(self) -> list[ModelEntry]:
        """Model folders shipped in the repository's `models/` directory."""
        if not self.bundled_dir.is_dir():
            return []
        entries = []
        for folder in sorted(p for p in self.bundled_dir.iterdir() if p.is_dir()):
            if not (folder / "config.json").is_file():
                continue
            config = json.loads((folder / "config.json").read_text())
            entries.append(ModelEntry(name=folder.name, path=str(folder), source="bundled",
                                      family=config.get("family", "unknown"),
                                      files=read_sums(folder)))
        return entries

    def entries(self) -> list[ModelEntry]:
        """All models: bundled first, then user-registered."""
        user = [ModelEntry(**data) for data in self._read_user().values()]
        return self.bundled() + sorted(user, key=lambda e: e.name)

    def get(self, name_or_path: str) -> ModelEntry:
        """Resolve a registered/bundled name, or an unregistered local folder/file path."""
        for entry in self.entries():
            if entry.name == name_or_path:
                return entry
        path = Path(name_or_path).expanduser()
        if path.is_dir() and (path / SUMS_FILE).is_file() and (path / "config.json").is_file():
            # A model folder carries its own hashes: loading it verifies against them.
            family = json.loads((path / "config.json").read_text()).get("family", "unknown")
            return ModelEntry(name=path.resolve().name, path=str(path.resolve()), source="path",
                              family=family, files=read_sums(path))
        if path.exists():
            return self._describe(path.resolve(), name=path.stem, source="path")
        known = ", ".join(e.name for e in self.entries()) or "none yet"
        raise ModelNotFoundError(f"no model named {name_or_path!r} (known: {known})",
                                 field="model", fix="use `imagesynth models list`, or a path")

    def _describe(self, path: Path, name: str, source: str,
                  trust_pickle: str | None = None,
                  prediction_type: str | None = None, config: str | None = None) -> ModelEntry:
        """Validate a folder or weights file and build its entry with fresh hashes."""
        from .sd.loading import describe_sd, is_sd_path

        if is_sd_path(path, trust_pickle=trust_pickle):
            details = describe_sd(path, prediction_type=prediction_type,
                                  trust_pickle=trust_pickle, config=config)
            return ModelEntry(name=name, path=str(path), source=source, family=SD_FAMILY,
                              files=hash_model_files(path),
                              added=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              trusted_pickle=trust_pickle, details=details)
        for option, value in (("prediction_type", prediction_type), ("config", config)):
            if value is not None:
                raise UsageError(f"only Stable Diffusion weights take {option}", field=option,
                                 fix=f"leave --{option.replace('_', '-')} out")
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(f"{path} has no config.json", field="path",
                                         fix="a model folder needs config.json and weights")
            weights = [p for p in _model_files(path) if p.suffix.lower() in WEIGHT_SUFFIXES]
            family = json.loads((path / "config.json").read_text()).get("family", "unknown")
        elif path.suffix.lower() in WEIGHT_SUFFIXES:
            weights, family = [path], "weights"
        else:
            raise UsageError(f"{path} is neither a model folder nor a weights file",
                             field="path", fix="pass a folder with config.json or a "
                             ".safetensors file")
        if not weights:
            raise ModelNotFoundError(f"{path} contains no weights file", field="path",
                                     fix="add a .safetensors file")
        for weight in weights:
            if weight.suffix.lower() in SAFETENSORS_SUFFIXES:
                read_safetensors_header(weight)
            else:
                load_weights(weight, trust_pickle=trust_pickle, check_finite=False)
        return ModelEntry(name=name, path=str(path), source=source, family=family,
                          files=hash_model_files(path),
                          added=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          trusted_pickle=trust_pickle)

    def add(self, path: str | Path, name: str | None = None,
            trust_pickle: str | None = None, prediction_type: str | None = None,
            config: str | Path | None = None) -> ModelEntry:
        """Validate and register a local model folder or weights file, pinning its hashes."""
        path = Path(path).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"{path} does not exist", field="path",
                                     fix="pass the path of a model folder or weights file")
        name = name or path.stem
        if any(e.name == name for e in self.bundled()):
            raise UsageError(f"{name!r} is the name of a bundled model", field="name",
                             fix="choose another --name")
        entry = self._describe(path.resolve(), name=name, source="user",
                               trust_pickle=trust_pickle, prediction_type=prediction_type,
                               config=None if config is None else str(config))
        models = self._read_user()
        models[name] = asdict(entry)
        self._write_user(models)
        return entry

    def remove(self, name: str) -> None:
        """Forget a user model (its files are left alone)."""
        models = self._read_user()
        if name not in models:
            raise ModelNotFoundError(f"no user model named {name!r}", field="name")
        del models[name]
        self._write_user(models)

    def verify(self, entry: ModelEntry) -> list[str]:
        """Re-hash a model's files; return a list of problems (empty when intact)."""
        root = entry.root
        if not root.exists():
            return [f"{root} is missing"]
        if not entry.files:
            return [f"no recorded hashes for {entry.name} (no {SUMS_FILE})"]
        base = root if root.is_dir() else root.parent
        problems = []
        for rel, expected in sorted(entry.files.items()):
            path = base / rel
            if not path.is_file():
                problems.append(f"{rel} is missing")
            elif sha256_file(path) != expected:
                problems.append(f"{rel} changed (SHA-256 differs from the recorded one)")
        return problems

    def load_state_dict(self, entry: ModelEntry, weights_name: str | None = None,
                        verify: bool = True) -> dict[str, torch.Tensor]:
        """Load a model's weights through the safe loader, verifying hashes first."""
        if verify:
            problems = self.verify(entry) if entry.files else []
            if problems:
                raise IntegrityError(f"model {entry.name!r}: {problems[0]}", field="model",
                                     fix="restore the original files or re-add the model")
        root = entry.root
        if root.is_file():
            return load_weights(root, trust_pickle=entry.trusted_pickle)
        candidates = [p for p in _model_files(root) if p.suffix.lower() in WEIGHT_SUFFIXES]
        if weights_name is not None:
            candidates = [p for p in candidates if p.name == weights_name]
        if len(candidates) != 1:
            raise CheckpointError(f"model {entry.name!r} has {len(candidates)} matching weight "
                                  "files", field="weights", fix="name the file to load")
        return load_weights(candidates[0], trust_pickle=entry.trusted_pickle)
