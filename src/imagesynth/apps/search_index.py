"""A persistent semantic image-search index: SQLite records + float32 vectors, exact search.

One SQLite file (WAL mode, so readers never block the writer or see half a batch) holds:

- `images`: one row per distinct image content — absolute path, SHA-256, size, mtime, pixel
  size and the unit-norm embedding as a little-endian float32 blob;
- `duplicates`: files whose content (SHA-256) is already indexed under another path;
- `meta`: schema version and the identity (weights hash) of the model that made the vectors,
  so an index built with one model refuses queries embedded by another.

Updates are incremental: unchanged files (same size and mtime) are not re-read, changed files
are re-hashed and re-embedded, files gone from the folder are pruned, unreadable images are
reported and skipped. Search is exact cosine similarity: NumPy by default, faiss's exact
`IndexFlatIP` for large indexes when faiss is installed. Both only pick candidates; the final
scores and order always come from the same float64 rescoring, so the two give identical results.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..clip.foreign import scorer_identity
from ..errors import ConfigError, DataError, InputImageError, MissingFileError
from ..io.files import sha256_file
from .embedding import embed_tensors, load_image_tensor

SCHEMA_VERSION = "1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: faiss pays off only when a full NumPy scan gets slow; below this NumPy is used. Measured
#: with benchmarks/clip.py (2 CPU cores, 256-d, queries/s NumPy vs faiss): 1127 vs 779 at 10k
#: rows, 184 vs 257 at 50k, 100 vs 165 at 100k.
FAISS_MIN_ROWS = 50_000
#: extra candidates each backend hands to the exact rescoring, far more than float32 rounding
#: can reorder
CANDIDATE_MARGIN = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS duplicates (
    path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class SearchResult:
    """One hit: rank (1 = best), file, cosine similarity and the record's content hash."""

    rank: int
    path: str
    score: float
    sha256: str
    width: int
    height: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"rank": self.rank, "path": self.path, "score": self.score,
                "sha256": self.sha256, "width": self.width, "height": self.height}


@dataclass
class IndexReport:
    """What one `update` did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    pruned: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form (unreadable files with their reasons)."""
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged,
                "duplicates": self.duplicates, "pruned": self.pruned,
                "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable]}


@dataclass
class _Snapshot:
    """All vectors and records as of one read transaction."""

    version: tuple[int, int]
    ids: np.ndarray  # [N] int64
    vectors: np.ndarray  # [N, D] float32
    records: list[tuple[str, str, int, int]]  # path, sha256, width, height
    faiss_index: object | None = None


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), hidden files and folders skipped."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


