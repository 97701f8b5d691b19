"""Studio throughput and status-poll latency against the Python API. Prints JSON.

    python benchmarks/serve.py --jobs 64 --rounds 8 --polls 500 --queue 200

- `server`: `imagesynth serve` (real process, loopback, a throwaway data dir) with its default
  model (`emoji`, bundled), one warm-up job, then jobs of 1 image at the model's default steps
  submitted back to back, each batch timed from its first submit to its last job seen done.
- `api`: the same prompts and seeds through `imagesynth.load(model)` (once, plus one warm-up
  call) and `pipe(prompt, seed=i)` + `save_png` for each, in this process.
- The K jobs of each arm run in `--rounds` alternating rounds (api then server, then server then
  api, ...), so that a shared machine's changing load falls on both arms alike; the ratio is
  server jobs/min over API jobs/min, summed over the rounds.
- `poll`: p50/p99 of `GET /api/jobs/ID` over keep-alive loopback while a queue of `--queue` jobs
  waits (the worker busy with the first of them), for queued ids and for the running job (whose
  progress carries the previews); then the queue is cancelled.

Loops are bounded by `--timeout`. The worker's own timings (its previews, progress writes and
PNG/thumbnail writes) come from `IMAGESYNTH_SERVE_PROFILE`, which this script sets: the worker
then appends one JSON line per job to `worker-profile.jsonl` in the data dir.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PROMPTS = ["red apple, twitter style", "grinning face, google style", "rocket, twitter style",
           "sun with face, google style", "black cat, twitter style", "pizza, google style",
           "rainbow, twitter style", "snowman, google style"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of a process and its children now (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pids = 0.0, [root_pid]
    while pids:
        pid = pids.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def load_api(model: str, steps: int | None):
    """The Python API's pipeline, loaded once and warmed up; (pipe, load seconds)."""
    import imagesynth

    started = time.perf_counter()
    pipe = imagesynth.load(model)
    load_seconds = time.perf_counter() - started
    pipe(PROMPTS[0], seed=10_000, num_steps=steps)  # warm-up
    return pipe, load_seconds


def api_jobs(pipe, indices: list[int], steps: int | None, out: Path) -> float:
    """Run the jobs `indices` through the Python API; the seconds they took."""
    from imagesynth.io.pngmeta import save_png

    started = time.perf_counter()
    for i in indices:
        result = pipe(PROMPTS[i % len(PROMPTS)], seed=i, num_steps=steps)
        save_png(result.images[0], out / f"api-{i}.png", result.recipes[0])
    return time.perf_counter() - started


def server_jobs(server, client: httpx.Client, model: str, indices: list[int],
                steps: int | None, timeout: float) -> tuple[float, list[dict]]:
    """Submit the jobs `indices` back to back and wait for all; (seconds, the finished jobs).

    The wait reads the last job's event stream (the queue is FIFO), so no client polling loop
    competes with the worker for the CPU; the seconds run from the first submit to the last
    job's `finished` time as the server recorded it (same machine, same wall clock), so the
    stream's 0.1 s tick does not count.
    """
    config = {"model": model, "n": 1} | ({"steps": steps} if steps else {})
    started = time.time()
    ids = []
    for i in indices:
        response = client.post("/api/jobs", json={"kind": "generate", "config": {
            **config, "prompt": PROMPTS[i % len(PROMPTS)], "seed": i}})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    server.events(ids[-1], timeout=timeout)
    finished = [client.get(f"/api/jobs/{job_id}").json() for job_id in ids]
    assert all(job["state"] == "done" for job in finished), finished
    return max(job["finished"] for job in finished) - started, finished


def poll_arm(server, model: str, queue: int, polls: int, steps: int | None) -> dict:
    import random

    config = {"model": model, "n": 1} | ({"steps": steps} if steps else {})
    with httpx.Client(base_url=server.url, timeout=60) as client:
        ids = [client.post("/api/jobs", json={"kind": "generate", "config": {
            **config, "prompt": PROMPTS[i % len(PROMPTS)], "seed": 50_000 + i}}).json()["id"]
            for i in range(queue)]
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{ids[0]}").json()["state"] == "queued" and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        rng = random.Random(0)
        queued_latency, running_latency, sizes = [], [], []
        for i in range(polls):
            job_id = ids[0] if i % 2 else ids[rng.randrange(1, queue)]
            started = time.perf_counter()
            response = client.get(f"/api/jobs/{job_id}")
            elapsed = time.perf_counter() - started
            assert response.status_code == 200
            (running_latency if i % 2 else queued_latency).append(elapsed * 1000)
            sizes.append(len(response.content))
        counts = client.get("/api/status").json()["queue"]
        for job_id in ids:
            client.post(f"/api/jobs/{job_id}/cancel")
    summary = {}
    for name, values in (("queued_job", queued_latency), ("running_job", running_latency),
                         ("all", queued_latency + running_latency)):
        summary[name] = {"polls": len(values), "p50_ms": round(percentile(values, 50), 2),
                         "p99_ms": round(percentile(values, 99), 2),
                         "max_ms": round(max(values), 2)}
    summary["queue_while_polling"] = counts
    summary["response_bytes_max"] = max(sizes)
    return summary


