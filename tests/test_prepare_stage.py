"""The prepare stage entry point (python -m pipelines.prepare) and, marked slow, the real `dvc repro` of
fetch-facades + prepare-facades@256x256 in a temporary copy of the project, run twice: the second run
must prepare nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from asap.config import ConfigError
from data_helpers import REPO, facades_archive
from pipelines import prepare as stage
from pipelines.common import run_stage


def write_folders(root, n=6, bad_stem=None):
    for i in range(n):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        label = rng.integers(0, 3, (8, 8)).astype(np.uint8)
        if f"s{i}" == bad_stem:
            label[0, 0] = 9
        Image.fromarray(label).save(root / "labels" / f"s{i}.png")


def write_params(path, **prepare):
    path.write_text(yaml.safe_dump({"prepare": prepare}))
    return path


def test_stage_prepares_custom_folders(tmp_path):
    write_folders(tmp_path / "mine")
    params = write_params(tmp_path / "params.yaml", workers=1, skip_bad=False,
                          folders={"root": str(tmp_path / "mine"), "name": "toy", "num_classes": 3,
                                   "test_fraction": 0.5, "sizes": ["4x4"]})
    stage.main(["folders", "4x4", "--params", str(params), "--out-root", str(tmp_path / "prepared")])
    info = json.loads((tmp_path / "prepared" / "toy-4x4" / "dataset.json").read_text())
    assert info["splits"] == {"train": 3, "test": 3} and info["num_classes"] == 3


def test_stage_reports_bad_data_and_bad_settings(tmp_path, capsys):
    write_folders(tmp_path / "mine", bad_stem="s2")
    params = write_params(tmp_path / "params.yaml",
                          folders={"root": str(tmp_path / "mine"), "num_classes": 3, "sizes": ["4x4"]})
    argv = ["folders", "4x4", "--params", str(params), "--out-root", str(tmp_path / "prepared")]
    with pytest.raises(SystemExit) as exit_:
        run_stage(lambda: stage.main(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "labels/s2.png: label values [9] are outside the allowed range 0..2" in err
    assert not (tmp_path / "prepared" / "custom-4x4").exists()

    with pytest.raises(ConfigError, match=r"size '4by4' is not <height>x<width>"):
        stage.main(["folders", "4by4", "--params", str(params)])
    write_params(params, folders={"root": str(tmp_path / "mine")}, sizes=["4x4"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sizes'\] in params.yaml prepare"):
        stage.main(argv)
    write_params(params, facades={"split": "authorz"})
    with pytest.raises(ConfigError, match=r"prepare.facades.split must be one of \['authors', 'random'\]"):
        stage.main(["facades", "4x4", "--params", str(params)])


@pytest.mark.parametrize("dataset,make,want", [
    ("facades", None, "--source {src} does not exist: pass the path of the CMP_facade_DB_base.zip archive"),
    ("facades", "dir", "--source {src} is not a file: pass the path of the CMP_facade_DB_base.zip archive"),
    ("cityscapes", None, "--source {src} does not exist: pass the path of the folder holding leftImg8bit/ and "
                         "gtFine/"),
    ("folders", None, "--source {src} does not exist: pass the path of the folder of your pairs"),
])
def test_a_given_source_that_is_missing_is_named_without_suggesting_source(tmp_path, capsys, dataset, make, want):
    src = tmp_path / "raw"
    if make == "dir":
        src.mkdir()
    params = write_params(tmp_path / "params.yaml", folders={"num_classes": 3})
    argv = [dataset, "4x4", "--source", str(src), "--params", str(params), "--out-root", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        run_stage(lambda: stage.main(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert want.format(src=src) in err and "pass --source" not in err and "or pass" not in err


@pytest.mark.slow
def test_dvc_repro_prepares_facades_once(tmp_path):
    archive = facades_archive()
    project = tmp_path / "project"
    project.mkdir()
    for folder in ("asap", "pipelines"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    # this stage's definitions from the real dvc.yaml, without the other stages
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    mine = {k: v for k, v in stages.items() if k in ("fetch-facades", "prepare-facades")}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": mine}))
    env = {**os.environ, "ASAP_FACADES_ARCHIVE": str(archive),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    dvc = [os.path.join(os.path.dirname(sys.executable), "dvc")]

    def run(*args):
        result = subprocess.run(dvc + list(args), cwd=project, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    run("init", "-q")
    first = run("repro", "prepare-facades@256x256")
    assert "Running stage 'fetch-facades'" in first and "Running stage 'prepare-facades@256x256'" in first
    out = project / "data" / "prepared" / "facades-256x256"
    assert json.loads((out / "dataset.json").read_text())["splits"] == {"train": 318, "test": 60}
    stamp = (out / "manifest.csv").stat().st_mtime_ns
    second = run("repro", "prepare-facades@256x256")
    assert "Running stage" not in second and "up to date" in second
    assert (out / "manifest.csv").stat().st_mtime_ns == stamp
