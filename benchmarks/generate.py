"""Seconds per generated image on this machine, at the default steps, batch 8, decode included.

The UNets are randomly initialised with the bundled presets' sizes: speed does not depend on the
weights. 32 px = the `shapes-xy` preset (the bundled `shapes` model) in pixel space; 64 px = the
`emoji` preset on 16x16x4 latents, decoded by the `emoji-f4` autoencoder architecture (decode
cost included). Prints JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch

from imagesynth.diffusion import ClassifierFreeGuidance, EDMDenoiser, get_sampler, karras_sigmas
from imagesynth.diffusion.noise import initial_noise
from imagesynth.families.diffusion import PRESETS
from imagesynth.nets.autoencoder import Autoencoder, autoencoder_config
from imagesynth.nets.unet import build_unet, parameter_count, unet_config
from imagesynth.text import load_text_encoder


def seconds_per_image(preset: str, image_size: int, channels: int, side: int, batch: int,
                      repeats: int, decode) -> dict:
    settings = PRESETS[preset][0]
    torch.manual_seed(0)
    # the preset's text encoder says how wide the UNet's cross-attention input is
    width = load_text_encoder(settings.text_encoder).state_dim
    denoiser = EDMDenoiser(build_unet(unet_config(preset, width, sample_size=side,
                                                  channels=channels)), settings.sigma_data).eval()
    text = {"encoder_hidden_states": torch.randn(batch, 12, width),
            "encoder_attention_mask": torch.ones(batch, 12)}
    guided = ClassifierFreeGuidance(denoiser, text, {k: v.clone() for k, v in text.items()},
                                    settings.default_guidance)
    sampler = get_sampler(settings.default_sampler)
    sigmas = karras_sigmas(settings.default_steps, 0.002, 80.0)
    times = []
    for _ in range(repeats + 1):  # the first run warms up allocators and kernels
        x, generators = initial_noise((channels, side, side), list(range(batch)), float(sigmas[0]))
        start = time.perf_counter()
        with torch.no_grad():
            decode(sampler(guided, x, sigmas, generator=generators))
        times.append((time.perf_counter() - start) / batch)
    return {"preset": preset, "image_size": image_size, "space": f"{channels}x{side}x{side}",
            "parameters": parameter_count(denoiser), "steps": settings.default_steps,
            "sampler": settings.default_sampler, "guidance": settings.default_guidance,
            "batch": batch, "seconds_per_image_median": round(statistics.median(times[1:]), 4),
            "seconds_per_image_all": [round(t, 4) for t in times[1:]]}


def main() -> None:
    repeats = int(os.environ.get("REPEATS", "3"))
    torch.manual_seed(0)
    decoder = Autoencoder(autoencoder_config("emoji-f4")).eval().decode
    results = [seconds_per_image("shapes-xy", 32, 3, 32, 8, repeats, lambda x: x),
               seconds_per_image("emoji", 64, 4, 16, 8, repeats, decoder)]
    print(json.dumps({"torch_threads": torch.get_num_threads(), "device": "cpu",
                      "note": "random weights; speed does not depend on them",
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
