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
