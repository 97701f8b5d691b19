"""Shared fixtures: an isolated state folder, and the MiniLM encoder loaded once."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory):
    """Keep registry, caches and npm tarballs of the test run out of the user's home."""
    previous = os.environ.get("IMAGESYNTH_HOME")
    os.environ["IMAGESYNTH_HOME"] = str(tmp_path_factory.mktemp("imagesynth-home"))
    yield
    if previous is None:
        os.environ.pop("IMAGESYNTH_HOME", None)
    else:
        os.environ["IMAGESYNTH_HOME"] = previous


@pytest.fixture(scope="session")
def minilm():
    """The real offline MiniLM text encoder (loads in a few seconds; shared by all tests)."""
    from imagesynth.text import load_text_encoder

    return load_text_encoder("minilm")


@pytest.fixture(scope="session")
def minilm_words():
    """MiniLM states plus its input word embeddings (`minilm+words`, 768 wide), loaded once."""
    from imagesynth.text import load_text_encoder

    return load_text_encoder("minilm+words")


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory):
    """`shapes_folder(count, size=16)`: a ShapesWorld folder (seed 0), built once per count and size."""
    from imagesynth.data import ShapesConfig, build_shapes_dataset

    built = {}

    def make(count: int, size: int = 16):
        if (count, size) not in built:
            root = tmp_path_factory.mktemp(f"shapes{size}-{count}") / "shapes"
            build_shapes_dataset(root, ShapesConfig(count=count, size=size, seed=0))
            built[count, size] = root
        return built[count, size]

    return make


@pytest.fixture(scope="session")
def tiny_diffusion_model(tmp_path_factory, minilm):
    """A 16 px pixel-space text-to-image model trained for 3 steps on 16 scenes (its folder)."""
    from imagesynth.data import ShapesConfig, build_shapes_dataset
    from imagesynth.families.diffusion import train_diffusion

    root = tmp_path_factory.mktemp("tiny-diffusion")
    build_shapes_dataset(root / "data", ShapesConfig(count=16, size=16, seed=0))
    result = train_diffusion(root / "data", root / "run", preset="tiny",
                             overrides=dict(max_steps=3, batch_size=4), show_progress=False,
                             text_encoder=minilm)
    return result.model_dir


@pytest.fixture(scope="session")
def tiny_clip_run(tmp_path_factory):
    """A tiny CLIP trained for 60 steps on a 16 px ShapesWorld folder: (root, FamilyRunResult)."""
    from imagesynth.families.clip import train_clip
    from imagesynth.data import ShapesConfig, build_shapes_dataset

    root = tmp_path_factory.mktemp("clip")
    build_shapes_dataset(root / "shapes", ShapesConfig(count=400, size=16, seed=0))
    result = train_clip(root / "shapes", root / "run", preset="tiny",
                        overrides=dict(max_steps=60, eval_every=30), show_progress=False)
    return root, result


@pytest.fixture(scope="session")
def studio_model(tmp_path_factory):
    """A tiny 16 px diffusion model registered as `tiny` in the test home (for studio tests)."""
    from studio_support import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("studio-model"))


@pytest.fixture(scope="module")
def studio(studio_model, tmp_path_factory):
    """A running studio server (real process, free loopback port) with the tiny model."""
    from studio_support import StudioProcess

    server = StudioProcess(tmp_path_factory.mktemp("studio") / "data").start()
    yield server
    server.stop()
