"""Time and peak memory of FD, KID and precision/recall on random features, beside torch-fidelity.

Prints one JSON object. Memory is the peak resident set size (RSS) of a fresh child process per
measurement, minus its RSS just before the call (after the features are loaded), read from
/proc/self/status VmHWM; RSS counts NumPy, torch and BLAS allocations alike, which
tracemalloc would miss. torch-fidelity is imported only here and needs the test environment
(`pip install -e '.[dev]'`); without it the reference columns are null.

    python benchmarks/metrics.py            # 10k × 10k at d = 512 and 2048
    python benchmarks/metrics.py --quick    # 2k × 2k at d = 64 and 256
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time

import numpy as np
import torch


def _rss_peak_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_now_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d)
    real = rng.standard_normal((n, d), dtype=np.float32) @ mixing
    fake = 1.1 * (rng.standard_normal((n, d), dtype=np.float32) @ mixing) + 0.1
    return real, fake


def _run(task: str, n: int, d: int) -> dict:
    """Run one measurement; executed in a fresh process."""
    real, fake = _features(n, d, seed=0)
    if task.startswith("torch-fidelity"):
        import torch_fidelity.metric_fid as tf_fid
        import torch_fidelity.metric_kid as tf_kid
        import torch_fidelity.metric_prc as tf_prc
        real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)
    else:
        from imagesynth.metrics import fd_from_features, kid, precision_recall
    _reset_peak()
    before = _rss_now_bytes()
    start = time.perf_counter()
    if task == "imagesynth:fd":
        value = fd_from_features(fake, real)
    elif task == "imagesynth:kid":
        value = kid(fake, real, num_subsets=100, subset_size=1000).mean
    elif task == "imagesynth:pr":
        result = precision_recall(real, fake, k=3)
        value = [result.precision, result.recall]
    elif task == "torch-fidelity:fd":
        value = tf_fid.fid_statistics_to_metric(tf_fid.fid_features_to_statistics(fake_t),
                                                tf_fid.fid_features_to_statistics(real_t),
                                                False)["frechet_inception_distance"]
    elif task == "torch-fidelity:kid":
        value = tf_kid.kid_features_to_metric(
            fake_t, real_t, kid_subsets=100, kid_subset_size=1000, kid_kernel="poly",
            kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
            rng_seed=2020, verbose=False)["kernel_inception_distance_mean"]
    elif task == "torch-fidelity:pr":
        value = list(tf_prc.calculate_precision_recall_full(fake_t, real_t, 3, 10000))
    else:
        raise ValueError(task)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3),
            "peak_extra_rss_mb": round((_rss_peak_bytes() - before) / 1e6, 1), "value": value}


def _child(args, queue):
    try:
        queue.put(_run(*args))
    except ImportError as exc:
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(task: str, n: int, d: int) -> dict:
    """Measure `task` in a fresh process so peaks do not leak between measurements."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=((task, n, d), queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    """Parse flags, run every (dims, metric, implementation) cell, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k samples at d = 64, 256")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--dims", type=int, nargs="*", default=None)
    args = parser.parse_args()
    n = args.samples or (2000 if args.quick else 10_000)
    dims = args.dims or ([64, 256] if args.quick else [512, 2048])
    results = []
    for d in dims:
        for metric in ("fd", "kid", "pr"):
            row = {"samples_per_set": n, "dims": d, "metric": metric}
            for impl in ("imagesynth", "torch-fidelity"):
                row[impl] = measure(f"{impl}:{metric}", n, d)
            results.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"machine": {"cpus": multiprocessing.cpu_count(),
                                  "torch_threads": torch.get_num_threads(),
                                  "python": platform.python_version(),
                                  "numpy": np.__version__, "torch": torch.__version__},
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
