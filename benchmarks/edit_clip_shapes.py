"""Text edits of held-out ShapesWorld scenes in a GAN's latent, judged by the pixel checker.

Every single-object scene of the source pair (default "a red circle") in the data set's val split
(never seen by the GAN) is inverted into the GAN and edited toward the target text (default "a
blue circle"), with `imagesynth.guided.edit_clip` (StyleCLIP latent optimisation; `--nada`: one
StyleGAN-NADA generator fine-tuned once and applied to every inversion). The checker judges the
scene, its inversion (source caption) and the edit (target caption); an edit succeeds when the
checker sees exactly one object of the target colour, the shape is unchanged and its centroid
moved by at most --max-shift px (and a captioned position still holds). Prints JSON. Example:
  OMP_NUM_THREADS=1 python benchmarks/edit_clip_shapes.py --gan shapes-gan --clip shapes-clip \\
      --data data/shapes-30k --loss directional --layers torgb
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from imagesynth.clip.foreign import load_scorer
from imagesynth.data.shapes import parse_caption
from imagesynth.data.shapes_check import check
from imagesynth.guided.edit_clip import (EditClipConfig, edit_clip, invert, load_gan_image,
                                         nada_finetune, render_latent)
from imagesynth.guided.gan_drawer import load_gan_model
from imagesynth.guided.loop import to_pil


def held_out_scenes(data: Path, colour: str, shape: str) -> list[dict]:
    """Val-split single-object scenes of (colour, shape), in file order."""
    rows = [json.loads(line) for line in (data / "captions.jsonl").open()]
    return [r for r in rows if r.get("split") == "val" and len(r["scene"]["objects"]) == 1
            and (r["scene"]["objects"][0]["colour"], r["scene"]["objects"][0]["shape"])
            == (colour, shape)]


def verdict(image, caption: str) -> dict:
    """The checker's verdict plus the detected objects (colour, shape, centroid)."""
    result = check(image, caption)
    return {"ok": result.ok, "colour_ok": result.colour_ok, "shape_ok": result.shape_ok,
            "count_ok": result.count_ok, "position_ok": result.position_ok,
            "objects": [(o.colour, o.shape, [round(c, 2) for c in o.centroid])
                        for o in result.detected]}


