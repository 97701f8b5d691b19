"""Our Stable Diffusion pipeline vs diffusers' on CPU: seconds per image, same model and settings.

Both sides drive the very same modules (`SDPipeline` wraps the diffusers pipeline's UNet, VAE and
text encoder), built with a fixed seed in Stable Diffusion 1.5's layout at reduced width: the
UNet's 4 levels (3 cross-attention down blocks and a plain one, 2 layers each, an attention mid
block, SD's up blocks), SD's 4-level VAE, a CLIP-L-shaped text encoder with CLIP's real tokenizer,
and SD's Euler schedule ('leading' spacing). Ours is `SDPipeline.__call__` with sampler "euler";
theirs is `StableDiffusionPipeline.__call__` with `EulerDiscreteScheduler` and PIL output. After
one warm-up of each, the two alternate run by run (ABBA order in each pair of rounds), so a shared
machine's changing load falls on both alike. There, the per-round ratio and the ratio of CPU
seconds (this process's, which other processes' load does not inflate) are the robust figures.
Forward hooks split each image's time into text encoding, UNet, VAE decode and the rest (the
pipeline's own work: sampler, guidance, schedule, image conversion). A last diffusers run with
`output_type="latent"` checks that both sides compute the same latents.
Prints JSON. Example:  OMP_NUM_THREADS=2 python benchmarks/sd_pipeline.py --threads 2 --out run.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"
PARTS = ("text", "unet", "decode")


@dataclass(frozen=True)
class ModelShape:
    """Widths of the SD 1.5-shaped model (SD 1.5 itself: UNet 320-640-1280-1280, VAE
    128-256-512-512, text 768 wide and 12 layers)."""

    unet_channels: tuple[int, ...] = (64, 128, 256, 256)
    vae_channels: tuple[int, ...] = (32, 64, 128, 128)
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4


def build_diffusers_pipeline(shape: ModelShape, size: int, seed: int = 0):
    """A `StableDiffusionPipeline` of SD 1.5's layout at `shape`'s widths, random weights."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from imagesynth.sd.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    torch.manual_seed(seed)
    # SD 1.5's UNet config, widths aside ("attention_head_dim" 8 is its head count, as in SD)
    unet = UNet2DConditionModel(
        sample_size=size // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=shape.unet_channels, attention_head_dim=8, norm_num_groups=32,
        cross_attention_dim=shape.text_hidden,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=shape.vae_channels, norm_num_groups=32, sample_size=size,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215)
    text_config = CLIPTextConfig(
        hidden_size=shape.text_hidden, intermediate_size=4 * shape.text_hidden,
        num_attention_heads=shape.text_heads, num_hidden_layers=shape.text_layers,
        vocab_size=len(tokenizer), max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=shape.text_hidden, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(text_config)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
        prediction_type="epsilon")
    pipe = StableDiffusionPipeline(unet=unet.eval(), vae=vae.eval(),
                                   text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PartTimer:
    """Wall seconds spent inside the text encoder, the UNet and the VAE decoder, and UNet calls."""

    def __init__(self, pipe):
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.unet_calls = 0
        self._started: dict[str, float] = {}
        for part, module in (("text", pipe.text_encoder), ("unet", pipe.unet),
                             ("decode", pipe.vae.decoder)):
            module.register_forward_pre_hook(self._enter(part))
            module.register_forward_hook(self._leave(part))

    def _enter(self, part: str):
        def hook(module, inputs):
            self._started[part] = time.perf_counter()
        return hook

    def _leave(self, part: str):
        def hook(module, inputs, output):
            self.seconds[part] += time.perf_counter() - self._started.pop(part)
            self.unet_calls += part == "unet"
        return hook

    def reset(self) -> None:
        """Start counting a new image."""
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.unet_calls = 0


def timed(timer: PartTimer, generate) -> tuple[dict, object]:
    """Run `generate()` once: its wall seconds, the part split and what it returned."""
    timer.reset()
    start, cpu_start = time.perf_counter(), time.process_time()
    output = generate()
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    row = {"total": total, "cpu": cpu, **timer.seconds, "unet_calls": timer.unet_calls}
    row["other"] = total - sum(timer.seconds.values())
    return row, output


def summary(rows: list[dict]) -> dict:
    """Median and min seconds per image, and the median part split."""
    totals = [r["total"] for r in rows]
    return {"seconds_per_image_median": round(statistics.median(totals), 4),
            "seconds_per_image_min": round(min(totals), 4),
            "seconds_per_image_all": [round(t, 4) for t in totals],
            # CPU seconds of this process: what other processes' load does not add to
            "cpu_seconds_per_image_median": round(statistics.median(r["cpu"] for r in rows), 4),
            "breakdown_median_seconds": {k: round(statistics.median(r[k] for r in rows), 4)
                                         for k in (*PARTS, "other")},
            "unet_calls_per_image": rows[-1]["unet_calls"]}


def machine(threads: int) -> dict:
    """What the numbers were measured on."""
    import diffusers
    import transformers

    import imagesynth

    cpu_model = None
    if Path("/proc/cpuinfo").is_file():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu_model = names[0] if names else None
    return {"machine": platform.machine(), "cpu_model": cpu_model,
            "cpu_count": os.cpu_count(), "torch_threads": threads,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "imagesynth": imagesynth.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="Timed images per side.")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="Also write the JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from imagesynth.sd.detect import CheckpointInfo
    from imagesynth.sd.pipeline import SDPipeline

    shape = ModelShape()
    theirs = build_diffusers_pipeline(shape, args.size)
    ours = SDPipeline(theirs, CheckpointInfo("sd1", "epsilon", False, "diffusers", "benchmark"),
                      "sd15-shaped", "0" * 64, "cpu")
    timer = PartTimer(theirs)

    def run_ours():
        return ours(PROMPT, negative_prompt=NEGATIVE, seed=args.seed, num_steps=args.steps,
                    sampler="euler", guidance_scale=args.guidance, size=args.size)

    def run_theirs(output_type: str = "pil"):
        return theirs(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, height=args.size, width=args.size,
                      generator=torch.Generator().manual_seed(args.seed),
                      output_type=output_type)

    report = {"benchmark": "sd_pipeline", "device": "cpu", **machine(args.threads),
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
              "model": {"layout": "Stable Diffusion 1.5 at reduced width",
                        "unet_block_out_channels": list(shape.unet_channels),
                        "vae_block_out_channels": list(shape.vae_channels),
                        "text_hidden": shape.text_hidden, "text_layers": shape.text_layers,
                        "unet_parameters": sum(p.numel() for p in theirs.unet.parameters()),
                        "vae_parameters": sum(p.numel() for p in theirs.vae.parameters()),
                        "text_parameters": sum(p.numel()
                                               for p in theirs.text_encoder.parameters())},
              "size": args.size, "steps": args.steps, "guidance": args.guidance,
              "repeats": args.repeats, "sampler": "euler", "scheduler": "EulerDiscreteScheduler",
              "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": args.seed,
              "breakdown": "text, unet, decode: time inside the CLIP text encoder, the UNet and "
                           "the VAE decoder; other: the rest (tokenising, schedule, sampler and "
                           "guidance arithmetic, image conversion)"}
    _, ours_result = timed(timer, run_ours)  # warm-ups
    _, theirs_result = timed(timer, run_theirs)
    rows = {"ours": [], "theirs": []}
    sides = {"ours": run_ours, "theirs": run_theirs}
    for r in range(args.repeats):
        # ABBA: neither side always runs first, right after the other's allocations
        for side in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
            row, output = timed(timer, sides[side])
            rows[side].append(row)
            if side == "ours":
                ours_result = output
            else:
                theirs_result = output
        print(json.dumps({"round": r, **{s: round(rows[s][-1]["total"], 3) for s in rows}}),
              file=sys.stderr, flush=True)
    latents = run_theirs("latent").images
    pixels_ours = np.asarray(ours_result.images[0], dtype=np.int16)
    pixels_theirs = np.asarray(theirs_result.images[0], dtype=np.int16)
    report["ours"], report["theirs"] = summary(rows["ours"]), summary(rows["theirs"])
    medians = [report[s]["seconds_per_image_median"] for s in ("ours", "theirs")]
    mins = [report[s]["seconds_per_image_min"] for s in ("ours", "theirs")]
    per_round = [a["total"] / b["total"] for a, b in zip(rows["ours"], rows["theirs"])]
    report.update({
        "ratio_of_medians": round(medians[0] / medians[1], 4),
        "ratio_of_mins": round(mins[0] / mins[1], 4),
        "ratio_per_round_median": round(statistics.median(per_round), 4),
        "cpu_ratio_of_medians": round(report["ours"]["cpu_seconds_per_image_median"]
                                      / report["theirs"]["cpu_seconds_per_image_median"], 4),
        "ratio_per_round": [round(x, 4) for x in per_round],
        "latents_max_abs_difference": float((ours_result.samples - latents).abs().max()),
        "latents_max_abs": float(latents.abs().max()),
        "pixels_max_abs_difference_8bit": int(np.abs(pixels_ours - pixels_theirs).max()),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()]})
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
