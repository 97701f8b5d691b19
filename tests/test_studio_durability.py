"""The studio's queue survives `kill -9` (reliability.md R11/R12) against the real server.

N small jobs are queued, the server is SIGKILLed while one runs, and a new server starts on the
same data dir: every job ends done or failed with a reason, none is lost or run twice into the
gallery, the files on disk are exactly the recorded ones, and a poison job that crashes the
worker whenever it starts is started exactly 3 times, fails, and does not hold up the jobs
behind it. `benchmarks/serve_durability.py` runs the same scenario with 200 jobs.
"""

from __future__ import annotations

import pytest

from studio_support import durability_run


def check_durability(run: dict, *, images_per_job: int) -> None:
    figures, jobs, ids = run["figures"], run["jobs"], run["ids"]
    assert figures["not_terminal_at_timeout"] == 0, figures
    # none lost, none duplicated: exactly the submitted jobs, once each
    assert sorted(run["listed_ids"]) == sorted(ids) and len(set(ids)) == len(ids)
    for job_id in ids:
        job = jobs[job_id]
        assert job["state"] in ("done", "failed"), job
        if job["state"] == "failed":
            assert job["error"] and job["error"]["message"], job
    # the poison job: started exactly MAX_ATTEMPTS times, then failed with its reason
    poison = jobs[run["poison"]]
    assert poison["state"] == "failed" and poison["attempts"] == 3, poison
    assert poison["error"]["error"] == "WorkerCrash" and "3 times" in poison["error"]["message"]
    assert poison["result"] is None
    # everything else, the jobs behind the poison and the one killed mid-run included, is done
    others = [jobs[job_id] for job_id in ids if job_id != run["poison"]]
    assert all(job["state"] == "done" for job in others), [
        (job["id"], job["state"], job["error"]) for job in others if job["state"] != "done"]
    assert figures["jobs_after_poison_done"] == figures["jobs_after_poison"] > 0
    killed = jobs[run["killed"]]
    assert killed["state"] == "done" and killed["attempts"] == 2, killed
    assert figures["worker_restarts_after_restart"] == 3  # one per poison start
    # each done job has exactly its n image rows (idx 0..n-1, seeds seed..seed+n-1)
    rows_by_job: dict[str, list[dict]] = {}
    for row in run["rows"]:
        rows_by_job.setdefault(row["job_id"], []).append(row)
    assert set(rows_by_job) == {job["id"] for job in others}
    for job in others:
        rows = sorted(rows_by_job[job["id"]], key=lambda r: r["idx"])
        assert [r["idx"] for r in rows] == list(range(images_per_job))
        assert [r["seed"] for r in rows] == [job["config"]["seed"] + i
                                             for i in range(images_per_job)]
        assert sorted(job["result"]["images"]) == sorted(r["id"] for r in rows)
    # the files on disk are exactly the recorded ones: no orphan, no partial, no temp file
    recorded, thumbs = run["recorded"]
    assert run["files"]["images"] == recorded and run["files"]["thumbs"] == thumbs
    assert run["files"]["tmp"] == set() and run["files"]["trash"] == set()
    assert not any(name.endswith(".tmp") or name.startswith(".")
                   for names in run["files"].values() for name in names)
    assert figures["image_rows"] == len(others) * images_per_job


def test_kill_9_mid_run_loses_nothing_and_quarantines_the_poison_job(studio_model, tmp_path):
    run = durability_run(tmp_path / "data", jobs=30, images_per_job=2, steps=3, poison_at=12,
                         kill_after_done=4)
    print(run["figures"])
    check_durability(run, images_per_job=2)


@pytest.mark.slow
def test_kill_9_with_200_jobs(studio_model, tmp_path):
    run = durability_run(tmp_path / "data", jobs=200, images_per_job=1, steps=2, poison_at=100,
                         kill_after_done=40, timeout=1800)
    print(run["figures"])
    check_durability(run, images_per_job=1)


# --- the store's recovery rules, on a real SQLite file (no server needed) -----------------

def test_a_cancelled_job_whose_worker_died_ends_cancelled_not_requeued(tmp_path):
    from imagesynth.serve.store import Store

    store = Store(tmp_path)
    job_id = store.add_job("generate", {"prompt": "x"})
    assert store.claim_next(worker_pid=12345)["id"] == job_id
    assert store.request_cancel(job_id) == "running"
    store.recover(dead_pid=12345)  # the worker died before it saw the flag
    job = store.job(job_id)
    assert job["state"] == "cancelled" and job["attempts"] == 1
    assert store.claim_next(worker_pid=1) is None  # never started again


def test_recovery_requeues_then_quarantines_after_three_starts(tmp_path):
    from imagesynth.serve.store import MAX_ATTEMPTS, Store

    store = Store(tmp_path)
    job_id = store.add_job("generate", {"prompt": "x"})
    behind = store.add_job("generate", {"prompt": "y"})
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = store.claim_next(worker_pid=100 + attempt)
        assert claimed["id"] == job_id and claimed["attempts"] == attempt
        store.recover(dead_pid=100 + attempt)
    job = store.job(job_id)
    assert job["state"] == "failed" and job["error"]["error"] == "WorkerCrash"
    assert store.claim_next(worker_pid=1)["id"] == behind


def test_the_start_sweep_removes_strays_and_keeps_recorded_files(tmp_path):
    from imagesynth.serve.store import Store

    store = Store(tmp_path)
    job_id = store.add_job("generate", {"prompt": "x"})
    store.claim_next(worker_pid=1)
    for folder in ("images", "thumbs"):
        (tmp_path / folder / "kept.png").write_bytes(b"png")
    store.finish(job_id, "done", result={"images": ["a" * 32]}, images=[{
        "id": "a" * 32, "idx": 0, "file": "kept.png", "thumb": "kept.png", "prompt": "x",
        "model": "tiny", "seed": 0, "width": 16, "height": 16, "recipe": {}}])
    upload = "b" * 32
    (tmp_path / "uploads" / f"{upload}.png").write_bytes(b"png")
    store.add_upload(upload, f"{upload}.png", 16, 16)
    strays = [tmp_path / "images" / "orphan.png", tmp_path / "images" / ".x.png.abc.tmp",
              tmp_path / "thumbs" / "orphan.png", tmp_path / "uploads" / "orphan.png",
              tmp_path / "uploads" / ".c.png.def.tmp", tmp_path / "trash" / "orphan.png",
              tmp_path / "tmp" / "partial.tmp"]
    for path in strays:
        path.write_bytes(b"partial")
    scratch = tmp_path / "tmp" / "evaluate-123" / "generated"  # an evaluate job's folders
    scratch.mkdir(parents=True)
    (scratch / "00000.png").write_bytes(b"png")
    assert store.sweep() == len(strays) + 1
    assert not any(path.exists() for path in strays) and not scratch.parent.exists()
    assert (tmp_path / "images" / "kept.png").is_file()
    assert (tmp_path / "thumbs" / "kept.png").is_file()
    assert (tmp_path / "uploads" / f"{upload}.png").is_file()


def test_an_image_moved_but_not_yet_flagged_is_still_found(tmp_path):
    from imagesynth.serve.store import Store

    store = Store(tmp_path)
    image = {"file": "x.png", "thumb": "x.png", "trashed": None}
    (tmp_path / "trash" / "x.png").write_bytes(b"png")  # a crash between the move and the flag
    assert store.image_path(image) == tmp_path / "trash" / "x.png"
    (tmp_path / "images" / "x.png").write_bytes(b"png")
    assert store.image_path(image) == tmp_path / "images" / "x.png"
