"""docs/studio.png: a real screenshot of the studio (1280x800) with the bundled emoji model.

Starts `imagesynth serve` on a free loopback port over a fresh data folder, fills the gallery
with a few emoji batches through the HTTP API, then, in headless Chromium (Debian's
/usr/bin/chromium driven by Playwright; no browser is downloaded), types a prompt on the
text-to-image tab, generates a batch of four and captures the page with the finished batch and
the gallery column. Prints JSON (timings). About a minute on 2 CPU cores. Example:
  python benchmarks/studio_screenshot.py --out docs/studio.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from studio_support import StudioProcess  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
GALLERY_PROMPTS = ["green frog face, twitter style", "yellow star, google style",
                   "blue heart, twitter style", "slice of pizza, google style",
                   "smiling sun, twitter style"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "studio.png")
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--prompt", default="red apple, twitter style")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    figures: dict = {"model": args.model, "prompt": args.prompt}
    with tempfile.TemporaryDirectory() as tmp:
        with StudioProcess(Path(tmp) / "data", model=args.model) as studio:
            t0 = time.monotonic()
            for i, prompt in enumerate(GALLERY_PROMPTS):  # the gallery column's contents
                job = studio.wait(studio.submit("generate", {"prompt": prompt, "model": args.model,
                                                             "n": 3, "seed": 10 * i}), timeout=600)
                assert job["state"] == "done", job
            figures["gallery_s"] = round(time.monotonic() - t0, 1)
            with sync_playwright() as playwright:
                context = playwright.chromium.launch_persistent_context(
                    str(Path(tmp) / "profile"), executable_path=args.chromium,
                    args=CHROMIUM_ARGS, headless=True, viewport={"width": 1280, "height": 800})
                page = context.new_page()
                page.goto(f"{studio.url}/#txt2img")
                page.wait_for_selector("body[data-ready=true]", state="attached", timeout=30_000)
                tab = page.locator("#view-txt2img")
                tab.locator("select[name=model]").select_option(args.model)
                tab.locator("textarea[name=prompt]").fill(args.prompt)
                tab.locator("input[name=n]").fill("4")
                tab.locator("input[name=seed]").fill("1")
                t0 = time.monotonic()
                tab.locator("[data-testid=submit]").click()
                tab.locator("[data-testid=output][data-state=done]").wait_for(timeout=600_000)
                figures["batch_of_4_s"] = round(time.monotonic() - t0, 1)
                page.wait_for_function(  # a function, not an expression: the CSP forbids eval
                    "() => [...document.querySelectorAll("
                    "'#view-txt2img img.final, [data-testid=recent-item]')]"
                    ".every((img) => img.complete && img.naturalWidth > 0)", timeout=30_000)
                page.mouse.move(640, 790)  # no hover highlight in the picture
                page.wait_for_timeout(400)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                context.close()
    figures["total_s"] = round(time.monotonic() - started, 1)
    figures["out"] = str(args.out)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
