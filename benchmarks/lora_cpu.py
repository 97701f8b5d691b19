"""LoRA vs full fine-tuning of the bundled `shapes` model on CPU: speed, memory, sizes.

Each mode runs in its own process (so peak memory is its own): load the model, train on 20
ShapesWorld images of one pair with the shared loop at the same batch size for `--steps` steps,
and report steps/s (after the first logged window, which includes warm-up), the process's peak
resident memory (`resource.getrusage`, which includes the loaded model and text encoder), the
trainable-parameter count, and the size of what each mode must store (LoRA file vs model file).
Prints JSON. Example:  python benchmarks/lora_cpu.py --steps 30 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def worker(mode: str, steps: int, batch_size: int, rank: int, threads: int) -> dict:
    """Train in this process; return its measurements."""
    sys.path.insert(0, str(Path(__file__).parent))
    from lora_shapes import write_pair_folder

    from imagesynth.data.folder import CaptionedImageFolder
    from imagesynth.diffusion.lora import find_unet, lora_state_dict, save_lora
    from imagesynth.families.diffusion import DiffusionObjective
    from imagesynth.families.personalise import LoraSettings, add_lora_adapter
    from imagesynth.pipeline import load_pipeline
    from imagesynth.train import TrainConfig, train
    from imagesynth.train.datasets import (CaptionedTrainingSet, caption_choice_table,
                                           caption_options, encode_caption_table,
                                           images_as_uint8)

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="lora-cpu-"))
    write_pair_folder(work / "data", "cyan", "square", "teal", 20)
    pipe = load_pipeline("shapes", device="cpu")
    folder = CaptionedImageFolder(work / "data", resolution=pipe.image_size)
    captions = sorted({c for item in folder.items for c in caption_options(item)})
    text = encode_caption_table(pipe.text_encoder, captions)
    dataset = CaptionedTrainingSet(images_as_uint8(folder),
                                   caption_choice_table(folder.items, text.index))
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    denoiser = pipe.denoiser
    if mode == "lora":
        trainable = add_lora_adapter(denoiser, LoraSettings(rank=rank))
    else:
        denoiser.requires_grad_(True)
        trainable = sum(p.numel() for p in denoiser.parameters())
    config = TrainConfig(max_steps=steps, batch_size=batch_size, learning_rate=1e-4,
                         ema_decay=None, log_every=5, checkpoint_every=10 * steps)
    started = time.perf_counter()
    train(denoiser, dataset, DiffusionObjective(text, 0.0, False), config, work / "run",
          show_progress=False)
    seconds = time.perf_counter() - started
    windows = [json.loads(line) for line in (work / "run/log.jsonl").read_text().splitlines()]
    rates = [w["images_per_second"] / batch_size for w in windows[1:]]
    if mode == "lora":
        path = save_lora(work / "lora.safetensors", lora_state_dict(find_unet(denoiser)),
                         rank=rank, alpha=float(rank), targets="attn", base_model="shapes",
                         base_model_hash=pipe.model_hash)
        stored = path.stat().st_size
    else:  # a full fine-tune stores a whole model (float32, as training leaves it)
        stored = sum(p.numel() * p.element_size() for p in denoiser.state_dict().values())
    return {"mode": mode, "steps": steps, "batch_size": batch_size, "threads": threads,
            "steps_per_second": round(sum(rates) / len(rates), 3),
            "wall_seconds": round(seconds, 1),
            "trainable_parameters": trainable,
            "total_parameters": sum(p.numel() for p in denoiser.parameters()),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_loading_mib": round(rss_loaded / 1024, 1),
            "stored_bytes": stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", choices=("lora", "full"), default=None)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch_size, args.rank,
                                args.threads)))
        return
    report = {"benchmark": "lora_cpu", "model": "shapes", "device": "cpu",
              "torch": torch.__version__}
    for mode in ("lora", "full"):
        output = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps",
                                 str(args.steps), "--batch-size", str(args.batch_size),
                                 "--rank", str(args.rank), "--threads", str(args.threads)],
                                check=True, capture_output=True, text=True).stdout
        report[mode] = json.loads(output.strip().splitlines()[-1])
        print(json.dumps({mode: report[mode]}), file=sys.stderr, flush=True)
    report["speedup"] = round(report["lora"]["steps_per_second"]
                              / report["full"]["steps_per_second"], 2)
    report["stored_ratio"] = round(report["full"]["stored_bytes"]
                                   / report["lora"]["stored_bytes"], 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
