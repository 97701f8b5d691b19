"""Captioned emoji data set from the npm packages emoji-datasource-twitter / -google.

The packages are fetched with the ordinary npm client (`npm pack NAME`) into the cache, reused
from there afterwards (no network), and extracted with tarfile's "data" filter, which refuses
absolute paths, `..` and links out of the folder. Each package ships `emoji.json` (name, short
names, category, ...) and 64×64 RGBA PNGs under `img/<style>/64/`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..config import to_dict
from ..errors import ConfigError, DataError, ExternalToolError
from ..io.files import sha256_file
from ..io.images import open_image, parse_colour
from ..paths import cache_dir
from .card import BuildSummary, DatasetWriter, ProgressCallback, render_card

STYLES: dict[str, dict[str, str]] = {
    "twitter": {"package": "emoji-datasource-twitter", "artwork": "Twemoji",
                "licence": "CC-BY 4.0",
                "attribution": "Twemoji graphics © Twitter, Inc. and other contributors "
                               "(https://github.com/jdecked/twemoji), licensed under CC-BY 4.0 "
                               "(https://creativecommons.org/licenses/by/4.0/)."},
    "google": {"package": "emoji-datasource-google", "artwork": "Noto Emoji",
               "licence": "Apache-2.0",
               "attribution": "Noto Emoji graphics © Google Inc. "
                              "(https://github.com/googlefonts/noto-emoji), licensed under the "
                              "Apache License 2.0 (https://www.apache.org/licenses/LICENSE-2.0)."},
}
_TARBALL_RE = re.compile(r"^(?P<package>.+)-(?P<version>\d+\.\d+\.\d+[^/]*)\.tgz$")


@dataclass(frozen=True)
class EmojiConfig:
    """Parameters of an emoji build."""

    styles: tuple[str, ...] = ("twitter", "google")
    size: int = 64
    background: str = "white"
    skin_tones: bool = False
    val_fraction: float = 0.05

    def __post_init__(self):
        if not self.styles:
            raise ConfigError("name at least one style", field="styles",
                              fix=f"use one or more of {', '.join(STYLES)}")
        for style in self.styles:
            if style not in STYLES:
                raise ConfigError(f"unknown style {style!r}", field="styles",
                                  fix=f"use one or more of {', '.join(STYLES)}")
        if not 8 <= self.size <= 1024:
            raise ConfigError(f"must lie in [8, 1024], got {self.size}", field="size")
        parse_background(self.background)


@dataclass(frozen=True)
class EmojiPackage:
    """An extracted npm package: its folder, version and tarball hash."""

    style: str
    name: str
    version: str
    root: Path
    tarball_sha256: str


def parse_background(text: str) -> tuple[int, int, int]:
    """An RGB colour from a name ("white") or "#RRGGBB"."""
    return parse_colour(text, "background")


def _cached_tarball(package: str, folder: Path) -> Path | None:
    """The newest cached tarball of `package` (by version), if any."""
    found = []
    for path in folder.glob(f"{package}-*.tgz"):
        match = _TARBALL_RE.match(path.name)
        if match and match["package"] == package:
            version = tuple(int(p) if p.isdigit() else 0
                            for p in re.split(r"[.-]", match["version"]))
            found.append((version, path))
    return max(found)[1] if found else None


def npm_pack(package: str, destination: Path) -> Path:
    """Run `npm pack PACKAGE` into `destination` and return the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise ExternalToolError(
            "npm is not installed, and the emoji artwork comes from the npm registry",
            field="npm", fix="install Node.js/npm (e.g. `apt-get install npm`), or copy "
            f"a {package}-VERSION.tgz made by `npm pack {package}` into {destination}")
    try:
        completed = subprocess.run(
            [npm, "pack", package, "--json", "--pack-destination", str(destination)],
            capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        raise ExternalToolError(f"`npm pack {package}` took over 15 minutes", field="npm",
                                fix="check the network connection to the npm registry") from None
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExternalToolError(f"`npm pack {package}` failed: {last}", field="npm",
                                fix="check that the npm registry is reachable "
                                    "(`npm ping`) and retry")
    try:
        filename = json.loads(completed.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        raise ExternalToolError(f"`npm pack {package}` printed no tarball name", field="npm",
                                fix="upgrade npm (needs `npm pack --json`)") from None
    tarball = destination / filename
    if not tarball.is_file():
        raise ExternalToolError(f"`npm pack {package}` did not write {tarball}", field="npm")
    return tarball


def fetch_package(style: str, refresh: bool = False) -> EmojiPackage:
    """Get the style's package from the cache, or `npm pack` it; extract it once, safely."""
    package = STYLES[style]["package"]
    folder = cache_dir("npm")
    tarball = None if refresh else _cached_tarball(package, folder)
    if tarball is None:
        tarball = npm_pack(package, folder)
    version = _TARBALL_RE.match(tarball.name)["version"]
    root = folder / f"{package}-{version}"
    marker = root / ".extracted"
    if not marker.is_file():
        _extract(tarball, root, style)
        marker.write_text(sha256_file(tarball), encoding="utf-8")
    return EmojiPackage(style=style, name=package, version=version, root=root / "package",
                        tarball_sha256=marker.read_text(encoding="utf-8").strip())


def _extract(tarball: Path, root: Path, style: str) -> None:
    """Extract emoji.json, LICENSE and the 64 px PNGs of `style` (nothing else is needed)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    wanted_prefix = f"package/img/{style}/64/"
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            members = [m for m in archive.getmembers()
                       if m.name in ("package/emoji.json", "package/LICENSE",
                                     "package/package.json")
                       or (m.name.startswith(wanted_prefix) and m.name.endswith(".png"))]
            archive.extractall(root, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise DataError(f"{tarball} is not a readable npm tarball ({exc})", field="tarball",
                        fix=f"delete {tarball} and run the command again") from None
    if not (root / "package" / "emoji.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        raise DataError(f"{tarball} has no package/emoji.json", field="tarball",
                        fix=f"delete {tarball} and run the command again")


def emoji_entries(package: EmojiPackage, skin_tones: bool = False) -> list[dict]:
    """The package's emoji (base, plus skin-tone variants when asked) that have art in its style."""
    try:
        data = json.loads((package.root / "emoji.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {package.root / 'emoji.json'} ({exc})", field="emoji.json",
                        fix="delete the cached package and run the command again") from None
    flag = f"has_img_{package.style}"
    entries = []
    for item in sorted(data, key=lambda e: e.get("sort_order", 0)):
        name = (item.get("name") or item.get("short_name") or "").strip()
        if not name or not item.get("image"):
            continue
        base = {"name": name.lower(), "short_names": list(item.get("short_names") or []),
                "category": item.get("category") or "", "subcategory":
                item.get("subcategory") or "", "unified": item.get("unified", ""),
                "sort_order": item.get("sort_order", 0)}
        if item.get(flag):
            entries.append({**base, "image": item["image"], "skin_tone": None})
        if skin_tones:
            for tone, variant in sorted((item.get("skin_variations") or {}).items()):
                if variant.get(flag) and variant.get("image"):
                    entries.append({**base, "image": variant["image"], "skin_tone": tone,
                                    "unified": variant.get("unified", base["unified"])})
    return entries


_TONE_NAMES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium",
               "1F3FE": "medium-dark", "1F3FF": "dark"}


def emoji_captions(entry: dict, style: str) -> list[str]:
    """Primary caption first ("grinning face, twitter style"), then alternatives."""
    name = entry["name"]
    if entry.get("skin_tone"):
        tones = [_TONE_NAMES.get(part, part) for part in entry["skin_tone"].split("-")]
        name = f"{name}, {' and '.join(tones)} skin tone"
    captions = [f"{name}, {style} style"]
    for short in entry["short_names"]:
        phrase = short.replace("_", " ").replace("-", " ").strip()
        if phrase and phrase != entry["name"]:
            captions.append(f"{phrase}, {style} style")
    category = entry["category"].lower()
    if category:
        captions.append(f"a {style} style emoji of {name}, {category}")
    return list(dict.fromkeys(captions))


def compose(art: Image.Image, background: tuple[int, int, int], size: int) -> Image.Image:
    """Alpha-composite RGBA art over a solid background, then resize to size×size."""
    rgba = art.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
    if rgb.size != (size, size):
        # Lanczos with reducing_gap pre-shrinks by box filtering: sharp and alias-free
        rgb = rgb.resize((size, size), Image.LANCZOS, reducing_gap=2.0)
    return rgb


def build_emoji_dataset(out: str | Path, config: EmojiConfig = EmojiConfig(),
                        progress: ProgressCallback | None = None,
                        refresh: bool = False) -> BuildSummary:
    """Build the captioned emoji set for `config.styles` into `out`."""
    started = time.perf_counter()
    packages = [fetch_package(style, refresh=refresh) for style in config.styles]
    fetch_seconds = time.perf_counter() - started
    background = parse_background(config.background)
    work = [(package, entry) for package in packages
            for entry in emoji_entries(package, config.skin_tones)]
    per_style = {package.style: 0 for package in packages}
    skipped: list[str] = []
    with DatasetWriter(out, config.val_fraction) as writer:
        for done, (package, entry) in enumerate(work, start=1):
            art_path = package.root / "img" / package.style / "64" / entry["image"]
            if not art_path.is_file():
                skipped.append(f"{package.style}/{entry['image']}")
                continue
            art = open_image(art_path, mode=None, field="emoji image")
            captions = emoji_captions(entry, package.style)
            stem = Path(entry["image"]).stem
            writer.add(compose(art, background, config.size), f"{package.style}/{stem}",
                       {"caption": captions[0], "captions": captions, "style": package.style,
                        "name": entry["name"], "short_names": entry["short_names"],
                        "category": entry["category"], "subcategory": entry["subcategory"],
                        "unified": entry["unified"], "skin_tone": entry["skin_tone"]})
            per_style[package.style] += 1
            if progress is not None:
                progress(done, len(work))
        card = _card(out, config, packages, per_style, skipped)
        return writer.finish(card, details={"per_style": per_style, "skipped": len(skipped),
                                            "fetch_seconds": fetch_seconds,
                                            "versions": {p.style: p.version for p in packages}})


def _card(out, config: EmojiConfig, packages: list[EmojiPackage], per_style: dict,
          skipped: list[str]) -> str:
    """DATASET.md for an emoji build, with the licence attributions of each style."""
    command = (f"imagesynth data emoji --out {out} --styles {','.join(config.styles)} "
               f"--size {config.size} --background '{config.background}'"
               + (" --skin-tones" if config.skin_tones else ""))
    sources = "\n".join(
        f"- `{p.name}@{p.version}` (`npm pack {p.name}`), tarball SHA-256 `{p.tarball_sha256}`"
        for p in packages)
    licences = "\n".join(
        f"- **{p.style}** ({STYLES[p.style]['artwork']}, {STYLES[p.style]['licence']}): "
        f"{STYLES[p.style]['attribution']}" for p in packages)
    counts = {f"{style} images": n for style, n in per_style.items()}
    counts["skipped (no artwork)"] = len(skipped)
    return render_card(
        "Emoji", "Emoji artwork composited on a solid background, captioned from the emoji's "
        "name, short names, category and a style phrase (\"grinning face, twitter style\").",
        command=command, parameters=to_dict(config), counts=counts,
        sections={"Sources": sources + "\n\nMetadata (`emoji.json`) comes from the "
                  "emoji-data project by Cal Henderson (https://github.com/iamcal/emoji-data), "
                  "MIT licence.",
                  "Licences and attributions": licences + "\n\nIf you redistribute this data "
                  "set or images made from it, keep these attributions."})
