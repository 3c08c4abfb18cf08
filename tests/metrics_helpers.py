"""What a DVC metrics file may hold: numbers a user compares (issue 16: run ids, paths, commits and
device names go to the provenance sidecars). The files a stage declares under `metrics:` are found by
DVC's own parser of the project's dvc.yaml (foreach and ${...} resolved), not by our code."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path


def declared_metrics(project: Path, stage: str) -> list[Path]:
    """The `metrics:` files of ``stage`` ("train", "evaluate-baseline@spade", ...) in project/dvc.yaml."""
    from dvc.repo import Repo

    with contextlib.chdir(project), Repo(str(project), uninitialized=True) as repo:
        [resolved] = repo.stage.collect(stage)
        return [project / str(out.def_path) for out in resolved.outs if out.metric]


def not_numbers(data, where: str = "") -> list[str]:
    """Every leaf of a JSON document that is not a finite number (bools, strings, nulls, lists: not
    something `dvc metrics show` compares), as "key.path = value"."""
    if isinstance(data, dict):
        return [bad for key, value in data.items() for bad in not_numbers(value, f"{where}.{key}" if where else key)]
    if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
        return [f"{where or '<top>'} = {data!r}"]
    return []


def assert_stage_metrics_are_numbers(project: Path, stage: str) -> list[Path]:
    """Each metrics file ``stage`` declares exists and holds numbers only; returns the files."""
    files = declared_metrics(project, stage)
    assert files, f"stage {stage} declares no metrics"
    for path in files:
        assert path.is_file(), f"{stage} declares {path.relative_to(project)} but did not write it"
        bad = not_numbers(json.loads(path.read_text()))
        assert not bad, f"{path.relative_to(project)} (stage {stage}) holds values that are not numbers: {bad}"
    return files


def matmul_tflops_here(threads: int | None = None) -> float:
    """A 1024^3 fp32 matmul's rate timed here with perf_counter (median of 6 after 2 warm-ups), at
    ``threads`` torch threads (default: as they are): the independent check of a recorded host rate."""
    import time

    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    saved, times = torch.get_num_threads(), []
    torch.set_num_threads(threads or saved)
    try:
        for _ in range(8):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)
    return 2 * 1024 ** 3 / sorted(times[2:])[3] / 1e12
