"""Training throughput (img/s): the shared loop vs a plain diffusers-style loop, and fp32 vs bf16.

Both train the same randomly initialised UNet (preset `shapes` by default, 32 px) on the same
random uint8 batch contents with the EDM loss; the plain loop is what diffusers' example scripts
do (AdamW, zero_grad, backward, clip, step, EMA update), without checkpoints or logging.
Prints JSON with medians over repeats. This CPU has no native bf16 (AVX2 only): bf16 autocast is
measured anyway.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time

import torch

from imagesynth.diffusion import EDMDenoiser
from imagesynth.families.diffusion import DiffusionObjective
from imagesynth.train.datasets import CaptionedTrainingSet, TextTable
from imagesynth.nets.unet import build_unet, parameter_count, unet_config
from imagesynth.train import TrainConfig, train


def make_parts(preset: str, size: int, count: int):
    torch.manual_seed(0)
    denoiser = EDMDenoiser(build_unet(unet_config(preset, sample_size=size, channels=3)))
    table = TextTable(torch.randn(9, 12, 384), torch.ones(9, 12), {str(i): i for i in range(9)}, 0)
    data = CaptionedTrainingSet(torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8),
                                torch.randint(1, 9, (count, 1)))
    return denoiser, DiffusionObjective(table, 0.1, latent=False), data


def ours(preset, size, batch, steps, precision) -> float:
    denoiser, objective, data = make_parts(preset, size, batch * steps)
    config = TrainConfig(max_steps=steps, batch_size=batch, precision=precision,
                         checkpoint_every=10_000, log_every=10_000, ema_decay=0.999)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        train(denoiser, data, objective, config, run_dir, show_progress=False)
        return batch * steps / (time.perf_counter() - start)


def plain(preset, size, batch, steps, precision) -> float:
    denoiser, objective, data = make_parts(preset, size, batch * steps)
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=2e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    start = time.perf_counter()
    for batch_data in loader:
        with autocast:
            loss, _ = objective(denoiser, batch_data, generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), denoiser.parameters()):
                e.lerp_(p, 0.001)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    preset, size = os.environ.get("PRESET", "shapes"), int(os.environ.get("SIZE", "32"))
    batch, steps = int(os.environ.get("BATCH", "32")), int(os.environ.get("STEPS", "6"))
    repeats = int(os.environ.get("REPEATS", "3"))
    # BF16=0 skips the bf16 variant (about 20x slower on CPUs without native bf16).
    with_bf16 = os.environ.get("BF16", "1") != "0"
    results = {}
    # Interleave the runs so machine load drifts affect every variant alike.
    samples = {k: [] for k in ("ours_fp32", "plain_fp32") + (("ours_bf16",) if with_bf16 else ())}
    # One untimed pass of each variant first: the first run in a process pays one-off warm-up.
    ours(preset, size, batch, 1, "fp32"), plain(preset, size, batch, 1, "fp32")
    for _ in range(repeats):
        samples["ours_fp32"].append(ours(preset, size, batch, steps, "fp32"))
        samples["plain_fp32"].append(plain(preset, size, batch, steps, "fp32"))
        if with_bf16:
            samples["ours_bf16"].append(ours(preset, size, batch, steps, "bf16"))
    for key, values in samples.items():
        results[key] = {"images_per_second_median": round(statistics.median(values), 2),
                        "all": [round(v, 2) for v in values]}
    results["ours_over_plain_fp32"] = round(results["ours_fp32"]["images_per_second_median"]
                                            / results["plain_fp32"]["images_per_second_median"], 3)
    if with_bf16:
        results["bf16_over_fp32"] = round(results["ours_bf16"]["images_per_second_median"]
                                          / results["ours_fp32"]["images_per_second_median"], 3)
    denoiser, _, _ = make_parts(preset, size, 1)
    print(json.dumps({"preset": preset, "image_size": size, "batch": batch, "steps": steps,
                      "parameters": parameter_count(denoiser), "torch_threads": torch.get_num_threads(),
                      **results}, indent=2))


if __name__ == "__main__":
    main()
