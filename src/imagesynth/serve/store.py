"""The studio's durable state: one SQLite file (WAL) holding jobs, images and uploads.

A job row is committed before the API answers 202; the worker claims jobs in order, and a job's
images are renamed into place before the one transaction that records them and marks the job
done, so a crash leaves either a finished job with all its files or a job to run again (whose
stray files the next start sweeps away). All queries are parameterised.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: a job that was running when the worker died is started at most this many times in all
MAX_ATTEMPTS = 3
TERMINAL = ("done", "failed", "cancelled")
STATES = ("queued", "running") + TERMINAL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    error TEXT,
    result TEXT,
    progress TEXT,
    progress_seq INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    file TEXT NOT NULL,
    thumb TEXT NOT NULL,
    prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    seed INTEGER,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    created REAL NOT NULL,
    trashed REAL
);
CREATE INDEX IF NOT EXISTS images_created ON images(trashed, created);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    created REAL NOT NULL
);
"""


def new_id() -> str:
    """An opaque 128-bit id: the only handle a client ever gets for a job, image or upload."""
    return secrets.token_hex(16)


def is_id(text: str) -> bool:
    """True for a well-formed opaque id (32 lowercase hex digits)."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def is_regular_file(path: Path) -> bool:
    """True for a plain file that is not a symlink: nothing the server reads or serves follows
    a link planted in its folders (the check ComfyUI's `/view` made before resolving links)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class Store:
    """Jobs, images and uploads under one data folder; safe to share between threads."""

    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).resolve()
        for sub in ("images", "thumbs", "uploads", "trash", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "studio.sqlite", timeout=30,
                                   check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a job acknowledged with 202 survives a power cut, not only a process kill.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (rolled back on error), serialised within the process."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, query: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(query, args).fetchone()

    def _all(self, query: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(query, args).fetchall()

    # --- jobs -------------------------------------------------------------------------------

    def add_job(self, kind: str, config: dict) -> str:
        """Queue a job (committed durably before this returns) and return its id."""
        job_id = new_id()
        with self.transaction() as db:
            db.execute("INSERT INTO jobs (id, kind, config, state, created) "
                       "VALUES (?, ?, ?, 'queued', ?)",
                       (job_id, kind, json.dumps(config, sort_keys=True), time.time()))
        return job_id

    def job(self, job_id: str) -> dict | None:
        """A job as JSON-able data, or None for an unknown id."""
        row = self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_dict(row) if row is not None else None

    def jobs(self, limit: int = 50, states: tuple[str, ...] = STATES) -> list[dict]:
        """The newest jobs, newest first."""
        marks = ",".join("?" * len(states))
        rows = self._all(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY seq DESC LIMIT ?",
                         (*states, limit))
        return [_job_dict(row, with_progress=False) for row in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state."""
        rows = self._all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    def progress_seq(self, job_id: str) -> tuple[int, str] | None:
        """(progress counter, state) of a job: what a stream polls to see news."""
        row = self._one("SELECT progress_seq, state FROM jobs WHERE id = ?", (job_id,))
        return (row["progress_seq"], row["state"]) if row is not None else None

    def claim_next(self, worker_pid: int) -> dict | None:
        """Mark the oldest queued job running (counting the attempt) and return it."""
        with self.transaction() as db:
            row = db.execute("SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
                             ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                       "worker_pid = ?, started = ?, progress = NULL WHERE seq = ?",
                       (worker_pid, time.time(), row["seq"]))
            claimed = db.execute("SELECT * FROM jobs WHERE seq = ?", (row["seq"],)).fetchone()
        return _job_dict(claimed)

    def set_progress(self, job_id: str, progress: dict) -> None:
        """Record the running job's latest progress (and previews) for pollers and streams.

        Progress is transient, so its commits skip the fsync (synchronous=NORMAL: the WAL stays
        consistent; a power cut may lose the latest progress, never a job, a state or an image
        row, which keep FULL). A dozen fsyncs a run cost the worker about 2 % of its speed.
        """
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self.transaction() as db:
                    db.execute("UPDATE jobs SET progress = ?, progress_seq = progress_seq + 1 "
                               "WHERE id = ? AND state = 'running'",
                               (json.dumps(progress), job_id))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked the running job to stop."""
        row = self._one("SELECT cancel FROM jobs WHERE id = ?", (job_id,))
        return bool(row and row["cancel"])

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, flag a running one; return the state (None: unknown)."""
        with self.transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, "
                           "progress_seq = progress_seq + 1 WHERE id = ?", (time.time(), job_id))
                return "cancelled"
            if row["state"] == "running":
                db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
            return row["state"]

    def finish(self, job_id: str, state: str, *, result: dict | None = None,
               error: dict | None = None, images: list[dict] = ()) -> None:
        """End a running job and record its images, in one transaction."""
        now = time.time()
        with self.transaction() as db:
            for image in images:
                db.execute("INSERT INTO images (id, job_id, idx, file, thumb, prompt, model, seed, "
                           "width, height, recipe, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           (image["id"], job_id, image["idx"], image["file"], image["thumb"],
                            image["prompt"], image["model"], image.get("seed"), image["width"],
                            image["height"], json.dumps(image["recipe"], sort_keys=True), now))
            db.execute("UPDATE jobs SET state = ?, result = ?, error = ?, finished = ?, "
                       "progress_seq = progress_seq + 1 WHERE id = ? AND state = 'running'",
                       (state, json.dumps(result) if result is not None else None,
                        json.dumps(error) if error is not None else None, now, job_id))

    def recover(self, dead_pid: int | None = None) -> list[str]:
        """Re-queue jobs a dead worker was running, or fail them after MAX_ATTEMPTS starts.

        A job the user had asked to cancel ends `cancelled` instead of running again.

        `dead_pid=None` (server start) recovers every running job: no worker is alive then.
        """
        query = "SELECT id, attempts, cancel FROM jobs WHERE state = 'running'"
        args: tuple = ()
        if dead_pid is not None:
            query += " AND worker_pid = ?"
            args = (dead_pid,)
        touched = []
        with self.transaction() as db:
            for row in db.execute(query, args).fetchall():
                touched.append(row["id"])
                if row["cancel"]:  # the user cancelled it: a crash must not bring it back
                    db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, "
                               "progress_seq = progress_seq + 1 WHERE id = ?",
                               (time.time(), row["id"]))
                elif row["attempts"] >= MAX_ATTEMPTS:
                    error = {"error": "WorkerCrash", "field": None, "fix": None,
                             "message": f"the worker process died while running this job "
                                        f"{row['attempts']} times; it is not retried again"}
                    db.execute("UPDATE jobs SET state = 'failed', error = ?, finished = ?, "
                               "progress_seq = progress_seq + 1 WHERE id = ?",
                               (json.dumps(error), time.time(), row["id"]))
                else:
                    db.execute("UPDATE jobs SET state = 'queued', cancel = 0, progress = NULL, "
                               "progress_seq = progress_seq + 1 WHERE id = ?", (row["id"],))
        return touched

    # --- images and uploads ---------------------------------------------------------------

    def image(self, image_id: str, *, trashed: bool | None = False) -> dict | None:
        """An image row (recipe parsed), or None; `trashed=None` finds it either way."""
        row = self._one("SELECT * FROM images WHERE id = ?", (image_id,))
        if row is None or (trashed is not None and (row["trashed"] is not None) != trashed):
            return None
        return _image_dict(row)

    def images(self, *, query: str = "", model: str = "", limit: int = 50, offset: int = 0,
               trashed: bool = False) -> tuple[list[dict], int]:
        """Gallery page, newest first, filtered by prompt text and model; and the total count."""
        where = ["trashed IS NOT NULL" if trashed else "trashed IS NULL"]
        args: list[Any] = []
        if query:
            where.append("prompt LIKE ? ESCAPE '\\'")
            args.append("%" + query.replace("\\", "\\\\").replace("%", "\\%")
                        .replace("_", "\\_") + "%")
        if model:
            where.append("model = ?")
            args.append(model)
        clause = " AND ".join(where)
        total = self._one(f"SELECT COUNT(*) AS n FROM images WHERE {clause}", tuple(args))["n"]
        rows = self._all(f"SELECT * FROM images WHERE {clause} ORDER BY created DESC, idx "
                         "LIMIT ? OFFSET ?", (*args, limit, offset))
        return [_image_dict(row, with_recipe=False) for row in rows], total

    def image_models(self) -> list[str]:
        """Models that made the gallery's images (for the filter)."""
        return [row["model"] for row in self._all(
            "SELECT DISTINCT model FROM images WHERE trashed IS NULL ORDER BY model")]

    def set_trashed(self, image_id: str, trashed: bool) -> bool:
        """Move an image to the trash folder or back; False if it is not there to move."""
        image = self.image(image_id, trashed=not trashed)
        if image is None:
            return False
        source_dir, target_dir = ("images", "trash") if trashed else ("trash", "images")
        source = self.root / source_dir / image["file"]
        if source.exists():
            source.replace(self.root / target_dir / image["file"])
        with self.transaction() as db:
            db.execute("UPDATE images SET trashed = ? WHERE id = ?",
                       (time.time() if trashed else None, image_id))
        return True

    def empty_trash(self) -> int:
        """Delete trashed images for good; return how many."""
        rows = self._all("SELECT id, file, thumb FROM images WHERE trashed IS NOT NULL")
        with self.transaction() as db:
            db.executemany("DELETE FROM images WHERE id = ?", [(row["id"],) for row in rows])
        for row in rows:
            (self.root / "trash" / row["file"]).unlink(missing_ok=True)
            (self.root / "thumbs" / row["thumb"]).unlink(missing_ok=True)
        return len(rows)

    def image_path(self, image: dict, *, thumb: bool = False) -> Path:
        """The file behind an image row (a path the server chose, never the client)."""
        if thumb:
            return self.root / "thumbs" / image["thumb"]
        folders = ("trash", "images") if image["trashed"] else ("images", "trash")
        path = self.root / folders[0] / image["file"]
        other = self.root / folders[1] / image["file"]
        # A crash between moving the file and committing the flag leaves it in the other folder.
        return other if not path.exists() and other.exists() else path

    def add_upload(self, upload_id: str, file: str, width: int, height: int) -> None:
        """Record an upload whose file is already in place."""
        with self.transaction() as db:
            db.execute("INSERT INTO uploads (id, file, width, height, created) VALUES (?,?,?,?,?)",
                       (upload_id, file, width, height, time.time()))

    def upload(self, upload_id: str) -> dict | None:
        """An upload row, or None."""
        row = self._one("SELECT * FROM uploads WHERE id = ?", (upload_id,))
        return dict(row) if row is not None else None

    def upload_path(self, upload: dict) -> Path:
        """The file of an upload."""
        return self.root / "uploads" / upload["file"]

    def sweep(self) -> int:
        """Delete temp files, and image and upload files no row records (a crash between the
        rename and the commit)."""
        removed = 0
        for path in (self.root / "tmp").iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)  # an evaluate job's scratch folders
            else:
                path.unlink(missing_ok=True)
            removed += 1
        known = {row["file"] for row in self._all("SELECT file FROM images")}
        thumbs = {row["thumb"] for row in self._all("SELECT thumb FROM images")}
        uploads = {row["file"] for row in self._all("SELECT file FROM uploads")}
        for folder, names in (("images", known), ("trash", known), ("thumbs", thumbs),
                              ("uploads", uploads)):
            for path in (self.root / folder).iterdir():
                if path.name not in names and not (path.is_dir() and not path.is_symlink()):
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _job_dict(row: sqlite3.Row, *, with_progress: bool = True) -> dict:
    job = {"id": row["id"], "kind": row["kind"], "state": row["state"],
           "attempts": row["attempts"], "config": _loads(row["config"]),
           "error": _loads(row["error"]), "result": _loads(row["result"]),
           "created": row["created"], "started": row["started"], "finished": row["finished"],
           "cancel_requested": bool(row["cancel"])}
    if with_progress:
        job["progress"] = _loads(row["progress"])
    return job


def _image_dict(row: sqlite3.Row, *, with_recipe: bool = True) -> dict:
    image = {key: row[key] for key in ("id", "job_id", "idx", "prompt", "model", "seed", "width",
                                       "height", "created", "trashed", "file", "thumb")}
    if with_recipe:
        image["recipe"] = _loads(row["recipe"])
    return image
