"""Throw-away project folders for stage tests: the repo's params.yaml with overrides, its dvc.yaml,
and a prepared dataset linked in, so stages run exactly as `dvc repro` would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from data_helpers import facades_archive

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SMOKE_BUDGET_S = 2.0  # seconds of training per generator in the GPU campaign's smoke run (tests/conftest.py smoke)

# Small enough for 2 CPU cores: a few seconds per training step with two Ray workers.
TINY = {
    "model": {"lr_width": 8, "lr_max_width": 16, "lr_depth": 1, "mlp_width": 16},
    "train": {"steps": 4, "time_budget_s": None, "checkpoint_every_s": None, "ndf": 8, "d_layers": 2,
              "log_every": 1, "checkpoint_every": 2, "sample_every": 2, "num_workers": 2, "cpus_per_worker": 0.9},
    "loss": {"perceptual": "hed-vgg16"},
}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def prepare_facades(out_root: Path, size: str) -> Path:
    """Run the real prepare stage on the real archive; returns data/prepared/facades-<size>."""
    subprocess.run([PYTHON, "-m", "pipelines.prepare", "facades", size, "--source", str(facades_archive()),
                    "--out-root", str(out_root)], cwd=REPO, check=True, capture_output=True, text=True)
    return out_root / f"facades-{size}"


def make_project(root: Path, prepared: Path, overrides: dict | None = None) -> Path:
    """A project folder at ``root`` using ``prepared`` as its dataset."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(deep_merge(params, TINY), {"dataset": prepared.name, **(overrides or {})})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (root / "data" / "prepared").mkdir(parents=True, exist_ok=True)
    link = root / "data" / "prepared" / prepared.name
    if not link.exists():
        link.symlink_to(prepared, target_is_directory=True)
    return root


def stage_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_AUTH_MODE", None)  # stages choose it as they do for users: token auth for a local Ray
    env.pop("RAY_COLOR_PREFIX", None)  # and whether Ray colours its workers' lines
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_ADDRESS": ""})
    env.update(extra)
    return env


def run_stage(project: Path, module: str, *args, timeout: int = 600, env: dict | None = None):
    """Run `python -m <module>` in ``project`` like DVC does; returns CompletedProcess (check=False)."""
    return subprocess.run([PYTHON, "-m", module, *args], cwd=project, env=env or stage_env(),
                          capture_output=True, text=True, timeout=timeout)


class Trained256:
    """The files of the session folder conftest's ``trained256`` fixture makes (the real facades at
    256x256 and briefly trained generators; a fresh clone has no models/). The fixture binds ``root``;
    a module that reads these declares ``pytestmark = pytest.mark.usefixtures("trained256")``."""

    root: Path | None = None

    def _at(self, relative: str) -> Path:
        if self.root is None:
            raise RuntimeError("the trained256 fixture has not run: add "
                               "pytestmark = pytest.mark.usefixtures('trained256') to the test module")
        return self.root / relative

    def generator(self, name: str) -> Path:
        return self._at(f"models/{name}/generator.pt")

    @property
    def data(self) -> Path:
        return self._at("data/prepared/facades-256x256")

    @property
    def labels(self) -> Path:
        return self.data / "test" / "labels"

    @property
    def asapnet(self) -> Path:
        return self.generator("asapnet")

    @property
    def spade(self) -> Path:
        return self.generator("spade")

    @property
    def segmenter(self) -> Path:
        return self._at("models/segmenter-facades-256x256.pt")


TRAINED = Trained256()
