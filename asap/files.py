"""Files: checkpoints read as data (never as code), atomic writes (every result, checkpoint and cache file goes through ``atomic_path``), an
exclusive lock for a run folder (shared by the in-process trainer and the stages), and a file's SHA-1
read in chunks."""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from asap.config import ConfigError


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error it replaces
    ``path`` in one rename, so a reader, a kill or a full disk never leaves half a file there. On an
    error the temporary file is removed and ``path`` keeps what it held. ``suffix`` ends the temporary
    name for writers that append their own (``np.savez`` adds ``.npz``). The name carries the pid:
    two processes writing one file never share a temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


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


# pickle opcodes that name or call code: what an armed file needs, what tensors saved as data never hold
CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"}


def _names_code(path: Path) -> bool:
    """Does a plain pickle file name or call code? Its opcodes, parsed (pickletools never runs them)."""
    import pickletools

    try:
        with open(path, "rb") as f:
            return any(op.name in CODE_OPCODES for op, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not a whole pickle: then it names nothing we could run
        return False


def load_as_data(path: str | Path, error: type[Exception], missing_hint: str = ""):
    """``torch.load(weights_only=True)`` with errors a user can act on, raised as ``error``: a missing
    file, a damaged one, or one that holds pickled code (refused, never run)."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"checkpoint {path} does not exist{missing_hint}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise error(f"{path} is damaged or not a torch checkpoint ({str(err).splitlines()[0][:200]})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if not found and not _names_code(path):  # text, an image, ... read as a pickle
            reason = re.search(r"Unsupported operand \d+", str(err))
            raise error(f"{path} is damaged or not a torch checkpoint (not pickled tensors: "
                        f"{reason.group(0) if reason else str(err).splitlines()[0][:120]})") from None
        what = f"it names {found.group(1)}" if found else "objects beyond tensors and plain values"
        raise error(
            f"{path} holds pickled code ({what}) and is refused: checkpoints are read as data only, never run. "
            "Ours and the authors' generators hold tensors and plain values; a file you trust can be re-saved "
            "as its state_dict where it was made") from None
    except Exception as err:  # zip errors, truncated files, other formats
        raise error(f"{path} is damaged or not a torch checkpoint "
                    f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
