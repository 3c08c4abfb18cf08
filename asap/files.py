"""Files: an exclusive lock for a run folder (shared by the in-process trainer and the stages), and a
file's SHA-1 read in chunks."""

from __future__ import annotations

import hashlib
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


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes, read 1 MiB at a time (weights files are hundreds of MB)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
