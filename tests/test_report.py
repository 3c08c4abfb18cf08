"""The report stage on a small project built by the real writers: the benchmark stage and
benchmarks/inference.py at tiny sizes, the prepare stage on six real facades pairs, generator
checkpoints from asap.models.checkpoint, per-class scores from asap.metrics.segmentation. The sweep,
train and evaluate files (whose writers need minutes of Ray training) are written in their writers'
exact schema. The README's tables are checked against the input files read independently here."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from asap.metrics.segmentation import segmentation_scores
from asap.models.asapnet import asapnet
from asap.models.baselines import SPADEConfig, SPADEGenerator
from asap.models.checkpoint import save_generator
from data_helpers import facades_archive
from project_helpers import REPO, deep_merge
from pipelines import report

SIZE = 64
DATASET = f"facades-{SIZE}x{SIZE}"
TINY_ASAP = {"lr_width": 4, "lr_max_width": 8, "lr_depth": 1, "mlp_width": 8}
BENCHMARK = {
    "device": "cpu", "precision": "fp32",
    "num_classes": {"32x64": 5, "64x64": 13},
    "models": {
        "asapnet": {"arch": "asapnet", **TINY_ASAP},
        "pix2pixhd": {"arch": "pix2pixhd", "ngf": 4, "n_blocks": 1},
        "pix2pixhd-slim": {"arch": "pix2pixhd", "ngf": 4, "n_blocks": 1, "width_mult": 0.5},
        "spade": {"arch": "spade", "nf": 2, "spade_hidden": 8},
        "spade-slim": {"arch": "spade", "nf": 2, "spade_hidden": 8, "width_mult": 0.5},
    },
    "cpu": {"models": ["asapnet", "pix2pixhd", "pix2pixhd-slim", "spade", "spade-slim"],
            "sizes": ["32x64", "64x64"], "warmup": 0, "iters": 2},
    "cuda": {"models": ["asapnet"], "sizes": ["64x64"], "warmup": 1, "iters": 2},
}
# (trial, variant, S): the full model at three S around the default S=4 of 64x64, both ablations
TRIALS = [("full-S2", "full", 2), ("full-S4", "full", 4), ("full-S8", "full", 8),
          ("no_pe-S4", "no_pe", 4), ("uniform-S4", "uniform", 4)]


# ----------------------------------------------------------------------------------------------
# A project made by the writers
# ----------------------------------------------------------------------------------------------

def write_params(project: Path, **report_section) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(params, {"dataset": DATASET, "benchmark": BENCHMARK,
                                 "report": {"samples": 2, "dpi": 60, **report_section}})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")


def prepare_six_pairs(project: Path) -> Path:
    """The real prepare stage on 3 test (cmp_b0001-3) + 3 train (cmp_b0061-63) real facades pairs."""
    from pipelines import prepare

    src = zipfile.ZipFile(facades_archive())
    mini = project / "mini.zip"
    stems = [f"cmp_b{i:04d}" for i in (1, 2, 3, 61, 62, 63)]
    with zipfile.ZipFile(mini, "w") as z:
        for name in src.namelist():
            if any(s in name for s in stems) or name.endswith("label_names.txt"):
                z.writestr(name, src.read(name))
    prepare.main(["facades", f"{SIZE}x{SIZE}", "--source", str(mini), "--out-root",
                  str(project / "data" / "prepared"), "--workers", "1", "--params", str(project / "params.yaml")])
    return project / "data" / "prepared" / DATASET


def write_sweep(project: Path) -> list[dict]:
    """metrics/sweep.csv/.json and models/sweep/<trial>/generator.pt as pipelines/sweep.py writes them
    (one row per trial: run_trial's keys plus score_trial's), with real runtimes of the generators."""
    from asap.metrics.runtime import time_asapnet

    rows = []
    for i, (trial, variant, s) in enumerate(TRIALS):
        torch.manual_seed(i)
        model = asapnet(13, SIZE, SIZE, downsampling=s, positional_encoding=variant != "no_pe",
                        spatially_uniform=variant == "uniform", **TINY_ASAP)
        save_generator(project / "models" / "sweep" / trial / "generator.pt", model,
                       meta={"dataset": DATASET, "steps": 2})
        timing = time_asapnet(model, torch.randint(1, 13, (1, SIZE, SIZE)), warmup=0, iters=1)
        rows.append({"trial": trial, "variant": variant, "S": s, "steps": 2, "train_wall_s": 1.5,
                     "run_name": f"sweep-{trial}-{DATASET}-abc", "mlflow_run_id": f"run{i}",
                     "P": model.config.num_params, "params": sum(p.numel() for p in model.parameters()),
                     "runtime_ms": timing["median_ms"], "lr_ms": timing["lr_ms"], "hr_ms": timing["hr_ms"],
                     "runtime_device": "cpu", "fid": 150.0 + 10 * i + 0.123, "kid_mean": 0.1 + 0.01 * i,
                     "kid_std": 0.01, "pixel_acc": 0.4 + 0.01 * i, "miou": 0.2 + 0.01 * i, "num_images": 3})
    with open(project / "metrics" / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (project / "metrics" / "sweep.json").write_text(json.dumps(
        {"trials": rows, "dataset": DATASET, "steps": 2, "mlflow_parent_run_id": "parent"}))
    return rows


def write_eval_and_train(project: Path) -> dict:
    """metrics/eval.json and eval_per_class.csv as pipelines/evaluate.py writes them (its own
    merge/CSV writers; scores from asap.metrics.segmentation on a confusion matrix), and train.json."""
    from pipelines.evaluate import merge_per_class, write_per_class_csv

    names = ["unused", "background", "facade", "window", "door", "cornice", "sill", "balcony", "blind",
             "deco", "molding", "pillar", "shop"]
    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 50, (13, 13), generator=gen) + torch.diag(torch.arange(13) * 40)
    counts[0] = 0
    counts[:, 0] = 0  # class 0 ("unused") never occurs in facades labels: its IoU is None
    scores = segmentation_scores(counts, names)
    real = segmentation_scores(counts + torch.diag(torch.full((13,), 100)) * (torch.arange(13) > 0), names)
    per_class = merge_per_class(scores["per_class"], real["per_class"])
    result = {"dataset": DATASET, "split": "test", "height": SIZE, "width": SIZE, "num_images": 3,
              "fid": 123.456, "kid_mean": 0.0789, "kid_std": 0.01, "kid_subset_size": 3, "kid_subsets": 100,
              "pixel_acc": scores["pixel_acc"], "miou": scores["miou"], "per_class": per_class,
              "segmented_pixels": scores["pixels"], "timing": {"generate_s": 0.01}, "generate_ms_per_image": 3.25,
              "real": {"pixel_acc": real["pixel_acc"], "miou": real["miou"]},
              "generator": "models/asapnet/generator.pt", "generator_steps": 4, "generator_run_name": "train-x",
              "generator_mlflow_run_id": "run", "segmenter": f"models/segmenter-{DATASET}.pt",
              "segmenter_steps": 10, "fid_real_cache": "data/cache/x.npz", "wall_s": 1.0}
    write_per_class_csv(project / "metrics" / "eval_per_class.csv", per_class)
    (project / "metrics" / "eval.json").write_text(json.dumps(result))
    (project / "metrics" / "train.json").write_text(json.dumps(
        {"step": 4, "steps": 4, "loss_g": 3.25, "loss_d": 1.5, "wall_s": 12.3, "num_workers": 2,
         "run_name": f"train-asapnet-{DATASET}-abc", "mlflow_run_id": "run"}))
    return result


def run_benchmark_writers(project: Path) -> None:
    from benchmarks import inference
    from pipelines import benchmark

    benchmark.main(["--params", str(project / "params.yaml"), "--out",
                    str(project / "metrics" / "benchmark-cpu.json"), "--no-mlflow"])
    inference.main(["--out", str(project / "metrics" / "inference-cpu.json"), "--device", "cpu",
                    "--sizes", "32x64,64x64", "--iters", "2", "--warmup", "0", "--batch", "1",
                    "--lr-max-width", "8", "--num-classes", "5", "--no-memory"])


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("report_project")
    (project / "metrics").mkdir()
    write_params(project)
    prepare_six_pairs(project)
    run_benchmark_writers(project)
    write_sweep(project)
    write_eval_and_train(project)
    torch.manual_seed(0)
    save_generator(project / "models" / "asapnet" / "generator.pt", asapnet(13, SIZE, SIZE, **TINY_ASAP))
    save_generator(project / "models" / "spade" / "generator.pt",
                   SPADEGenerator(SPADEConfig(num_classes=13, nf=2, spade_hidden=8)))
    return project


@pytest.fixture(scope="module")
def full_report(project) -> Path:
    report.main(["--root", str(project)])
    return project / "reports"


# ----------------------------------------------------------------------------------------------
# README tables, read back
# ----------------------------------------------------------------------------------------------

def tables_after(readme: str, heading: str) -> list[list[dict]]:
    """The markdown tables of the section whose heading starts with ``heading``, as lists of dicts."""
    sections = re.split(r"^## ", readme, flags=re.M)
    body = next(s for s in sections if s.startswith(heading))
    tables, current = [], []
    for line in body.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            header, rows = current[0], current[2:]
            tables.append([dict(zip(header, r)) for r in rows])
            current = []
    return tables


def close(text: str, value, digits: int) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return text == "n/a"
    return abs(float(text) - float(value)) <= 0.51 * 10 ** -digits


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------

def test_every_figure_is_a_real_image(full_report):
    for name, _ in report.FIGURES.values():
        path = full_report / name
        assert path.is_file(), f"{name} not drawn"
        with Image.open(path) as img:
            assert img.format == "PNG"
            w, h = img.size
            assert 250 <= w <= 4000 and 150 <= h <= 3000, (name, img.size)
            pixels = np.asarray(img.convert("L"), dtype=np.float32)
        assert pixels.std() > 5, f"{name} looks blank"  # ink on the page: axes, lines, images


def test_readme_tables_hold_the_input_numbers(project, full_report):
    readme = (full_report / "README.md").read_text()
    bench = json.loads((project / "metrics" / "benchmark-cpu.json").read_text())
    table = tables_after(readme, "Fig. 1:")[0]
    assert len(table) == len(bench["rows"])
    for row, cell in zip(bench["rows"], table):
        assert (cell["model"], cell["size"]) == (row["model"], row["size"])
        for key, col in (("median_ms", "median ms"), ("p10_ms", "p10 ms"), ("p90_ms", "p90 ms"),
                         ("lr_ms", "low-res ms"), ("hr_ms", "pixelwise ms")):
            assert close(cell[col], row[key], 2), (row["model"], key, cell[col], row[key])
    paper = tables_after(readme, "Fig. 1:")[1]
    assert [(r["size"], r["ms"]) for r in paper] == [("512x1024", "29.0"), ("1024x1024", "35.0")]
    assert all("2080 Ti" in r["device"] for r in paper)
    speedups = tables_after(readme, "Fig. 1:")[2]
    medians = bench["median_ms"]
    for r in speedups:
        assert close(r["speed-up (reference)"], medians[r["baseline"]][r["size"]] / medians["asapnet"][r["size"]], 2)
        assert r["paper: up to"] == {"pix2pixhd": "6.0", "spade": "10.0"}[r["baseline"]]

    with open(project / "metrics" / "sweep.csv") as f:
        sweep = list(csv.DictReader(f))
    trials = tables_after(readme, "Fig. 9: ablations")[0]
    assert [t["trial"] for t in trials] == [r["trial"] for r in sweep]
    for t, r in zip(trials, sweep):
        assert close(t["runtime ms"], float(r["runtime_ms"]), 2) and close(t["FID"], float(r["fid"]), 2)
        assert close(t["low-res ms"], float(r["lr_ms"]), 2) and close(t["pixelwise ms"], float(r["hr_ms"]), 2)
        assert close(t["mIoU"], float(r["miou"]), 3) and close(t["KID"], float(r["kid_mean"]), 4)
        assert t["S"] == r["S"] and t["variant"] == r["variant"]
    paper_s = {r["trial"]: r["ms"] for r in tables_after(readme, "Fig. 9: ablations")[1]}
    assert paper_s == {"larger S": "12.1", "default S": "14.2", "smaller S": "28.1"}

    ev = json.loads((project / "metrics" / "eval.json").read_text())
    quality = {r["model"]: r for r in tables_after(readme, "Fig. 6:")[0]}
    assert close(quality["asapnet"]["FID"], ev["fid"], 2) and close(quality["asapnet"]["KID"], ev["kid_mean"], 4)
    assert close(quality["asapnet"]["mIoU"], ev["miou"], 3)
    assert close(quality["asapnet"]["pixel acc"], ev["pixel_acc"], 3)
    assert close(quality["asapnet"]["batched generation ms/image"], ev["generate_ms_per_image"], 2)
    assert f"mIoU {ev['real']['miou']:.3f}" in readme
    per_class = {r["class"]: r for r in tables_after(readme, "Fig. 11:")[0]}
    with open(project / "metrics" / "eval_per_class.csv") as f:
        expected = list(csv.DictReader(f))
    assert len(per_class) == len(expected) == 13
    for c in expected:
        cell = per_class[c["name"]]
        assert close(cell["IoU"], float(c["iou"]) if c["iou"] else None, 3)
        assert close(cell["pixel share %"], 100 * float(c["pixel_share"]), 2)
        assert close(cell["real-photo IoU"], float(c["real_iou"]) if c["real_iou"] else None, 3)


def test_readme_says_what_is_missing(full_report):
    readme = (full_report / "README.md").read_text()
    missing = readme.split("## Not drawn")[1]
    # everything the project has is drawn; only baseline FIDs, which no stage produces, are missing
    assert "FID of the slim baselines" in missing
    for kind in ("benchmark results", "sweep results", "eval results", "inference results"):
        assert kind not in missing


def test_dvc_plot_series_match_the_benchmark(project, full_report):
    bench = json.loads((project / "metrics" / "benchmark-cpu.json").read_text())
    with open(full_report / "plots" / "runtime_vs_resolution.csv") as f:
        rows = list(csv.DictReader(f))
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert list(rows[0]) == ["size", "megapixels", *params["report"]["plot_models"]]
    for r in rows:
        for model in params["report"]["plot_models"]:
            assert float(r[model]) == pytest.approx(bench["median_ms"][model][r["size"]])


def test_dvc_plots_definitions_render(project, full_report, tmp_path):
    """`dvc plots show` finds every column dvc.yaml names in the CSV series the stage wrote."""
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=project, check=True, capture_output=True)
    shown = subprocess.run([str(dvc), "plots", "show", "--json"], cwd=project, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    ours = {k: v for k, v in data["data"].items() if not k.startswith("metrics/")}
    assert {"fig1_runtime_vs_resolution", "fig4_stream_split", "fig6_fid_vs_runtime",
            "fig11_per_class_iou"} <= set(ours)
    assert not [e for e in data.get("errors", []) if not str(e.get("name", "")).startswith("metrics/")], data["errors"]


def test_no_results_at_all_names_the_stages(tmp_path, capsys):
    write_params(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--root", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no pipeline results" in err
    for stage in ("dvc repro benchmark", "dvc repro train", "dvc repro evaluate", "dvc repro sweep"):
        assert stage in err


def test_a_required_input_that_is_missing_names_its_stage(project, tmp_path, capsys):
    (tmp_path / "metrics").mkdir()
    write_params(tmp_path)
    shutil.copy(project / "metrics" / "benchmark-cpu.json", tmp_path / "metrics")
    with pytest.raises(SystemExit):
        report.main(["--root", str(tmp_path), "--require", "eval"])
    assert "metrics/eval.json" in (err := capsys.readouterr().err) and "dvc repro evaluate" in err
    with pytest.raises(SystemExit):
        report.main(["--root", str(tmp_path), "--benchmark", "metrics/benchmark-nvidia-h100.json"])
    assert "benchmark-nvidia-h100.json" in (err := capsys.readouterr().err) and "dvc repro benchmark" in err
    write_params(tmp_path, require=["sweep"])
    with pytest.raises(SystemExit):
        report.main(["--root", str(tmp_path)])
    assert "dvc repro sweep" in capsys.readouterr().err


def test_benchmark_alone_draws_what_it_can(project, tmp_path):
    (tmp_path / "metrics").mkdir()
    write_params(tmp_path)
    shutil.copy(project / "metrics" / "benchmark-cpu.json", tmp_path / "metrics")
    rep = report.make_report(tmp_path, params=yaml.safe_load((tmp_path / "params.yaml").read_text()))
    assert sorted(rep.written) == sorted(report.FIGURES[k][0] for k in ("fig1", "fig4", "fig8"))
    missing = (tmp_path / "reports" / "README.md").read_text().split("## Not drawn")[1]
    for how in ("dvc repro sweep", "dvc repro evaluate", "dvc repro train", "benchmarks.inference"):
        assert how in missing


def test_a_second_device_gets_its_own_panels_and_rows(project, full_report, tmp_path):
    """A GPU session's committed file beside the CPU one (same schema, another device record)."""
    (tmp_path / "metrics").mkdir()
    write_params(tmp_path)
    cpu = json.loads((project / "metrics" / "benchmark-cpu.json").read_text())
    gpu = {**cpu, "device": {**cpu["device"], "device": "cuda", "device_name": "Some GPU 80GB"},
           "rows": [{**r, "median_ms": r["median_ms"] / 100, "p10_ms": r["p10_ms"] / 100,
                     "p90_ms": r["p90_ms"] / 100} for r in cpu["rows"]]}
    (tmp_path / "metrics" / "benchmark-cpu.json").write_text(json.dumps(cpu))
    (tmp_path / "metrics" / "benchmark-a-gpu.json").write_text(json.dumps(gpu))
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    report.make_report(tmp_path, params=params, benchmark_files=["metrics/benchmark-cpu.json"])
    readme = (tmp_path / "reports" / "README.md").read_text()
    table = tables_after(readme, "Fig. 1:")[0]
    gpu_rows = [r for r in table if r["device"] == "Some GPU 80GB, fp32"]
    assert len(gpu_rows) == len(table) // 2 == len(gpu["rows"])
    for cell, row in zip(gpu_rows, gpu["rows"]):
        assert close(cell["median ms"], row["median_ms"], 2)
    assert "GPU runtimes" not in readme.split("## Not drawn")[1]
    with Image.open(tmp_path / "reports" / report.FIGURES["fig1"][0]) as two, \
            Image.open(full_report / report.FIGURES["fig1"][0]) as one:
        assert two.size[0] > 1.5 * one.size[0]  # one panel per device
    # the --benchmark file is the primary device (though benchmark-a-gpu.json sorts first): the dvc
    # plots series hold its numbers
    with open(tmp_path / "reports" / "plots" / "runtime_vs_resolution.csv") as f:
        first = next(csv.DictReader(f))
    assert float(first["asapnet"]) == pytest.approx(cpu["median_ms"]["asapnet"][first["size"]])
