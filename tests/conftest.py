"""Shared fixtures: a small real prepared dataset and throw-away project folders for stage tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from project_helpers import REPO, SMOKE_BUDGET_S, TRAINED, prepare_facades

# Tiny tensors on 2 shared cores: more threads than cores only adds contention.
torch.set_num_threads(1)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def facades64(tmp_path_factory) -> Path:
    """The real CMP facades prepared at 64x64 (all 378 pairs), once per test session."""
    return prepare_facades(tmp_path_factory.mktemp("prepared"), "64x64")


@pytest.fixture(autouse=True)
def _end_a_worker_whose_cuda_context_is_lost(request):
    """After a gpu test on a pytest-xdist worker: when the CUDA context is gone (a kernel faulted with an
    illegal memory access, a sticky error), end the worker, so that xdist reports this test as crashed
    and starts a fresh worker for the rest; otherwise every later test of the worker fails with the
    same error (the GPU campaign's phase 1 then cannot tell which kernels are broken)."""
    yield
    if "gpu" not in request.keywords or not os.environ.get("PYTEST_XDIST_WORKER") or not torch.cuda.is_available():
        return
    try:
        torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001 - any CUDA error here is sticky
        sys.stderr.write(f"\n{request.node.nodeid}: the CUDA context is lost ({err}); ending this worker\n")
        sys.stderr.flush()
        os._exit(70)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marker gpu); this machine has no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TRAINED_STEPS = 40  # per generator, at 5x the default learning rates: images that follow the labels, ~1 min


@pytest.fixture(scope="session")
def trained256(tmp_path_factory) -> Path:
    """A project-shaped folder made once per session, independent of what `make run` left in this
    checkout (a fresh clone has no trained models): the real facades prepared at 256x256 (as the
    default pipeline does), ASAP-Net and SPADE with the default params' configs trained in-process for
    TRAINED_STEPS steps on it (asap.training.train, the `asap train` path), and a segmenter checkpoint
    (a file that is not a generator). Layout: data/prepared/facades-256x256/,
    models/{asapnet,spade}/generator.pt, models/segmenter-facades-256x256.pt. With
    ASAP_UPDATE_DOCS_SCREENSHOT=1 (tests/test_demo.py retakes docs/demo*.png) it is this checkout
    instead, with the models `make run` trained."""
    import shutil

    import yaml

    from asap.models.segmenter import Segmenter, SegmenterConfig, save_segmenter
    from asap.training import TrainingRun, train

    if os.environ.get("ASAP_UPDATE_DOCS_SCREENSHOT") == "1":
        # the README's pictures show the default pipeline's models (`make run`), not these brief ones
        TRAINED.root = REPO
        missing = [str(p) for p in (TRAINED.asapnet, TRAINED.spade, TRAINED.segmenter, TRAINED.data / "dataset.json")
                   if not p.exists()]
        if missing:
            pytest.fail(f"ASAP_UPDATE_DOCS_SCREENSHOT=1 uses this checkout's trained files; missing {missing}: "
                        "run `make run` first")
        return REPO
    root = tmp_path_factory.mktemp("trained256")
    data = prepare_facades(root / "data" / "prepared", "256x256")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["train"].update(steps=TRAINED_STEPS, time_budget_s=None, num_workers=1, log_every=TRAINED_STEPS,
                      checkpoint_every=TRAINED_STEPS, sample_every=10 ** 6, decay_from=1.0,
                      lr_g=5 * p["train"]["lr_g"], lr_d=5 * p["train"]["lr_d"])
    p["loss"]["perceptual"] = "off"  # the VGG's cost buys nothing in a dozen steps
    for name in ("asapnet", "spade"):
        run = TrainingRun.from_params(p, data, name)
        out = root / "models" / name / "generator.pt"
        out.parent.mkdir(parents=True)
        train(run, root / "runs" / name, out=out, keep_checkpoints=0, printer=lambda *a, **k: None)
    save_segmenter(root / "models" / "segmenter-facades-256x256.pt",
                   Segmenter(SegmenterConfig(num_classes=13, width_mult=0.1)), meta={"dataset": data.name})
    shutil.rmtree(root / "runs", ignore_errors=True)
    TRAINED.root = root  # project_helpers.TRAINED names its files
    return root


@pytest.fixture(scope="session")
def carry(facades64, tmp_path_factory) -> Path:
    """What `python -m benchmarks.gpu_campaign pack` writes for the real facades at 64x64."""
    from benchmarks.campaign.pack import pack

    out = tmp_path_factory.mktemp("carry") / ".carry"
    pack(facades64, out)
    return out


@pytest.fixture(scope="session")
def smoke(carry, tmp_path_factory):
    """One smoke run of every phase, as the device would run it: a subprocess, no git (the device's
    copy of the tree has no .git, so the commit must come from the file `pack` wrote). Shared by
    tests/test_gpu_campaign.py and tests/test_report_gpu.py."""
    from benchmarks.campaign import common
    from benchmarks.campaign.common import phase_file

    out = tmp_path_factory.mktemp("smoke-out")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               GIT_DIR=str(out / "no-git-here"), GIT_CEILING_DIRECTORIES="/")
    env.pop(common.COMMIT_ENV, None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_campaign", "run", "--smoke", "--out", str(out),
                           "--budget-s", str(SMOKE_BUDGET_S), "--data", str(carry / "facades-64x64"),
                           "--trunk", str(carry / "hed-vgg16-trunk.pt"), "--commit-file", str(carry / "commit.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, f"smoke run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    phases = {n: json.loads((out / phase_file(n)).read_text()) for n in (1, 2, 3, 4)}
    return {"out": out, "phases": phases, "wall_s": wall, "log": proc.stdout}
