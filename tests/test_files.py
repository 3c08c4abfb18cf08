"""asap/files.py: atomic writes (what every result, checkpoint and cache file goes through) and the
run-folder lock, checked against the file system itself, including a writer killed mid-write."""

import os
import signal
import subprocess
import textwrap

import numpy as np
import pytest

from asap.files import atomic_path, exclusive, file_sha1, write_text_atomic
from project_helpers import PYTHON, REPO


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_writer_that_appends_its_own_suffix_lands_in_place(tmp_path):
    """np.savez appends .npz to a name without it: the suffix argument keeps the rename on the file
    it wrote (the FID cache)."""
    path = tmp_path / "cache" / "stats.npz"
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, mu=np.arange(3.0))
    assert np.array_equal(np.load(path)["mu"], np.arange(3.0)) and len(list(path.parent.iterdir())) == 1


def test_a_writer_killed_mid_write_leaves_the_previous_file_whole(tmp_path):
    """A process SIGKILLed while its bytes are half written: the target still holds the previous
    content byte for byte (its SHA-1 unchanged), never a mix."""
    path = tmp_path / "generator.pt"
    path.write_bytes(os.urandom(1 << 20))
    before = file_sha1(path)
    script = textwrap.dedent(f"""
        import os, sys, time
        from asap.files import atomic_path
        with atomic_path({str(path)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * (1 << 19))
                f.flush()
                print("half", flush=True)
                time.sleep(60)
                f.write(b"x" * (1 << 19))
    """)
    proc = subprocess.Popen([PYTHON, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert file_sha1(path) == before


def test_the_run_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    lock = tmp_path / "run.lock"
    with exclusive(lock, "training run r"):
        other = subprocess.run([PYTHON, "-c", textwrap.dedent(f"""
            from pathlib import Path
            from asap.files import exclusive
            with exclusive(Path({str(lock)!r}), "training run r"):
                pass
        """)], cwd=REPO, capture_output=True, text=True)
        assert other.returncode != 0 and f"pid {os.getpid()} holds {lock}" in other.stderr
    with exclusive(lock, "training run r"):  # released at the end of the block
        pass
