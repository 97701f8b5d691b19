"""Keeps one worker process alive beside the server and quarantines jobs that kill it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .store import Store

#: how long a stopping worker may take to hand its job back before it is killed
STOP_SECONDS = 10.0


def recover_at_start(store: Store) -> dict:
    """Before any worker runs: re-queue (or quarantine) interrupted jobs, sweep stray files.

    Taking the worker lock first proves no worker of an earlier server is still writing.
    """
    with open(store.root / "worker.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recovered = store.recover()
        swept = store.sweep()
        fcntl.flock(lock, fcntl.LOCK_UN)
    return {"recovered": len(recovered), "swept": swept}


class WorkerSupervisor:
    """Starts the worker, restarts it when it dies, and re-queues the job it was running."""

    def __init__(self, store: Store, *, model_memory_mb: int = 4096,
                 env: dict[str, str] | None = None):
        self.store = store
        self.model_memory_mb = model_memory_mb
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor",
                                        daemon=True)

    def start(self) -> None:
        """Start watching (and so the first worker)."""
        self._thread.start()

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "imagesynth.serve.worker", "--data-dir",
                   str(self.store.root), "--parent", str(os.getpid()),
                   "--model-memory-mb", str(self.model_memory_mb)]
        log = open(Path(self.store.root) / "worker.log", "a")
        # Started from this long-lived thread: the worker's PR_SET_PDEATHSIG follows this thread.
        return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)

    def _watch(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            started = time.monotonic()
            self.process = self._spawn()
            while self.process.poll() is None:
                if self._stopping.wait(0.1):
                    return
            self.store.recover(dead_pid=self.process.pid)
            if self._stopping.is_set():
                return
            self.restarts += 1
            # A worker that dies at once (a broken install) must not spin a core.
            backoff = 0.2 if time.monotonic() - started > 5 else min(backoff * 2, 5.0)
            self._stopping.wait(backoff)

    def stop(self) -> None:
        """Ask the worker to hand back its job and exit; kill it if it does not."""
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self.store.recover(dead_pid=process.pid)
        self._thread.join(timeout=STOP_SECONDS)

    @property
    def alive(self) -> bool:
        """Whether a worker process is running now."""
        return self.process is not None and self.process.poll() is None
