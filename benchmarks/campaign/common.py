"""What every phase of the GPU campaign shares: the clock with its global deadline, where the results
go and how big they may be, and the record of what ran (device, library versions, git commit).

Imports only the standard library, torch and asap (the GPU machine has no Ray, DVC or MLflow).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asap.files import write_text_atomic

REPO = Path(__file__).resolve().parents[2]
SCHEMA = "asap-gpu-campaign/1"
PHASES = {1: "correctness", 2: "inference", 3: "training", 4: "quality"}

# What the device tool brings back from $OUT (/work/.library/device/README.md): at most 8 files of
# 16 MiB each, at most 2 folders deep. The campaign writes its files directly into --out and keeps
# one file free for the console log (`... | tee $OUT/campaign.log`).
MAX_RESULT_FILES = 8
CAMPAIGN_FILES = MAX_RESULT_FILES - 1
RESULT_FILE_LIMIT = 16_000_000       # bytes: 16 MB decimal, below 16 MiB, so either reading holds
TRAVEL_LIMIT = 64 * 2**20            # working tree + carried paths per device call

CARRY = REPO / ".carry"              # what `pack` writes and the device call carries
COMMIT_FILE = "commit.json"          # inside CARRY: the commit the working tree was packed at
COMMIT_ENV = "ASAP_GIT_COMMIT"       # overrides everything (e.g. set by hand on a git-less machine)

# Never imported by the campaign: the GPU machine has none of them (checked by tests/test_gpu_campaign.py
# on the modules a smoke run leaves in sys.modules, and recorded in every phase file).
FORBIDDEN_MODULES = ("ray", "mlflow", "dvc", "pipelines", "pandas", "torchvision", "matplotlib")


def phase_file(phase: int) -> str:
    return f"phase{phase}-{PHASES[phase]}.json"


def images_file(name: str) -> str:
    return f"images-{name}.npz"


# ----------------------------------------------------------------------------------------------
# Time
# ----------------------------------------------------------------------------------------------

@dataclass
class Clock:
    """Seconds since the campaign started and what is left before its global deadline. Phases ask
    ``until(cap)`` for the moment they must stop starting new measurements: a late phase is cut
    short (and says what it skipped) instead of the whole command being killed."""
    deadline_s: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.deadline_s - self.elapsed()

    def until(self, cap_s: float, reserve_s: float = 0.0) -> float:
        """perf_counter() time at which a phase capped at ``cap_s`` must stop, keeping ``reserve_s``
        of the deadline for the phases after it."""
        return min(time.perf_counter() + cap_s, self.start + self.deadline_s - reserve_s)


def log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------------------
# What ran: device, versions, commit
# ----------------------------------------------------------------------------------------------

def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state() -> dict | None:
    """HEAD, whether the working tree differs from it, and a digest of that difference (tracked
    changes; untracked files are listed by name) — or None where there is no git or no .git."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return None
    status = _git("status", "--porcelain") or ""
    diff = _git("diff", "HEAD") or ""
    return {"commit": head.strip(), "dirty": bool(status.strip()),
            "diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None,
            "untracked": [line[3:] for line in status.splitlines() if line.startswith("??")][:50]}


def commit_info(commit_file: str | Path | None = None) -> dict:
    """The commit the campaign runs from: $ASAP_GIT_COMMIT, else the file `pack` wrote (run it after
    the last commit), else git itself, else "unknown"."""
    if os.environ.get(COMMIT_ENV):
        return {"commit": os.environ[COMMIT_ENV], "source": f"env {COMMIT_ENV}"}
    # The file `pack` wrote first: on the device machine a .git found there is not the tree that was
    # carried (seen on an H200: git said b6cb4fa of an older session while the tree was newer).
    path = Path(commit_file) if commit_file is not None else CARRY / COMMIT_FILE
    state = None if path.is_file() else git_state()
    if state is not None:
        return {**state, "source": "git"}
    if path.is_file():
        try:
            return {**json.loads(path.read_text()), "source": f"file {path}"}
        except (OSError, ValueError) as err:
            return {"commit": "unknown", "source": f"unreadable {path}: {err}"}
    return {"commit": "unknown", "source": "no git and no commit file (run `python -m benchmarks.gpu_campaign pack`)"}


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    for name in ("triton", "numpy", "PIL", "yaml", "einops"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = None
    return out


def device_record(device: torch.device) -> dict:
    """asap.metrics.runtime.device_info plus what the GPU itself reports, and the file-name slug."""
    from asap.metrics.runtime import device_info, device_slug

    info = device_info(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    info["slug"] = device_slug(info)
    return info


def environment(device: torch.device, commit: dict) -> dict:
    return {"device": device_record(device), "versions": versions(), "commit": commit,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1"}


def top_level_modules() -> list[str]:
    """Top-level names of every module imported so far (what the campaign pulled in)."""
    return sorted({name.split(".")[0] for name in list(sys.modules) if not name.startswith("_")})


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def write_json(path: Path, data: dict) -> Path:
    """Atomically (a temporary file renamed into place): a kill never leaves half a JSON file."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


