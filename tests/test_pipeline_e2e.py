"""The whole pipeline end to end: `dvc repro` of the real dvc.yaml on the real facades archive (tiny
settings, 64x64), then a second `dvc repro` that finds everything up to date."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_helpers import facades_archive
from project_helpers import REPO, TINY, deep_merge, stage_env

pytestmark = pytest.mark.slow

OVERRIDES = {
    "dataset": "facades-64x64",
    "prepare": {"facades": {"sizes": ["64x64"]}},
    "segmenter": {"steps": 4, "batch_size": 4, "crop": None, "log_every": 1, "device": "cpu"},
    "evaluate": {"max_images": 6, "kid_subsets": 5, "num_samples": 2, "runtime_iters": 1, "device": "cpu"},
    "benchmark": {"num_classes": {"64x128": 35, "64x64": 13},
                  "models": {"asapnet": {"arch": "asapnet", "lr_max_width": 64},
                             "pix2pixhd-slim": {"arch": "pix2pixhd", "width_mult": 0.125}},
                  "cpu": {"models": ["asapnet", "pix2pixhd-slim"], "sizes": ["64x64", "64x128"],
                          "warmup": 0, "iters": 1}},
    "sweep": {"downsampling": [4], "variants": ["no_pe"], "steps": 2, "time_budget_s": None, "eval_max_images": 4,
              "runtime_iters": 1},
    "report": {"samples": 2, "plot_models": ["asapnet", "pix2pixhd-slim"]},
}


def make_dvc_project(root: Path) -> Path:
    """A copy of the project's code and pipeline files with tiny params, as a fresh user would have."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("asap", "pipelines", "benchmarks", "profiles"):
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(deep_merge(params, TINY), OVERRIDES)
    params["baselines"] = {"pix2pixhd": {"arch": "pix2pixhd", "width_mult": 0.125}}  # one baseline, tiny
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def dvc(project: Path, *args, timeout=900):
    env = stage_env(ASAP_FACADES_ARCHIVE=str(facades_archive()), PYTHONPATH=str(project))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dvc_repro_runs_every_stage_then_is_up_to_date(tmp_path):
    project = make_dvc_project(tmp_path / "proj")
    assert dvc(project, "init", "--no-scm", "-q").returncode == 0
    first = dvc(project, "repro")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-6000:]

    for path in ("data/prepared/facades-64x64/dataset.json", "models/asapnet/generator.pt",
                 "models/pix2pixhd/generator.pt", "models/segmenter-facades-64x64.pt", "metrics/train-asapnet.json",
                 "metrics/train-pix2pixhd.json", "metrics/segmenter.json", "metrics/eval-asapnet.json",
                 "metrics/eval-pix2pixhd.json", "metrics/benchmark-cpu.json", "metrics/sweep.csv",
                 "metrics/sweep.json", "reports/README.md", "reports/fig1_runtime_vs_resolution.png"):
        assert (project / path).is_file(), path
    prepared = json.loads((project / "data/prepared/facades-64x64/dataset.json").read_text())
    assert prepared["splits"] == {"train": 318, "test": 60}
    report = (project / "reports/README.md").read_text()
    for name, arch in (("asapnet", "asapnet"), ("pix2pixhd", "pix2pixhd")):
        ev = json.loads((project / f"metrics/eval-{name}.json").read_text())
        provenance = json.loads((project / f"metrics/provenance/eval-{name}.json").read_text())
        assert provenance["arch"] == arch and ev["fid"] > 0 and 0 <= ev["pixel_acc"] <= 1 and ev["generator_steps"] == 4
        assert f"{ev['fid']:.1f}" in report  # the report tabulates every evaluation it was given

    again = dvc(project, "repro")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "Data and pipelines are up to date" in again.stdout, again.stdout[-3000:]
    status = dvc(project, "status")
    assert "up to date" in status.stdout, status.stdout
