"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import time

import numpy as np


def median_seconds(function, repeats: int) -> float:
    """Median seconds of `repeats` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
