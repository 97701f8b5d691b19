"""Training throughput (img/s) of the shared loop in 1 and 2 processes on this machine (torchrun).

Each measurement launches `python -m torch.distributed.run --standalone --nproc-per-node N` on
this script in worker mode: every process trains the same randomly initialised UNet (preset
`shapes` by default, 32 px, EDM loss, random uint8 data, no text encoder) for the same global
batch and steps; gradients are averaged over gloo on the CPU (NCCL on CUDA). One thread per
process (OMP_NUM_THREADS=1), so N processes use N cores. Throughput is the mean of the loop's
logged `images_per_second` windows after the first (which holds start-up and warm-up); start-up
itself (imports, process group) is reported apart as `wall_seconds`.

    STEPS=30 BATCH=32 PRESET=shapes PROCESSES=1,2 python benchmarks/scale.py

Prints JSON. Launchers are listed in `LAUNCHERS`; Ray batch jobs (the `scale/` extra) belong
there as another entry with the same result shape.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STEPS = int(os.environ.get("STEPS", 30))
BATCH = int(os.environ.get("BATCH", 32))
PRESET = os.environ.get("PRESET", "shapes")
SIZE = int(os.environ.get("SIZE", 32))
PROCESSES = [int(n) for n in os.environ.get("PROCESSES", "1,2").split(",")]
LOG_EVERY = max(1, STEPS // 6)


def worker(run_dir: str) -> None:
    """Train under torchrun (every process runs this); rank 0 has logged the windows."""
    from imagesynth.diffusion import EDMDenoiser
    from imagesynth.families.diffusion import DiffusionObjective
    from imagesynth.nets.unet import build_unet, unet_config
    from imagesynth.train import TrainConfig, train
    from imagesynth.train.datasets import CaptionedTrainingSet, TextTable

    torch.manual_seed(0)
    denoiser = EDMDenoiser(build_unet(unet_config(PRESET, sample_size=SIZE, channels=3)))
    generator = torch.Generator().manual_seed(0)
    table = TextTable(torch.randn(9, 12, 384, generator=generator), torch.ones(9, 12),
                      {str(i): i for i in range(9)}, 0)
    count = BATCH * 8
    data = CaptionedTrainingSet(
        torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator),
        torch.randint(1, 9, (count, 1), generator=generator))
    config = TrainConfig(max_steps=STEPS, batch_size=BATCH, log_every=LOG_EVERY,
                         checkpoint_every=10 * STEPS, ema_decay=0.999)
    train(denoiser, data, DiffusionObjective(table, 0.1, latent=False), config, run_dir,
          show_progress=False)


def torchrun_throughput(processes: int) -> dict:
    """Launch `processes` local workers with torchrun; images/s of the global batch."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={processes}", __file__, "--worker", run_dir]
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        windows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text()
                   .splitlines()]
    rates = [w["images_per_second"] for w in windows[1:]] or [windows[0]["images_per_second"]]
    return {"processes": processes, "images_per_second": round(statistics.mean(rates), 2),
            "windows": [round(r, 2) for r in rates], "wall_seconds": round(wall, 1),
            "final_loss": round(windows[-1]["loss"], 5)}


#: name -> function(processes) -> result; Ray batch jobs add their entry here
LAUNCHERS = {"torchrun": torchrun_throughput}


def main() -> None:
    """Measure every launcher for each process count and print JSON."""
    results = {}
    for name, measure in LAUNCHERS.items():
        runs = [measure(n) for n in PROCESSES]
        base = runs[0]["images_per_second"]
        results[name] = {"runs": runs, "speedup": {
            str(run["processes"]): round(run["images_per_second"] / base, 3) for run in runs}}
    print(json.dumps({"benchmark": "training throughput, 1 vs N processes",
                      "preset": PRESET, "image_size": SIZE, "global_batch": BATCH,
                      "steps": STEPS, "cpu_cores": os.cpu_count(),
                      "device": "cuda" if torch.cuda.is_available() else "cpu",
                      "threads_per_process": 1, **results}, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
    else:
        main()
