"""Print JSON: how often the ShapesWorld checker agrees with the generator, and rejects false
captions, on rendered scenes (same protocol as tests/test_data_shapes.py), plus build speed."""

from __future__ import annotations

import json
import sys
import tempfile
import time

import numpy as np

from imagesynth.data.shapes import render_scene, sample_scene, scene_satisfies
from imagesynth.data.shapes_check import check
from imagesynth.data.shapes_dataset import ShapesConfig, build_shapes_dataset


def main(count: int = 2000, size: int = 32) -> dict:
    """Agreement on own captions, rejection of another scene's false caption, timings."""
    rng = np.random.default_rng(1234)
    scenes = [sample_scene(rng, size, hold_out=False) for _ in range(count)]
    started = time.perf_counter()
    images = [render_scene(scene) for scene in scenes]
    render_seconds = time.perf_counter() - started
    started = time.perf_counter()
    agreed = sum(check(image, scene.caption).ok for scene, image in zip(scenes, images))
    check_seconds = time.perf_counter() - started
    false_pairs = [(image, scenes[(i + 1) % count].caption) for i, (scene, image)
                   in enumerate(zip(scenes, images))
                   if scene_satisfies(scene, scenes[(i + 1) % count].caption) is False]
    rejected = sum(not check(image, caption).ok for image, caption in false_pairs)
    with tempfile.TemporaryDirectory() as folder:
        build = build_shapes_dataset(f"{folder}/shapes", ShapesConfig(size=size))
    return {"scenes": count, "size": size, "agreement": agreed / count,
            "false_captions": len(false_pairs), "rejection": rejected / len(false_pairs),
            "render_ms_per_scene": 1000 * render_seconds / count,
            "check_ms_per_scene": 1000 * check_seconds / count,
            "build_10000_seconds": round(build.seconds, 2)}


if __name__ == "__main__":
    print(json.dumps(main(*map(int, sys.argv[1:])), indent=2))
