"""Files written safely: an exclusive lock for a run folder (shared by the in-process trainer and the
stages)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from asap.config import ConfigError


@contextmanager
def exclusive(lock_path: Path, what: str):
    """Hold an exclusive lock on ``lock_path`` for the block: two processes training one run into
    one folder (two direct `python -m pipelines.train`) would corrupt each other's checkpoints.
    `dvc repro` has its own lock; this one covers direct runs too. Released when the process dies."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(f"{what} is already running ({holder} holds {lock_path}); wait for it to end, "
                              "or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