def nada_samples(gan, tuned, colour: str, seeds: int) -> dict:
    """The GAN's own samples of every single-object prompt before and after NADA: how many the
    checker sees in `colour`, and how many keep their detected shapes."""
    from imagesynth.data.shapes import COLOURS, SHAPES
    from imagesynth.guided.gan_drawer import prompt_condition

    counts = {"samples": 0, "target_colour_before": 0, "target_colour_after": 0,
              "shapes_kept": 0, "per_prompt_target_colour_after": {}}
    for prompt in [f"a {c} {s}" for c in COLOURS for s in SHAPES]:
        condition = prompt_condition(gan, prompt).expand(seeds, -1)
        images = []
        for model in (gan, tuned):
            generators = [torch.Generator().manual_seed(i) for i in range(seeds)]
            with torch.no_grad():
                images.append(model.sample(seeds, generators, condition))
        hits = 0
        for x, y in zip(*images):
            before = check(to_pil((x[None] + 1) / 2), prompt).detected
            after = check(to_pil((y[None] + 1) / 2), prompt).detected
            hit = any(o.colour == colour for o in after)
            counts["samples"] += 1
            counts["target_colour_before"] += any(o.colour == colour for o in before)
            counts["target_colour_after"] += hit
            counts["shapes_kept"] += [o.shape for o in before] == [o.shape for o in after]
            hits += hit
        counts["per_prompt_target_colour_after"][prompt] = hits
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gan", default="shapes-gan")
    parser.add_argument("--clip", default="shapes-clip")
    parser.add_argument("--data", default="data/shapes-30k")
    parser.add_argument("--source", default="a red circle")
    parser.add_argument("--target", default="a blue circle")
    parser.add_argument("--latent", default="w")
    parser.add_argument("--loss", default="directional")
    parser.add_argument("--layers", default="torgb")
    parser.add_argument("--l2-weight", type=float, default=3e-4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cutouts", type=int, default=8)
    parser.add_argument("--invert-steps", type=int, default=300)
    parser.add_argument("--invert-candidates", type=int, default=16)
    parser.add_argument("--no-source-start", action="store_true",
                        help="start the inversion from random conditions, not the source text")
    parser.add_argument("--nada", action="store_true", help="one NADA generator for all scenes")
    parser.add_argument("--nada-steps", type=int, default=100)
    parser.add_argument("--nada-lr", type=float, default=0.002)
    parser.add_argument("--nada-sample-seeds", type=int, default=4,
                        help="with --nada: samples per single-object prompt, before and after")
    parser.add_argument("--max-shift", type=float, default=2.0, help="px the centroid may move")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    (colour, shape), = parse_caption(args.source).objects
    (new_colour, new_shape), = parse_caption(args.target).objects
    data = Path(args.data)
    scenes = held_out_scenes(data, colour, shape)[:args.limit]
    gan, scorer = load_gan_model(args.gan), load_scorer(args.clip)
    settings = dict(gan=args.gan, scorer=args.clip, latent=args.latent, loss=args.loss,
                    layers=args.layers, l2_weight=args.l2_weight, learning_rate=args.lr,
                    steps=args.steps, cutouts=args.cutouts, invert_steps=args.invert_steps,
                    invert_candidates=args.invert_candidates, seed=args.seed,
                    nada_steps=args.nada_steps, nada_lr=args.nada_lr,
                    source=None if args.no_source_start else args.source)
    started = time.perf_counter()
    tuned = None
    if args.nada:
        config = EditClipConfig(image="-", nada=(args.source, args.target), **settings)
        tuned, losses = nada_finetune(gan, scorer, args.source, args.target, config)
        print(json.dumps({"nada_loss": [losses[0], losses[-1]],
                          "seconds": round(time.perf_counter() - started, 1)}), file=sys.stderr)
    samples = (nada_samples(gan, tuned, new_colour, args.nada_sample_seeds)
               if tuned is not None else None)
    rows = []
    for scene in scenes:
        path = str(data / scene["file"])
        caption = scene["caption"]  # may name a position ("... on the left")
        target_caption = caption.replace(args.source[2:], args.target[2:], 1)
        if tuned is None:
            result = edit_clip(EditClipConfig(image=path, prompt=args.target, **settings),
                               gan=gan, scorer=scorer)
            edited, inverted, measured = result.image, result.inverted, result.measured
        else:
            config = EditClipConfig(image=path, nada=(args.source, args.target), **settings)
            drawer, trace = invert(gan, load_gan_image(path, gan.config.image_size), config,
                                   scorer, None if args.no_source_start else args.source)
            with torch.no_grad():
                inverted = to_pil(drawer.render())
                edited = to_pil(render_latent(tuned.generator.synthesis, drawer.w))
            measured = {"inversion_mse": trace[-1]}
        original = Image.open(path).convert("RGB")
        before, inv = verdict(original, caption), verdict(inverted, caption)
        after = verdict(edited, target_caption)
        shift = None
        if len(inv["objects"]) == 1 and len(after["objects"]) == 1:
            (x0, y0), (x1, y1) = inv["objects"][0][2], after["objects"][0][2]
            shift = math.hypot(x1 - x0, y1 - y0)
        colour_changed = (after["count_ok"] and after["objects"][0][0] == new_colour)
        shape_kept = after["count_ok"] and after["objects"][0][1] == new_shape
        position_kept = (shift is not None and shift <= args.max_shift
                         and after["position_ok"] is not False)
        rows.append({"file": scene["file"], "caption": caption, "scene": before["ok"],
                     "inversion": inv, "edit": after, "centroid_shift": shift,
                     "colour_changed": colour_changed, "shape_kept": shape_kept,
                     "position_kept": position_kept,
                     "success": colour_changed and shape_kept and position_kept,
                     "measured": measured})
        print(json.dumps({k: rows[-1][k] for k in ("file", "colour_changed", "shape_kept",
                                                   "centroid_shift", "success")}),
              file=sys.stderr, flush=True)
    n = len(rows)
    rate = lambda key: round(sum(bool(r[key]) for r in rows) / n, 3)  # noqa: E731
    shifts = [r["centroid_shift"] for r in rows if r["centroid_shift"] is not None]
    report = {"benchmark": "edit_clip_shapes", "source": args.source, "target": args.target,
              "data": str(data), "scenes": n, "settings": {**settings, "nada": args.nada,
                                                            "max_shift": args.max_shift},
              "scene_passes_checker": round(sum(r["scene"] for r in rows) / n, 3),
              "inversion_passes_checker": round(sum(r["inversion"]["ok"] for r in rows) / n, 3),
              "colour_changed": rate("colour_changed"), "shape_kept": rate("shape_kept"),
              "position_kept": rate("position_kept"), "success": rate("success"),
              "edit_passes_checker": round(sum(r["edit"]["ok"] for r in rows) / n, 3),
              "median_centroid_shift_px": round(sorted(shifts)[len(shifts) // 2], 2)
              if shifts else None,
              "seconds": round(time.perf_counter() - started, 1), "nada_samples": samples,
              "rows": rows}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
