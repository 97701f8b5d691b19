"""Embedding cache keyed by (encoder identity, text): in memory, optionally in SQLite on disk."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import torch

from .base import TextEncoder, TextEncoding, validate_texts

_SCHEMA = """CREATE TABLE IF NOT EXISTS embeddings (
    encoder TEXT NOT NULL, text TEXT NOT NULL, rows INTEGER NOT NULL, tokens INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    states BLOB NOT NULL, pooled BLOB NOT NULL, PRIMARY KEY (encoder, text))"""


class CachedTextEncoder(TextEncoder):
    """Wrap an encoder so each distinct text is encoded once, across batches and runs.

    Only the real tokens' states are stored (float32) when the encoder zeroes padding, all
    rows otherwise, so re-padding on the way out gives results identical to direct encoding.
    """

    def __init__(self, encoder: TextEncoder, db_path: str | Path | None = None,
                 max_memory_items: int = 100_000):
        self.encoder = encoder
        self.name = encoder.name
        self.state_dim, self.pooled_dim = encoder.state_dim, encoder.pooled_dim
        self.max_length = encoder.max_length
        self.max_memory_items = max_memory_items
        self._keep_padding = not getattr(encoder, "zero_padding", True)
        # text -> (states [rows, D], pooled [P], real token count, truncated)
        self._memory: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if db_path is not None:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(db_path), check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        self.hits = self.misses = 0

    def identity(self) -> str:
        """Same identity as the wrapped encoder: caching never changes outputs."""
        return self.encoder.identity()

    def _lookup_disk(self, texts: list[str]) -> dict[str, tuple]:
        if self._db is None or not texts:
            return {}
        found = {}
        key = self.identity()
        for start in range(0, len(texts), 500):  # SQLite caps bound parameters per query
            chunk = texts[start:start + 500]
            rows = self._db.execute(
                f"SELECT text, rows, tokens, truncated, states, pooled FROM embeddings WHERE encoder=? "
                f"AND text IN ({','.join('?' * len(chunk))})", [key, *chunk]).fetchall()
            for text, n_rows, tokens, truncated, states, pooled in rows:
                s = torch.from_numpy(np.frombuffer(states, np.float32).copy())
                found[text] = (s.view(n_rows, self.state_dim),
                               torch.from_numpy(np.frombuffer(pooled, np.float32).copy()),
                               tokens, bool(truncated))
        return found

    def _store(self, entries: dict[str, tuple]) -> None:
        if len(self._memory) + len(entries) > self.max_memory_items:
            self._memory.clear()  # simple bound; the disk cache keeps everything
        self._memory.update(entries)
        if self._db is not None and entries:
            key = self.identity()
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key, text, s.shape[0], n, int(t), s.numpy().astype(np.float32).tobytes(),
                  p.numpy().astype(np.float32).tobytes())
                 for text, (s, p, n, t) in entries.items()])
            self._db.commit()

    def encode(self, texts: list[str]) -> TextEncoding:
        """Encode with cache look-ups; misses are encoded together in one batch."""
        texts = validate_texts(list(texts))
        with self._lock:
            known = {t: self._memory[t] for t in set(texts) if t in self._memory}
            known.update(self._lookup_disk([t for t in set(texts) if t not in known]))
            missing = sorted(set(texts) - set(known))
            self.hits += len(texts) - sum(t in missing for t in texts)
            self.misses += len(missing)
            if missing:
                fresh = self.encoder.encode(missing)
                new = {}
                for i, text in enumerate(missing):
                    n = int(fresh.mask[i].sum())
                    rows = self.max_length if self._keep_padding else n
                    new[text] = (fresh.states[i, :rows].cpu().float(),
                                 fresh.pooled[i].cpu().float(), n, i in fresh.truncated)
                self._store(new)
                known.update(new)
        batch = len(texts)
        states = torch.zeros(batch, self.max_length, self.state_dim)
        mask = torch.zeros(batch, self.max_length, dtype=torch.bool)
        pooled = torch.stack([known[t][1] for t in texts])
        for i, text in enumerate(texts):
            s, _, n, _ = known[text]
            states[i, :s.shape[0]] = s
            mask[i, :n] = True
        truncated = [i for i, t in enumerate(texts) if known[t][3]]
        return TextEncoding(states, pooled, mask, truncated)

    def close(self) -> None:
        """Close the SQLite connection."""
        if self._db is not None:
            self._db.close()
            self._db = None
