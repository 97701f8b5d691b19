"""CLIP BPE tokenizers built offline from the vocabulary OpenAI's CLIP ships (no download).

Stable Diffusion single files carry no tokenizer. Every SD text encoder (CLIP ViT-L/14, OpenCLIP
ViT-H/14 and ViT-bigG/14) uses the same 49,408-token byte-level BPE, so the Hugging Face
`CLIPTokenizer` files (`vocab.json`, `merges.txt`) are rebuilt here from
`clip_bpe_simple_vocab_16e6.txt.gz` (OpenAI CLIP, MIT licence; the file open_clip also ships) the
way OpenAI's `SimpleTokenizer` builds its vocabulary. SD1 pads with `<|endoftext|>`; SD2 and
SDXL's second encoder pad with `!` (id 0), as their diffusers tokenizer folders do.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from ..io.files import atomic_write_text

BPE_FILE = Path(__file__).with_name("clip_bpe_simple_vocab_16e6.txt.gz")
#: merges OpenAI's CLIP uses: 49,408 tokens = 512 byte symbols + these + 2 special tokens
FULL_MERGES = 49152 - 256 - 2
START, END = "<|startoftext|>", "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


@functools.lru_cache(maxsize=4)
def _merges(num_merges: int) -> tuple[tuple[str, str], ...]:
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1:num_merges + 1])


def clip_vocabulary(num_merges: int = FULL_MERGES) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges) of CLIP's BPE truncated to its first `num_merges` merges."""
    merges = list(_merges(num_merges))
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: str | Path, *, pad_token: str = END, max_length: int = 77,
                         num_merges: int = FULL_MERGES) -> Path:
    """Write a `CLIPTokenizer` folder (vocab, merges, configs) loadable with `from_pretrained`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocabulary(num_merges)
    atomic_write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt",
                      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": pad_token}
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
              "do_lower_case": True, "errors": "replace", **special}
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    return folder


def load_clip_tokenizer(folder: str | Path | None = None, *, pad_token: str = END,
                        max_length: int = 77, num_merges: int = FULL_MERGES):
    """A transformers `CLIPTokenizer`: from `folder` when given, else built from the bundled BPE."""
    from transformers import CLIPTokenizer

    if folder is not None:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    from ..paths import cache_dir

    pad_name = "exclamation" if pad_token == "!" else "eos"
    cache = cache_dir("tokenizers", f"clip-{num_merges}-{max_length}-pad-{pad_name}")
    if not (cache / "merges.txt").is_file():
        write_clip_tokenizer(cache, pad_token=pad_token, max_length=max_length,
                             num_merges=num_merges)
    return CLIPTokenizer.from_pretrained(str(cache), local_files_only=True)
