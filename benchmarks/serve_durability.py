"""The studio's queue under `kill -9`: N jobs queued, the server SIGKILLed while one runs, a new
server on the same data dir. Prints JSON: how many jobs ended done/failed, whether any was lost
or duplicated, whether the files on disk are exactly the recorded ones, the poison job's start
count, and how long the restart and the drain took.

    python benchmarks/serve_durability.py --jobs 200 --images 1 --steps 2

The scenario is `durability_run` in tests/studio_support.py, which the fast test
(tests/test_studio_durability.py, 30 jobs) runs too. By default a tiny 16 px model is trained for
3 steps and registered in a throwaway IMAGESYNTH_HOME (the weights do not matter here); pass
`--model NAME` to use a registered model instead. Real processes on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--images", type=int, default=1, help="Images per job (n).")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--poison-at", type=int, default=None,
                        help="Index of the poison job (default: the middle one).")
    parser.add_argument("--kill-after", type=int, default=None,
                        help="Kill once this many jobs are done (default: a fifth of them).")
    parser.add_argument("--model", default=None, help="A registered model (default: build tiny).")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-durability-") as folder:
        root = Path(folder)
        if args.model is None:
            os.environ["IMAGESYNTH_HOME"] = str(root / "home")
            from studio_support import build_tiny_model

            build_tiny_model(root / "model")
        from studio_support import durability_run

        poison_at = args.jobs // 2 if args.poison_at is None else args.poison_at
        kill_after = max(1, args.jobs // 5) if args.kill_after is None else args.kill_after
        started = time.monotonic()
        run = durability_run(root / "data", jobs=args.jobs, images_per_job=args.images,
                             steps=args.steps, poison_at=poison_at, kill_after_done=kill_after,
                             model=args.model or "tiny", timeout=args.timeout)
        figures = run["figures"]
        jobs = run["jobs"]
        rows_per_job: dict[str, int] = {}
        for row in run["rows"]:
            rows_per_job[row["job_id"]] = rows_per_job.get(row["job_id"], 0) + 1
        done = [job for job in jobs.values() if job["state"] == "done"]
        figures.update({
            "poison_at": poison_at, "kill_after_done": kill_after,
            "lost_jobs": len(set(run["ids"]) - set(run["listed_ids"])),
            "unexpected_jobs": len(set(run["listed_ids"]) - set(run["ids"])),
            "done_jobs_with_wrong_image_count": sum(
                rows_per_job.get(job["id"], 0) != args.images for job in done),
            "image_rows_of_failed_jobs": sum(rows_per_job.get(job["id"], 0) for job in
                                             jobs.values() if job["state"] != "done"),
            "failed_without_reason": sum(job["state"] == "failed" and not (
                job["error"] or {}).get("message") for job in jobs.values()),
            "files_match_records": figures["unrecorded_files"] == figures["missing_files"]
            == figures["tmp_files"] == 0,
            "total_seconds": round(time.monotonic() - started, 1),
            "cpu_count": os.cpu_count(),
        })
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
