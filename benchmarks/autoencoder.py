"""Autoencoder speed per preset: encode/decode img/s at batch 64 and training img/s. Prints JSON.

    python benchmarks/autoencoder.py                          # every preset, fp32, CPU
    python benchmarks/autoencoder.py --presets emoji-f4 --precision bf16 --repeats 5

Speed does not depend on the weights, so randomly initialised networks are timed. Encode and
decode run under `torch.no_grad()`; a training step is the family's objective (posterior
sample, decode, L1 + KL) plus backward and an AdamW step, as the shared loop runs it.
Figures are medians over `--repeats` timed calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from timing import median_seconds
from imagesynth.nets.autoencoder import PRESETS, Autoencoder, autoencoder_config
from imagesynth.families.autoencoder import LOOP_PRESETS, AutoencoderLoss, AutoencoderObjective


def _autocast(precision: str):
    if precision == "fp32":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def preset_speed(preset: str, batch_size: int, repeats: int, precision: str) -> dict:
    """Encode, decode and training images/s for one preset."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Autoencoder(autoencoder_config(preset)).eval()
    size = model.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1
    with torch.no_grad(), _autocast(precision):
        latents = model.encode(images)
        encode_s = median_seconds(lambda: model.encode(images), repeats)
        decode_s = median_seconds(lambda: model.decode(latents), repeats)

    train_batch = LOOP_PRESETS[preset]["batch_size"]
    batch = torch.randint(0, 256, (train_batch, 3, size, size), dtype=torch.uint8,
                          generator=generator)
    objective = AutoencoderObjective(AutoencoderLoss())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        with _autocast(precision):
            loss, _ = objective(model, batch, torch.Generator().manual_seed(1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_s = median_seconds(step, repeats)
    return {"preset": preset, "image_size": size, "latent_shape": list(latents.shape[1:]),
            "parameters": sum(p.numel() for p in model.parameters()),
            "batch_size": batch_size, "encode_images_per_second": batch_size / encode_s,
            "decode_images_per_second": batch_size / decode_s,
            "train_batch_size": train_batch, "train_images_per_second": train_batch / train_s}


def main() -> None:
    """Parse flags, time every requested preset, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    results = [preset_speed(name, args.batch_size, args.repeats, args.precision)
               for name in args.presets.split(",")]
    print(json.dumps({"device": "cpu", "threads": torch.get_num_threads(),
                      "cpu_count": os.cpu_count(), "machine": platform.machine(),
                      "torch": torch.__version__, "precision": args.precision,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
