"""A static HTML contact sheet of search results: relative image links, no external assets."""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from ..errors import ConfigError
from ..io.files import atomic_write_text
from .search_index import SearchResult

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
h1 { font-size: 1.2rem; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 168px; background: #fff; border: 1px solid #ddd; padding: 6px; }
figure img { width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated;
             background: #eee; display: block; }
figcaption { font-size: 0.75rem; word-break: break-all; margin-top: 4px; }
.score { font-weight: 600; }
"""


def _link(image: str, sheet_dir: Path) -> str:
    """A URL for `image` relative to the sheet's folder (a file URI across drives)."""
    try:
        relative = os.path.relpath(image, sheet_dir)
    except ValueError:  # different drive on Windows: no relative path exists
        return Path(image).as_uri()
    return quote(Path(relative).as_posix())


def render_contact_sheet(results: list[SearchResult], title: str, sheet_dir: Path) -> str:
    """The HTML text of a contact sheet for `results` saved in `sheet_dir`."""
    figures = []
    for result in results:
        href = html.escape(_link(result.path, sheet_dir), quote=True)
        name = html.escape(Path(result.path).name)
        figures.append(
            f'<figure><a href="{href}"><img src="{href}" alt="{name}" loading="lazy"></a>'
            f'<figcaption><span class="score">#{result.rank} · {result.score:.4f}</span>'
            f"<br>{name}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><div class=\"grid\">\n" + "\n".join(figures) +
            "\n</div></body></html>\n")


def write_contact_sheet(results: list[SearchResult], out: str | Path, title: str) -> Path:
    """Write the contact sheet atomically to `out` and return its path."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"{out.name} is not an .html file", field="html",
                          fix="pass a path ending in .html")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_contact_sheet(results, title, out.parent.resolve()))
    return out