def worker_profile(data_dir: Path) -> dict | None:
    path = data_dir / "worker-profile.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][1:]
    if not rows:
        return None
    summary = {key: round(statistics.median(row[key] for row in rows), 4) for key in rows[0]
               if isinstance(rows[0][key], (int, float))}
    for key in ("preview_decode_s", "preview_encode_s", "progress_write_s", "store_images_s"):
        summary[key.replace("_s", "_share_of_run")] = round(statistics.median(
            row[key] / row["run_s"] for row in rows), 4)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 8 jobs a round: with 2, the round's fixed start (first submit, the worker's next claim)
    # is a few % of the server arm's time on its own
    parser.add_argument("--jobs", type=int, default=64, help="Jobs per arm (K).")
    parser.add_argument("--rounds", type=int, default=8,
                        help="Alternate the arms in this many rounds of K/rounds jobs each, so "
                             "that a shared machine's changing load hits both alike.")
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument("--queue", type=int, default=200)
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--steps", type=int, default=None, help="Default: the model's.")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    from studio_support import StudioProcess

    import torch

    report = {"model": args.model, "jobs": args.jobs, "rounds": args.rounds,
              "steps": args.steps or "model default", "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(),
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as folder:
        root = Path(folder)
        os.environ.setdefault("IMAGESYNTH_HOME", str(root / "home"))
        pipe, load_seconds = load_api(args.model, args.steps)
        server = StudioProcess(root / "data", model=args.model,
                               env={"IMAGESYNTH_SERVE_PROFILE": "1"}).start(timeout=300)
        rounds = []
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                server_jobs(server, client, args.model, [10_000], args.steps,
                            args.timeout)  # warm-up
                chunks = [list(range(args.jobs))[r::args.rounds] for r in range(args.rounds)]
                finished_all, batches = [], []
                for r, chunk in enumerate(chunks):
                    order = ("api", "server") if r % 2 == 0 else ("server", "api")
                    times, cpu = {}, {}
                    for arm in order:
                        if arm == "api":
                            before = time.process_time()
                            times["api"] = api_jobs(pipe, chunk, args.steps, root)
                            cpu["api"] = time.process_time() - before
                        else:
                            before = cpu_seconds(server.process.pid)
                            times["server"], finished = server_jobs(
                                server, client, args.model, chunk, args.steps, args.timeout)
                            cpu["server"] = cpu_seconds(server.process.pid) - before
                            finished_all += finished
                            batches.append(finished)
                    rounds.append({"jobs": len(chunk), "first": order[0],
                                   **{f"{k}_seconds": round(v, 3) for k, v in times.items()},
                                   **{f"{k}_cpu_seconds": round(v, 3) for k, v in cpu.items()},
                                   "ratio": round(times["api"] / times["server"], 3),
                                   "load_average_1min": round(os.getloadavg()[0], 2)})
            report["api"] = {"load_seconds": round(load_seconds, 3), "seconds": round(sum(
                r["api_seconds"] for r in rounds), 3)}
            report["server"] = {"seconds": round(sum(r["server_seconds"] for r in rounds), 3)}
            for arm in ("api", "server"):
                report[arm]["jobs_per_min"] = round(60 * args.jobs / report[arm]["seconds"], 3)
            run_seconds = [j["finished"] - j["started"] for j in finished_all]
            report["server"]["job_run_seconds_median"] = round(statistics.median(run_seconds), 3)
            report["rounds_detail"] = rounds
            report["ratio_server_to_api"] = round(report["server"]["jobs_per_min"]
                                                  / report["api"]["jobs_per_min"], 3)
            # each round's arms ran back to back, so their ratio is least touched by the load
            # other processes put on a shared machine; the median round is the robust figure
            per_round = [r["api_seconds"] / r["server_seconds"] for r in rounds]
            report["ratio_per_round_median"] = round(statistics.median(per_round), 3)
            # CPU seconds per job (server + worker processes against this process's API arm):
            # what the server costs, whatever else the machine is running
            report["ratio_cpu_api_to_server"] = round(
                sum(r["api_cpu_seconds"] for r in rounds)
                / sum(r["server_cpu_seconds"] for r in rounds), 3)
            report["server"]["queue_wait_to_done_seconds"] = round(sum(
                max(j["finished"] for j in batch) - min(j["created"] for j in batch)
                for batch in batches), 3)
            report["worker_profile_median_per_job"] = worker_profile(root / "data")
            report["poll"] = poll_arm(server, args.model, args.queue, args.polls, args.steps)
        finally:
            server.stop()
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