class SearchIndex:
    """A search index in one SQLite file; open one per thread or process."""

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path).expanduser()
        if not self.path.is_file() and not create:
            raise MissingFileError(f"no search index at {self.path}", field="index",
                                   fix="build one first with `imagesynth index DIR`")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._own_writes = 0
        self._snapshot: _Snapshot | None = None
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._db.executescript(_SCHEMA)
            version = self._meta("version")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path} is not an imagesynth search index ({exc})",
                            field="index", fix="pass another --index path") from None
        if version is None:
            self._set_meta({"version": SCHEMA_VERSION})
        elif version != SCHEMA_VERSION:
            raise DataError(f"{self.path} has index format {version}, this version reads "
                            f"{SCHEMA_VERSION}", field="index", fix="rebuild the index")

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> "SearchIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- metadata ---------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, values: dict[str, str]) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    @property
    def model_spec(self) -> str | None:
        """The model spec the index was built with (None for a new index)."""
        return self._meta("model_spec")

    def check_model(self, scorer) -> str:
        """Refuse a scorer whose weights differ from the ones that built the index."""
        identity = scorer_identity(scorer)
        stored = self._meta("model_identity")
        if stored is not None and stored != identity:
            raise ConfigError(f"the index {self.path.name} was built with model "
                              f"{self.model_spec!r}, not with {scorer.name!r}", field="model",
                              fix=f"search with --model {self.model_spec}, or index into a new "
                                  "--index file with this model")
        return identity

    def bind_model(self, scorer, spec: str) -> None:
        """Record which model this index's vectors come from (first use) or check it."""
        identity = self.check_model(scorer)
        if self._meta("model_identity") is None:
            self._set_meta({"model_identity": identity, "model_spec": spec,
                            "model_name": scorer.name})

    def stats(self) -> dict:
        """Counts and model of the index."""
        images = self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        duplicates = self._db.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0]
        return {"index": str(self.path), "images": images, "duplicates": duplicates,
                "model": self.model_spec, "dim": int(self._meta("dim") or 0)}

    # --- building ---------------------------------------------------------------------------
    def _prune(self, folder: str, present: set[str]) -> int:
        """Drop records of files under `folder` that no longer exist."""
        gone_images = [p for (p,) in self._db.execute("SELECT path FROM images")
                       if _under(p, folder) and p not in present]
        gone_dups = [p for (p,) in self._db.execute("SELECT path FROM duplicates")
                     if _under(p, folder) and p not in present]
        with self._lock, self._db:
            self._db.executemany("DELETE FROM images WHERE path=?", [(p,) for p in gone_images])
            self._db.executemany("DELETE FROM duplicates WHERE path=?", [(p,) for p in gone_dups])
            # a copy whose original was pruned is no longer a duplicate: re-index it
            self._db.execute("DELETE FROM duplicates WHERE sha256 NOT IN "
                             "(SELECT sha256 FROM images)")
        self._own_writes += 1
        return len(gone_images) + len(gone_dups)

    def update(self, folder: str | Path, scorer, spec: str, batch_size: int = 64,
               progress: Callable[[int, int], None] | None = None) -> IndexReport:
        """Add new and changed images under `folder`, skip duplicates, prune removed files."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder", field="folder",
                            fix="pass a folder of PNG/JPEG/WEBP images")
        if batch_size < 1:
            raise ConfigError(f"must be at least 1, got {batch_size}", field="batch_size")
        self.bind_model(scorer, spec)
        folder = folder.resolve()
        files = _image_files(folder)
        report = IndexReport()
        report.pruned = self._prune(str(folder), {str(p) for p in files})
        indexed = {path: (sha, size, mtime) for path, sha, size, mtime in self._db.execute(
            "SELECT path, sha256, size, mtime_ns FROM images")}
        known_dups = {path: (size, mtime) for path, size, mtime in self._db.execute(
            "SELECT path, size, mtime_ns FROM duplicates")}
        shas = {sha for sha, _, _ in indexed.values()}
        pending: list[tuple[Path, str, int, int]] = []
        done = 0
        for path in files:
            key, stat = str(path), path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if key in indexed and indexed[key][1:] == signature:
                report.unchanged += 1
            elif known_dups.get(key) == signature:
                report.duplicates += 1
            else:
                sha = sha256_file(path)
                if key in indexed and indexed[key][0] == sha:  # touched, same content
                    self._execute("UPDATE images SET size=?, mtime_ns=? WHERE path=?",
                                  (*signature, key))
                    report.unchanged += 1
                elif sha in shas:
                    self._record_duplicate(key, sha, signature, replaces=key in indexed)
                    report.duplicates += 1
                else:
                    shas.add(sha)
                    pending.append((path, sha, *signature))
            if len(pending) >= batch_size:
                self._embed_and_store(pending, scorer, indexed, report)
                pending = []
            done += 1
            if progress is not None:
                progress(done, len(files))
        if pending:
            self._embed_and_store(pending, scorer, indexed, report)
        return report

    def _execute(self, sql: str, params: tuple) -> None:
        with self._lock, self._db:
            self._db.execute(sql, params)
        self._own_writes += 1

    def _record_duplicate(self, path: str, sha: str, signature: tuple[int, int],
                          replaces: bool) -> None:
        with self._lock, self._db:
            if replaces:  # its content changed into a copy of another indexed file
                self._db.execute("DELETE FROM images WHERE path=?", (path,))
            self._db.execute("INSERT OR REPLACE INTO duplicates VALUES (?, ?, ?, ?)",
                             (path, sha, *signature))
        self._own_writes += 1

    def _embed_and_store(self, pending, scorer, indexed: dict, report: IndexReport) -> None:
        """Decode (skipping unreadable files), embed and write one batch in one transaction."""
        tensors, rows = [], []
        for path, sha, size, mtime in pending:
            try:
                tensors.append(load_image_tensor(path, scorer, field="folder"))
            except InputImageError as exc:
                report.unreadable.append((str(path), exc.message))
                continue
            rows.append((str(path), sha, size, mtime))
        if not rows:
            return
        vectors = embed_tensors(scorer, tensors).numpy().astype("<f4")
        if not np.isfinite(vectors).all():
            raise DataError("the model produced NaN/Inf embeddings", field="model")
        dim = self._meta("dim")
        if dim is not None and int(dim) != vectors.shape[1]:
            raise DataError(f"embeddings have {vectors.shape[1]} dimensions, the index "
                            f"{dim}", field="index", fix="rebuild the index")
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)",
                             (str(vectors.shape[1]),))
            for (path, sha, size, mtime), tensor, vector in zip(rows, tensors, vectors):
                self._db.execute("DELETE FROM duplicates WHERE path=?", (path,))
                self._db.execute(
                    "INSERT INTO images (path, sha256, size, mtime_ns, width, height, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                    "sha256=excluded.sha256, size=excluded.size, mtime_ns=excluded.mtime_ns, "
                    "width=excluded.width, height=excluded.height, vector=excluded.vector",
                    (path, sha, size, mtime, tensor.shape[2], tensor.shape[1],
                     vector.tobytes()))
                if path in indexed:
                    report.updated += 1
                else:
                    report.added += 1
        self._own_writes += 1

    # --- searching --------------------------------------------------------------------------
    def _load_snapshot(self) -> _Snapshot:
        """All vectors and records, re-read only when some connection has written since."""
        with self._lock:
            version = (self._db.execute("PRAGMA data_version").fetchone()[0], self._own_writes)
            if self._snapshot is not None and self._snapshot.version == version:
                return self._snapshot
            # one SELECT is one read transaction: a consistent view while a writer commits
            rows = self._db.execute("SELECT id, path, sha256, width, height, vector FROM images "
                                    "ORDER BY id").fetchall()
        dim = len(rows[0][5]) // 4 if rows else 0
        vectors = np.frombuffer(b"".join(r[5] for r in rows), dtype="<f4").reshape(len(rows), dim)
        self._snapshot = _Snapshot(version, np.array([r[0] for r in rows], dtype=np.int64),
                                   vectors.astype(np.float32), [r[1:5] for r in rows])
        return self._snapshot

    def search_vector(self, query: np.ndarray | torch.Tensor, top_k: int = 10,
                      backend: str = "auto") -> list[SearchResult]:
        """The `top_k` records most similar (cosine) to one unit-norm query vector."""
        if top_k < 1:
            raise ConfigError(f"must be at least 1, got {top_k}", field="top")
        if backend not in ("auto", "numpy", "faiss"):
            raise ConfigError(f"unknown backend {backend!r}", field="backend",
                              fix="use auto, numpy or faiss")
        snapshot = self._load_snapshot()
        n = len(snapshot.ids)
        if n == 0:
            return []
        q = np.asarray(query.detach().cpu() if torch.is_tensor(query) else query,
                       dtype=np.float32).reshape(-1)
        if q.shape[0] != snapshot.vectors.shape[1]:
            raise ConfigError(f"query has {q.shape[0]} dimensions, the index "
                              f"{snapshot.vectors.shape[1]}", field="query")
        k = min(top_k, n)
        m = min(n, k + CANDIDATE_MARGIN)
        if backend == "faiss" or (backend == "auto" and n >= FAISS_MIN_ROWS and faiss_module()):
            candidates = self._faiss_candidates(snapshot, q, m)
        elif m < n:
            candidates = np.argpartition(-(snapshot.vectors @ q), m - 1)[:m]
        else:
            candidates = np.arange(n)
        # Rescore the candidates identically whichever backend picked them: same rows in the
        # same order, float64 dot products, ties broken by insertion order.
        candidates = np.sort(candidates)
        exact = snapshot.vectors[candidates].astype(np.float64) @ q.astype(np.float64)
        order = np.lexsort((snapshot.ids[candidates], -exact))[:k]
        results = []
        for rank, j in enumerate(order, start=1):
            path, sha, width, height = snapshot.records[candidates[j]]
            results.append(SearchResult(rank, path, float(exact[j]), sha, width, height))
        return results

    def _faiss_candidates(self, snapshot: _Snapshot, q: np.ndarray, m: int) -> np.ndarray:
        faiss = faiss_module()
        if faiss is None:
            raise MissingFileError("faiss is not installed", field="backend",
                                   fix="pip install faiss-cpu, or use the numpy backend")
        if snapshot.faiss_index is None:
            index = faiss.IndexFlatIP(snapshot.vectors.shape[1])
            index.add(np.ascontiguousarray(snapshot.vectors))
            snapshot.faiss_index = index
        # One query is too little work to split across OpenMP threads: measured on 2 cores,
        # 100k x 256 rows, one thread answers ~6x more queries/s than the default pool.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            _, found = snapshot.faiss_index.search(q[None, :], m)
        finally:
            faiss.omp_set_num_threads(threads)
        return found[0][found[0] >= 0]

    def search_text(self, scorer, text: str, top_k: int = 10,
                    backend: str = "auto") -> list[SearchResult]:
        """Images that best match a text query."""
        if not text or not text.strip():
            raise ConfigError("empty query", field="query", fix="pass a text or --image")
        self.check_model(scorer)
        return self.search_vector(scorer.embed_text([text])[0], top_k, backend)

    def search_image(self, scorer, image: str | Path, top_k: int = 10,
                     backend: str = "auto") -> list[SearchResult]:
        """Images most similar to a query image file."""
        self.check_model(scorer)
        tensor = load_image_tensor(image, scorer, field="image")
        return self.search_vector(embed_tensors(scorer, [tensor])[0], top_k, backend)


def faiss_module():
    """The faiss module when installed, else None (it is optional)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss
