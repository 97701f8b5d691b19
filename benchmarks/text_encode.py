"""Text-encoder throughput: prompts/s at a given batch size, uncached and cached. Prints JSON."""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from imagesynth.text import CachedTextEncoder, load_text_encoder

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "black"]
SHAPES = ["circle", "square", "triangle"]
PLACES = ["", " on the left", " on the right", " at the top", " at the bottom"]


def prompts(count: int) -> list[str]:
    """Distinct, realistic captions (so the cache cannot short-circuit the uncached pass)."""
    base = [f"a {c} {s}{p}" for c in COLOURS for s in SHAPES for p in PLACES]
    return [f"{base[i % len(base)]}, variant {i}" for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--count", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    encoder = load_text_encoder(args.encoder, max_length=args.max_length)
    load_s = time.perf_counter() - start
    texts = prompts(args.count)
    encoder(texts[: args.batch])  # warm-up
    batches = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]

    start = time.perf_counter()
    for batch in batches:
        encoder(batch)
    uncached_s = time.perf_counter() - start

    cached = CachedTextEncoder(encoder)
    for batch in batches:
        cached(batch)
    start = time.perf_counter()
    for batch in batches:
        cached(batch)
    cached_s = time.perf_counter() - start

    print(json.dumps({
        "benchmark": "text_encode", "encoder": encoder.name, "max_length": encoder.max_length,
        "batch": args.batch, "prompts": len(texts), "load_seconds": round(load_s, 2),
        "prompts_per_second": round(len(texts) / uncached_s, 1),
        "cached_prompts_per_second": round(len(texts) / cached_s, 1),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
