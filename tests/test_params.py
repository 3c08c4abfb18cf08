"""params.yaml as typed configs: `python -m pipelines.params` checks every section up front, and each
problem is one line naming the key, the value and what is allowed; the shipped params and the paper
profile pass."""

import copy
import subprocess

import pytest
import yaml

from asap.config import ConfigError
from pipelines.params import check
from project_helpers import PYTHON, REPO, deep_merge

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value):
    p = copy.deepcopy(PARAMS)
    *parents, key = path.split(".")
    node = p
    for name in parents:
        node = node.setdefault(name, {})
    node[key] = value
    return p


def test_the_shipped_params_and_the_paper_profile_are_valid():
    checked = check(copy.deepcopy(PARAMS))
    assert checked["sweep"].downsampling == PARAMS["sweep"]["downsampling"]
    assert checked["report"].dpi == PARAMS["report"]["dpi"] and checked["prepare"].facades.split == "authors"
    assert list(checked["generators"]) == [PARAMS["train"]["name"], *PARAMS["baselines"]]
    profile = yaml.safe_load((REPO / "profiles" / "paper-gpu.yaml").read_text())  # nested overrides
    paper = check(deep_merge(copy.deepcopy(PARAMS), profile))
    assert paper["dataset"] == profile["dataset"] and paper["train"][0].steps == profile["train"]["steps"]


@pytest.mark.parametrize("path, value, needles", [
    ("report.dpi", 10, ["report.dpi", "50..600", "10"]),
    ("sweep.downsampling", [3], ["sweep.downsampling", "power of two", "3"]),
    ("benchmark.cpu.iters", 0, ["iters >= 1", "0"]),
    ("prepare.facades.split", "bogus", ["split", "bogus"]),
    ("prepare.wrokers", 2, ["wrokers", "prepare"]),
    ("baselines.big", {"arch": "unet"}, ["baselines.big", "unet"]),
    ("baselines.spade.widht_mult", 0.5, ["widht_mult", "baselines.spade", "width_mult"]),
    ("baselines.spade.num_classes", 5, ["num_classes", "prepared dataset"]),
    ("model.mlp_widht", 32, ["mlp_widht", "params.yaml model", "mlp_width"]),
    ("train.num_workers", 0, ["train.num_workers", "0"]),
    ("loss.perceptual", "vgg99", ["perceptual", "vgg99"]),
    ("evaluate.kid_subsets", "many", ["kid_subsets", "many"]),
    ("trian", {"steps": 3}, ["unknown section", "trian"]),
])
def test_a_bad_value_in_any_section_is_named_up_front(path, value, needles):
    with pytest.raises(ConfigError) as err:
        check(with_change(path, value))
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_the_command_checks_a_file_and_a_stage_refuses_an_unknown_section(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("report.dpi", 10)))
    proc = subprocess.run([PYTHON, "-m", "pipelines.params", "--params", str(bad)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {bad}: report.dpi") and "Traceback" not in proc.stderr
    ok = subprocess.run([PYTHON, "-m", "pipelines.params"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "every section valid" in ok.stdout

    from pipelines.common import params
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**PARAMS, "trian": {"steps": 3}}))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['trian'\]"):
        params(typo)


@pytest.mark.parametrize("error", ["asap.data.common.DataError", "asap.models.checkpoint.CheckpointError",
                                   "asap.infer.TranslateError", "pipelines.common.MissingInput",
                                   "asap.weights.PerceptualNetError", "RuntimeError"])
def test_the_stage_runner_prints_a_user_error_as_one_line_and_a_bug_with_its_traceback(error):
    """Every user-facing error derives from asap.config.UserError and is caught once, by run_stage:
    one `error:` line and exit 2. Anything else is a bug: Python's traceback, exit 1."""
    module, _, name = error.rpartition(".")
    raise_it = f"from {module} import {name} as E" if module else f"E = {name}"
    proc = subprocess.run([PYTHON, "-c", f"""
{raise_it}
from pipelines.common import run_stage
def main():
    raise E("data/x.png: label 99 is not a class (0..12)")
run_stage(main)
"""], cwd=REPO, capture_output=True, text=True)
    if name == "RuntimeError":
        assert proc.returncode == 1 and "Traceback" in proc.stderr
    else:
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == "error: data/x.png: label 99 is not a class (0..12)\n"
