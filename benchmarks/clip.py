"""CLIP application speed: images/s embedded, queries/s on a 10k index, training img/s. Prints JSON.

    python benchmarks/clip.py                       # all three parts, CPU
    python benchmarks/clip.py --train-preset shapes --train-steps 24 --train-log-every 4

Embedding speed uses randomly initialised imagesynth CLIPs of the `shapes` (32 px) and `emoji`
(64 px) preset architectures (speed does not depend on the weights), plus end-to-end indexing of
a folder of PNGs. Query speed uses a 10,000-row index of random unit vectors. Training speed is
measured on a small synthetic ShapesWorld folder from the training loop's own per-window log
(median over windows after the first), so model loading and caption encoding are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from timing import median_seconds
from imagesynth.apps import SearchIndex
from imagesynth.apps.search_index import faiss_module
from imagesynth.clip import CLIPScorer
from imagesynth.families.clip import PRESETS, train_clip
from imagesynth.data import build_shapes_dataset
from imagesynth.data.shapes_dataset import ShapesConfig
from imagesynth.nets.clip import CLIPModel
from imagesynth.text import load_text_encoder


def embedding_speed(preset: str, batch_size: int, device: str, encoder) -> dict:
    """Images/s through the scorer (preprocess + image tower + projection), no_grad."""
    config = PRESETS[preset][0]
    scorer = CLIPScorer(CLIPModel(config).to(device), encoder, name=preset)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, config.image_size, config.image_size,
                        generator=generator).to(device)

    def run():
        with torch.no_grad():
            scorer.embed_image(images)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds(run, repeats=5)
    return {"preset": preset, "image_size": config.image_size, "batch_size": batch_size,
            "images_per_s": round(batch_size / seconds, 1)}


def indexing_speed(encoder, device: str, count: int, workdir: Path) -> dict:
    """End-to-end `SearchIndex.update`: hash + decode + embed + store, 32 px PNGs."""
    folder = workdir / "index-images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"{i:05d}.png")
    scorer = CLIPScorer(CLIPModel(PRESETS["shapes"][0]).to(device), encoder, name="shapes")
    with SearchIndex(workdir / "files.sqlite", create=True) as index:
        start = time.perf_counter()
        report = index.update(folder, scorer, "shapes", batch_size=64)
        seconds = time.perf_counter() - start
    return {"preset": "shapes", "images": report.added, "batch_size": 64,
            "images_per_s": round(report.added / seconds, 1)}


def query_speed(rows: int, dim: int, top_k: int, workdir: Path) -> dict:
    """Queries/s on an index of `rows` random unit vectors, per backend."""
    path = workdir / "queries.sqlite"
    SearchIndex(path, create=True).close()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT INTO images (path, sha256, size, mtime_ns, width, height, vector)"
                       " VALUES (?, ?, 0, 0, 32, 32, ?)",
                       [(f"/synthetic/{i}.png", f"{i:064x}", v.tobytes())
                        for i, v in enumerate(vectors)])
    db.close()
    queries = rng.standard_normal((200, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    result = {"rows": rows, "dim": dim, "top_k": top_k}
    with SearchIndex(path) as index:
        start = time.perf_counter()
        index.search_vector(queries[0], top_k)  # loads the vectors once
        result["load_s"] = round(time.perf_counter() - start, 3)
        for backend in ("numpy", "faiss"):
            if backend == "faiss" and faiss_module() is None:
                result["faiss_queries_per_s"] = None
                continue
            index.search_vector(queries[0], top_k, backend=backend)
            start = time.perf_counter()
            for query in queries:
                index.search_vector(query, top_k, backend=backend)
            result[f"{backend}_queries_per_s"] = round(len(queries) /
                                                       (time.perf_counter() - start), 1)
    return result


def training_speed(preset: str, steps: int, log_every: int, count: int, workdir: Path) -> dict:
    """Training img/s of `train_clip`: median of the loop's logged windows after the first."""
    size = PRESETS[preset][0].image_size
    data = workdir / "shapes"
    build_shapes_dataset(data, ShapesConfig(size=size, count=count, seed=0))
    train_clip(data, workdir / "run", preset=preset,
               overrides=dict(max_steps=steps, log_every=log_every, eval_every=10**9,
                              checkpoint_every=10**9),
               show_progress=False, resume=False)
    log = [json.loads(line) for line in (workdir / "run" / "log.jsonl").read_text().splitlines()]
    windows = [entry["images_per_second"] for entry in log if "images_per_second" in entry]
    return {"preset": preset, "image_size": size,
            "batch_size": PRESETS[preset][1]["batch_size"], "steps": steps,
            "log_every": log_every, "images": count,
            "train_images_per_s": round(float(np.median(windows[1:] or windows)), 1)}


def main() -> None:
    """Run the three measurements and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--index-files", type=int, default=512)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--train-preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--train-log-every", type=int, default=10)
    parser.add_argument("--train-images", type=int, default=400)
    args = parser.parse_args()
    os.environ.setdefault("IMAGESYNTH_HOME", tempfile.mkdtemp(prefix="imagesynth-bench-"))
    encoder = load_text_encoder("minilm")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        report = {
            "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "machine": platform.machine(),
            "embed": [embedding_speed(p, args.batch_size, args.device, encoder)
                      for p in ("shapes", "emoji")],
            "index_files": indexing_speed(encoder, args.device, args.index_files, workdir),
            "query": query_speed(args.rows, args.dim, 10, workdir),
            "train": training_speed(args.train_preset, args.train_steps, args.train_log_every,
                                    args.train_images, workdir),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
