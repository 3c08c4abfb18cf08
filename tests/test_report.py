"""The report stage on a small project built by the real writers: the benchmark stage and
benchmarks/inference.py at tiny sizes, the prepare stage on six real facades pairs, generator
checkpoints saved as pipelines/train.py saves them (asap.training.TrainingRun + generator_meta),
per-class scores from asap.metrics.segmentation and evaluate's own CSV/JSON writers. The sweep,
train-<name> and eval-<name> files and their provenance sidecars (whose writers need minutes of Ray
training and Inception) are written in their writers' exact schema. ASAP-Net is trained twice (the
`repeat:` entry asapnet-seed1) with FIDs 12.5 apart: the run-to-run noise the report measures and marks
differences against. The README's tables, the plot series, the drawn Fig. 6 and noise/seed-noise.json
are checked against the input files read independently here."""

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
from asap.models.checkpoint import save_generator
from data_helpers import facades_archive
from metrics_helpers import assert_stage_metrics_are_numbers
from project_helpers import REPO, deep_merge
from pipelines import report
from pipelines.common import run_stage

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
# The generators params.yaml trains (train.name + `baselines`), tiny, and what the project holds of each:
# ASAP-Net, its second seed, SPADE and a slim SPADE trained and evaluated; pix2pixHD trained, not
# evaluated; pix2pixHD-slim in params.yaml only (nothing run).
BASELINES = {
    "pix2pixhd": {"arch": "pix2pixhd", "ngf": 4, "n_blocks": 1},
    "pix2pixhd-slim": {"arch": "pix2pixhd", "ngf": 4, "n_blocks": 1, "width_mult": 0.5},
    "spade": {"arch": "spade", "nf": 2, "spade_hidden": 8},
    "spade-slim": {"arch": "spade", "nf": 2, "spade_hidden": 8, "width_mult": 0.5},
    "asapnet-seed1": {"repeat": "asapnet", "seed": 1},
}
TRAINED = ["asapnet", "pix2pixhd", "spade", "spade-slim", "asapnet-seed1"]
# name -> (FID, KID mean, KID std, batch-1 runtime ms, steps reached). The two ASAP-Net seeds: FID 12.5
# apart, KID 0.015 apart (the run-to-run noise). SPADE differs from ASAP-Net beyond it (FID +50.5, KID
# +0.1011); the slim SPADE within it (FID +10.25, KID +0.0092) and within KID's subset spread.
SCORES = {"asapnet": (300.25, 0.3012, 0.0100, 50.5, 450),
          "spade": (350.75, 0.4023, 0.0100, 210.25, 120),
          "spade-slim": (310.5, 0.3104, 0.0200, 120.75, 260),
          "asapnet-seed1": (312.75, 0.3162, 0.0100, 51.25, 440)}
NOISE_FID = 12.5
FLOOR = {"fid": 124.5, "kid_mean": 0.0123, "kid_std": 0.004, "num_images": 3, "reference_split": "train"}
BUDGET_S = 180
# the host's matmul rate each run recorded (asap.engine record_host / record_host_end), in TFLOP/s: spade's host
# ran at half asapnet's; spade-slim trained before runs recorded it
HOST_TFLOPS = {"asapnet": 0.2125, "pix2pixhd": 0.205, "spade": 0.10625, "asapnet-seed1": 0.2}
# the host's matmul rate as each runtime was timed (pipelines/evaluate.py, with_host_rate): asapnet-seed1's
# host ran 1.5x asapnet's; spade-slim was timed before runtimes recorded it
RUNTIME_TFLOPS = {"asapnet": 0.18, "spade": 0.15, "asapnet-seed1": 0.27}
STEADY = "glibc steady (mmap threshold 32 MiB, trim threshold 1024 MiB)"  # asap.metrics.runtime's CPU allocator policy
TRAIN_COMMIT = "0123456789abcdef0123456789abcdef01234567"
EVAL_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"

# (trial, variant, S): the full model at three S around the default S=4 of 64x64, both ablations
TRIALS = [("full-S2", "full", 2), ("full-S4", "full", 4), ("full-S8", "full", 8),
          ("no_pe-S4", "no_pe", 4), ("uniform-S4", "uniform", 4)]


# ----------------------------------------------------------------------------------------------
# A project made by the writers
# ----------------------------------------------------------------------------------------------

def write_params(project: Path, **report_section) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(params, {"dataset": DATASET, "benchmark": BENCHMARK, "model": TINY_ASAP,
                                 "train": {"time_budget_s": BUDGET_S},
                                 "report": {"samples": 2, "dpi": 60, **report_section}})
    params["baselines"] = BASELINES
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    (project / "profiles").mkdir(exist_ok=True)
    shutil.copy(REPO / "profiles" / "paper-gpu.yaml", project / "profiles")


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
                       meta={"dataset": DATASET, "steps": 2, "train_device": "cpu"})  # export_generator's keys
        timing = time_asapnet(model, torch.randint(1, 13, (1, SIZE, SIZE)), warmup=0, iters=1)
        rows.append({"trial": trial, "variant": variant, "S": s, "steps": 2, "train_seconds": 1.2, "train_wall_s": 1.5,
                     "run_name": f"sweep-{trial}-{DATASET}-abc", "mlflow_run_id": f"run{i}",
                     "P": model.config.num_params, "params": sum(p.numel() for p in model.parameters()),
                     "runtime_ms": timing["median_ms"], "lr_ms": timing["lr_ms"], "hr_ms": timing["hr_ms"],
                     "runtime_device": "cpu", "runtime_threads": 1, "fid": 150.0 + 10 * i + 0.123,
                     "host_matmul_tflops": 0.2 + 0.005 * i,  # 1.1x apart at most: not called out
                     "runtime_host_matmul_tflops": 0.19 + 0.005 * i,  # the same
                     "runtime_allocator": STEADY,
                     "kid_mean": 0.1 + 0.01 * i,
                     "kid_std": 0.01, "pixel_acc": 0.4 + 0.01 * i, "miou": 0.2 + 0.01 * i, "num_images": 3})
    with open(project / "metrics" / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (project / "metrics" / "sweep.json").write_text(json.dumps(
        {"trials": rows, "dataset": DATASET, "steps": 2, "time_budget_s": 40, "mlflow_parent_run_id": "parent"}))
    return rows


def train_generators(project: Path) -> dict[str, dict]:
    """models/<name>/generator.pt, metrics/train-<name>.json (numbers) and
    metrics/provenance/train-<name>.json as pipelines/train.py's finish() writes them (TrainingRun from
    params.yaml, asap.training.generator_meta, common.write_json). Returns the train files' contents by name."""
    from asap.models.checkpoint import build_generator
    from asap.training import TrainingRun, generator_meta
    from pipelines.common import write_json

    params = yaml.safe_load((project / "params.yaml").read_text())
    written = {}
    for i, name in enumerate(TRAINED):
        run = TrainingRun.from_params(params, project / "data" / "prepared" / DATASET, name)
        torch.manual_seed(i)
        steps = SCORES.get(name, (0, 0, 0, 0, 90))[4]
        host = {"host_matmul_tflops": HOST_TFLOPS[name]} if name in HOST_TFLOPS else {}
        meta = generator_meta(run, steps, BUDGET_S + 0.25 * i, run_name=run.run_name(), git_commit=TRAIN_COMMIT,
                              mlflow_run_id=f"mlflow-{name}", **host)
        save_generator(project / "models" / name / "generator.pt", build_generator(run.arch, run.generator), meta=meta)
        written[name] = {"steps": meta["steps"], "train_seconds": meta["train_seconds"], "wall_s": BUDGET_S + 20.0,
                         "num_workers": run.world_size, "global_batch": meta["global_batch"],
                         "time_budget_s": BUDGET_S, "G_total": 3.5, "D": 1.25, **host}
        write_json(project / "metrics" / f"train-{name}.json", written[name])
        write_json(project / "metrics" / "provenance" / f"train-{name}.json", {
            "name": name, "arch": run.arch, "dataset": run.dataset, "train_seed": run.train.seed,
            "stopped_by": meta["stopped_by"], "train_device": "cpu", "run_name": run.run_name(),
            "mlflow_run_id": f"mlflow-{name}", "git_commit": TRAIN_COMMIT, "generator": f"models/{name}/generator.pt"})
    return written


def confusion(seed: int) -> torch.Tensor:
    """A (13, 13) confusion matrix (rows: the test labels) whose row sums, the classes' pixel counts,
    are those of the one test set every generator is scored on; class 0 ("unused") never occurs in
    facades labels (its IoU is None)."""
    pixels = torch.arange(13) * 300                                   # ground-truth pixels per class
    wrong = torch.randint(0, 20, (13, 13), generator=torch.Generator().manual_seed(seed)).fill_diagonal_(0)
    wrong[0], wrong[:, 0] = 0, 0
    return wrong + torch.diag(pixels - wrong.sum(1))


def evaluate_generators(project: Path) -> dict[str, dict]:
    """metrics/eval-<name>.json (numbers), metrics/provenance/eval-<name>.json and
    eval_per_class-<name>.csv as pipelines/evaluate.py writes them (its merge/CSV writers and
    numbers_only, common.write_json, main()'s keys; scores from asap.metrics.segmentation on a
    confusion matrix; generator_* from the checkpoint's meta). Returns the eval files by name."""
    from asap.models.checkpoint import load_generator
    from pipelines.common import write_json
    from pipelines.evaluate import merge_per_class, numbers_only, write_per_class_csv

    names = ["unused", "background", "facade", "window", "door", "cornice", "sill", "balcony", "blind",
             "deco", "molding", "pillar", "shop"]
    written = {}
    for i, (name, (fid, kid, kid_std, runtime, _)) in enumerate(SCORES.items()):
        scores = segmentation_scores(confusion(i), names)
        real = segmentation_scores(confusion(99), names)
        per_class = merge_per_class(scores["per_class"], real["per_class"])
        generator, meta = load_generator(project / "models" / name / "generator.pt")
        result = numbers_only({
            "height": SIZE, "width": SIZE, "num_images": 3, "fid": fid,
            "kid_mean": kid, "kid_std": kid_std, "kid_subset_size": 2, "kid_subsets": 100,
            "pixel_acc": scores["pixel_acc"], "miou": scores["miou"], "segmented_pixels": scores["pixels"],
            "timing": {"generate_s": 0.01}, "generate_ms_per_image": 3.25,
            "params": sum(t.numel() for t in generator.parameters()),
            "width_mult": getattr(generator.config, "width_mult", None),
            "fid_floor": {k: FLOOR[k] for k in ("fid", "kid_mean", "kid_std", "num_images")},
            "real": {"pixel_acc": real["pixel_acc"], "miou": real["miou"]},
            "generator_steps": meta["steps"], "generator_train_seconds": meta["train_seconds"],
            "generator_time_budget_s": meta["time_budget_s"], "generator_global_batch": meta["global_batch"],
            "generator_host_matmul_tflops": meta.get("host_matmul_tflops"),
            "segmenter_steps": 10, "wall_s": 1.0, "runtime_ms": runtime, "runtime_p10_ms": runtime - 1.5,
            "runtime_p90_ms": runtime + 2.5, "runtime_threads": 2, "runtime_iters": 5,
            "runtime_host_matmul_tflops": RUNTIME_TFLOPS.get(name)})
        repeat = BASELINES.get(name, {}).get("repeat")
        write_json(project / "metrics" / "provenance" / f"eval-{name}.json", {
            "name": name, "arch": meta["arch"], "dataset": DATASET, "split": "test",
            "generator": f"models/{name}/generator.pt", "generator_stopped_by": meta["stopped_by"],
            "generator_run_name": meta["run_name"], "generator_mlflow_run_id": meta["mlflow_run_id"],
            "generator_git_commit": meta["git_commit"], "generator_train_device": None, "repeat_of": repeat,
            "train_seed": BASELINES[name]["seed"] if repeat else 0, "segmenter": f"models/segmenter-{DATASET}.pt",
            "fid_floor_reference_split": FLOOR["reference_split"], "fid_real_cache": "data/cache/x.npz",
            "fid_real_cached": True, "git_commit": EVAL_COMMIT, "runtime_device": "cpu",
            "runtime_timer": "perf_counter", "runtime_allocator": STEADY})
        write_per_class_csv(project / "metrics" / f"eval_per_class-{name}.csv", per_class)
        write_json(project / "metrics" / f"eval-{name}.json", result)
        written[name] = result
    return written


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
    train_generators(project)
    evaluate_generators(project)
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
    table = tables_after(readme, "Fig. 1:")[1]  # [0]: which machine and commit measured the file
    assert len(table) == len(bench["rows"])
    for row, cell in zip(bench["rows"], table):
        assert (cell["model"], cell["size"]) == (row["model"], row["size"])
        for key, col in (("median_ms", "median ms"), ("p10_ms", "p10 ms"), ("p90_ms", "p90 ms"),
                         ("lr_ms", "low-res ms"), ("hr_ms", "pixelwise ms")):
            assert close(cell[col], row[key], 2), (row["model"], key, cell[col], row[key])
    paper = tables_after(readme, "Fig. 1:")[2]
    assert [(r["size"], r["ms"]) for r in paper] == [("512x1024", "29.0"), ("1024x1024", "35.0")]
    assert all("2080 Ti" in r["device"] for r in paper)
    speedups = tables_after(readme, "Fig. 1:")[3]
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
        assert close(t["train host TFLOP/s"], float(r["host_matmul_tflops"]), 3)
        assert close(t["runtime host TFLOP/s"], float(r["runtime_host_matmul_tflops"]), 3)
    paper_s = {r["trial"]: r["ms"] for r in tables_after(readme, "Fig. 9: ablations")[1]}
    assert paper_s == {"larger S": "12.1", "default S": "14.2", "smaller S": "28.1"}

    per_class = {r["class"]: r for r in tables_after(readme, "Fig. 11:")[0]}
    assert len(per_class) == 13
    assert "IoU asapnet-seed1" not in next(iter(per_class.values()))  # one seed per generator in Fig. 11
    for name in (n for n in SCORES if n not in BASELINES or "repeat" not in BASELINES[n]):
        with open(project / "metrics" / f"eval_per_class-{name}.csv") as f:
            expected = list(csv.DictReader(f))
        for c in expected:
            cell = per_class[c["name"]]
            assert close(cell[f"IoU {name}"], float(c["iou"]) if c["iou"] else None, 3)
            assert close(cell["pixel share %"], 100 * float(c["pixel_share"]), 2)
            if name == "asapnet":
                assert close(cell["real-photo IoU"], float(c["real_iou"]) if c["real_iou"] else None, 3)


def evals_on_disk(project: Path) -> dict[str, dict]:
    return {p.stem.removeprefix("eval-"): json.loads(p.read_text()) for p in (project / "metrics").glob("eval-*.json")}


def provenance_on_disk(project: Path, kind: str = "eval") -> dict[str, dict]:
    return {p.stem.removeprefix(f"{kind}-"): json.loads(p.read_text())
            for p in (project / "metrics" / "provenance").glob(f"{kind}-*.json")}


def test_fig6_table_has_a_row_per_generator_with_its_budget(project, full_report):
    readme = (full_report / "README.md").read_text()
    rows = {r["generator"].split(" (")[0]: r for r in tables_after(readme, "Fig. 6:")[0]}
    assert list(rows) == ["asapnet", *BASELINES]  # train.name first, then params.yaml's baselines
    evals, provenance = evals_on_disk(project), provenance_on_disk(project)
    assert sorted(evals) == sorted(SCORES)
    for name, ev in evals.items():
        row, prov = rows[name], provenance[name]
        label = "asapnet-seed1 (seed 1 of asapnet)" if name == "asapnet-seed1" else f"{name} ({prov['arch']})"
        assert row["generator"] == label
        assert close(row["FID"], ev["fid"], 1) and close(row["floor FID"], ev["fid_floor"]["fid"], 1)
        kid, std = row["KID ± std"].split(" ± ")
        assert close(kid, ev["kid_mean"], 4) and close(std, ev["kid_std"], 4)
        floor_kid, floor_std = row["floor KID ± std"].split(" ± ")
        assert close(floor_kid, ev["fid_floor"]["kid_mean"], 4) and close(floor_std, ev["fid_floor"]["kid_std"], 4)
        assert close(row["pixel acc"], ev["pixel_acc"], 3) and close(row["mIoU"], ev["miou"], 3)
        median, spread = row["runtime ms (p10–p90)"].rstrip(")").split(" (")
        assert close(median, ev["runtime_ms"], 2)
        assert [float(v) for v in spread.split("–")] == pytest.approx([ev["runtime_p10_ms"], ev["runtime_p90_ms"]],
                                                                       abs=0.006)
        timed = ev.get("runtime_host_matmul_tflops")  # the host's rate as the runtime was timed, where recorded
        assert row["runtime on"] == (f"{prov['runtime_device']}, {ev['runtime_threads']} threads, steady allocator"
                                     + (f", matmul {timed:.3f} TFLOP/s" if timed is not None else ""))
        assert row["steps"] == str(ev["generator_steps"])
        assert close(row["train s"], ev["generator_train_seconds"], 0)
        assert row["budget"] == f"{ev['generator_time_budget_s']:g} s"
        assert row["stopped by"] == prov["generator_stopped_by"]
        where = provenance_on_disk(project, "train")[name]["train_device"]
        rate = ev.get("generator_host_matmul_tflops")  # the evaluated checkpoint's record of its host
        assert row["trained on"] == (f"{where}, matmul {rate:.3f} TFLOP/s" if rate is not None else where)
        assert close(row["params (M)"], ev["params"] / 1e6, 2)
    # trained, not evaluated: its training budget from train-pix2pixhd.json, no scores
    trained = json.loads((project / "metrics" / "train-pix2pixhd.json").read_text())
    assert rows["pix2pixhd"]["steps"] == str(trained["steps"]) and rows["pix2pixhd"]["FID"] == "n/a"
    assert "dvc repro evaluate-baseline@pix2pixhd" in rows["pix2pixhd"]["vs asapnet"]
    assert rows["pix2pixhd-slim"]["steps"] == "n/a"
    assert f"mIoU {evals['asapnet']['real']['miou']:.3f}" in readme


def test_run_to_run_noise_is_the_two_seeds_difference(project, full_report):
    """noise/seed-noise.json (the report stage's metric: numbers only) and the README's noise table
    hold |metric(seed 0) - metric(seed 1)| of the two ASAP-Net runs, computed here from their eval files."""
    evals = evals_on_disk(project)
    a, b = evals["asapnet"], evals["asapnet-seed1"]
    expected = {m: abs(a[m] - b[m]) for m in ("fid", "kid_mean", "pixel_acc", "miou")}
    assert expected["fid"] == pytest.approx(NOISE_FID)
    [noise_file] = assert_stage_metrics_are_numbers(project, "report")
    assert noise_file == project / "noise" / "seed-noise.json"
    written = json.loads(noise_file.read_text())
    assert sorted(written) == ["asapnet"]
    assert {m: written["asapnet"][m] for m in expected} == pytest.approx(expected, rel=1e-12)
    assert written["asapnet"]["seeds"] == 2
    readme = (full_report / "README.md").read_text()
    table = {r["metric"]: r for r in tables_after(readme, "Fig. 6:")[1]}
    for m, name, digits in (("fid", "FID", 2), ("kid_mean", "KID", 5), ("pixel_acc", "pixel acc", 4),
                            ("miou", "mIoU", 4)):
        assert close(table[name]["noise (max − min)"], expected[m], digits)
        assert table[name]["run 1"] == f"{a[m]:.{digits}f} (seed 0)"
        assert table[name]["run 2"] == f"{b[m]:.{digits}f} (seed 1)"
    assert "**Run-to-run noise.** asapnet trained 2 times" in readme
    # the second seed is drawn as such: its row says so, and its differences are the noise
    rows = {r["generator"].split(" (")[0]: r for r in tables_after(readme, "Fig. 6:")[0]}
    assert rows["asapnet-seed1"]["vs asapnet"].startswith("second seed of asapnet: FID +12.5, KID +0.0150")


def test_differences_within_the_noise_are_marked(project, full_report):
    """Per metric, a difference to ASAP-Net no larger than the two seeds' spread is marked "within seed
    noise" and a larger one is not; the same in the sweep table (against its reference trial), whose
    trials had another budget than the noise was measured at, as the README says."""
    readme = (full_report / "README.md").read_text()
    rows = {r["generator"].split(" (")[0]: r for r in tables_after(readme, "Fig. 6:")[0]}
    evals = evals_on_disk(project)
    ref, seed1 = evals["asapnet"], evals["asapnet-seed1"]
    names = {"fid": ("FID", 1), "kid_mean": ("KID", 4), "pixel_acc": ("pixel acc", 3), "miou": ("mIoU", 3)}
    for name in ("spade", "spade-slim"):
        verdict = rows[name]["vs asapnet"]
        for m, (label, digits) in names.items():
            d, noise = evals[name][m] - ref[m], abs(seed1[m] - ref[m])
            cell = f"{label} {d:+.{digits}f}"
            assert cell in verdict, (name, cell, verdict)
            assert (f"{cell} (within seed noise)" in verdict) == (abs(d) <= noise), (name, m, verdict)
    assert "FID +50.5," in rows["spade"]["vs asapnet"]           # 50.5 > 12.5: not marked
    assert "FID +10.2 (within seed noise)" in rows["spade-slim"]["vs asapnet"]  # 10.25 <= 12.5
    assert "KID +0.0092 (within seed noise)" in rows["spade-slim"]["vs asapnet"]
    assert "run-to-run noise not measured" not in readme

    with open(project / "metrics" / "sweep.csv") as f:
        sweep = {r["trial"]: r for r in csv.DictReader(f)}
    trials = {t["trial"]: t for t in tables_after(readme, "Fig. 9: ablations")[0]}
    assert trials["full-S4"]["vs full-S4"] == "reference"  # the full model at the default S of 64x64
    for trial, t in trials.items():
        if trial == "full-S4":
            continue
        d = float(sweep[trial]["fid"]) - float(sweep["full-S4"]["fid"])
        assert (f"FID {d:+.1f} (within seed noise)" in t["vs full-S4"]) == (abs(d) <= NOISE_FID), t
    assert "(within seed noise)" in trials["full-S2"]["vs full-S4"].split(",")[0]   # FID -10.0
    assert "(within seed noise)" not in trials["no_pe-S4"]["vs full-S4"].split(",")[0]  # FID +20.0
    fig9 = readme.split("## Fig. 9: ablations")[1].split("\n## ")[0]
    assert "The trials had another budget than the one that noise was measured at" in fig9
    assert f"{BUDGET_S} s" in fig9 and "40 s of training" in fig9


def test_without_a_repeat_the_noise_is_said_to_be_unmeasured(project, tmp_path):
    """No `repeat:` entry (and no second seed's files): every table says the noise is not measured,
    nothing is marked, and the noise metrics file is an empty mapping (still written: DVC needs it)."""
    root = tmp_path / "proj"
    shutil.copytree(project, root, symlinks=True, ignore=shutil.ignore_patterns("*seed1*", "reports", "noise"))
    # configured, not run yet: the README names the stage that would measure it
    report.main(["--root", str(root)])
    readme = (root / "reports" / "README.md").read_text()
    assert "within seed noise" not in readme and json.loads((root / "noise" / "seed-noise.json").read_text()) == {}
    assert "run-to-run noise not measured yet (the `repeat:` entry asapnet-seed1 needs its eval files: `dvc repro " \
           "evaluate-baseline@asapnet-seed1`)" in readme
    # not configured at all
    params = yaml.safe_load((root / "params.yaml").read_text())
    del params["baselines"]["asapnet-seed1"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    report.main(["--root", str(root)])
    readme = (root / "reports" / "README.md").read_text()
    rows = {r["generator"].split(" (")[0]: r for r in tables_after(readme, "Fig. 6:")[0]}
    assert "asapnet-seed1" not in rows
    for name in ("spade", "spade-slim"):
        assert "; run-to-run noise not measured (add a `repeat:` entry to baselines)" in rows[name]["vs asapnet"]
    assert "within seed noise" not in readme
    assert "Run-to-run noise not measured (add a `repeat:` entry to baselines)" in readme
    assert json.loads((root / "noise" / "seed-noise.json").read_text()) == {}


def test_budget_is_stated_plainly(project, full_report):
    readme = (full_report / "README.md").read_text()
    profile = yaml.safe_load((REPO / "profiles" / "paper-gpu.yaml").read_text())
    steps = max(ev["generator_steps"] for ev in evals_on_disk(project).values())
    intro = readme.split("\n## ")[0]  # the README's head, before the first figure
    assert "rest on a quick CPU budget" in intro
    assert f"at most {steps} steps, {steps / profile['train']['steps']:.1%} of the {profile['train']['steps']} steps" \
        in intro
    assert "python -m pipelines.profile profiles/paper-gpu.yaml --run" in intro
    fig6 = readme.split("## Fig. 6:")[1].split("\n## ")[0]
    trained = {name: json.loads((project / "metrics" / f"train-{name}.json").read_text()) for name in SCORES}
    assert f"Training budget per generator: {BUDGET_S} s (global batch {trained['asapnet']['global_batch']})" in fig6
    assert "steps reached: " + ", ".join(f"{n} {t['steps']}" for n, t in trained.items()) in fig6
    assert "Runtime: batch 1 on cpu, 2 threads, steady allocator;" in fig6
    # the hosts' speeds: spade's ran at half asapnet's (a time budget's steps follow it); spade-slim's not recorded
    evals = evals_on_disk(project)

    def rates_of(key):  # each evaluated generator's rate from its eval file, as listed, and max / min
        rates = {n: evals[n].get(key) for n in ["asapnet", *BASELINES] if n in evals}
        recorded = [r for r in rates.values() if r]
        shown = ", ".join(f"{n} {r:.3f}" for n, r in rates.items() if r is not None)
        return rates, shown, max(recorded) / min(recorded)

    rates, shown, spread = rates_of("generator_host_matmul_tflops")
    assert rates["spade-slim"] is None and rates["spade"] == HOST_TFLOPS["spade"]
    assert f"each in the run's host_history): {shown}." in fig6
    assert "Not recorded for spade-slim (trained before runs recorded it)." in fig6
    assert f"**The hosts ran at different speeds ({spread:.2f}x apart)**" in fig6 and f"{spread:.2f}" == "2.00"
    # and as the runtimes were timed: asapnet-seed1's host 1.5x asapnet's; spade-slim's not recorded
    timed, shown, spread = rates_of("runtime_host_matmul_tflops")
    assert timed["spade-slim"] is None and timed["asapnet-seed1"] == RUNTIME_TFLOPS["asapnet-seed1"]
    assert f"one just after): {shown}." in fig6
    assert "Not recorded for spade-slim (timed before runtimes recorded it)." in fig6
    assert (f"**The host ran at different speeds as the runtimes were timed ({spread:.2f}x apart)**" in fig6
            and f"{spread:.2f}" == "1.80")
    sweep = json.loads((project / "metrics" / "sweep.json").read_text())
    fig9 = readme.split("## Fig. 9: ablations")[1]
    assert f"{sweep['time_budget_s']} s of training per trial on cpu" in fig9  # the trials' checkpoints: cpu
    assert "runtime on cpu, 1 thread, steady allocator" in fig9  # where and how the trials were timed
    fig9 = fig9.split("\n## ")[0]
    # the table's column shows each trial's rate (test_readme_tables_hold_the_input_numbers); the note says what it is
    assert "*train host TFLOP/s*: the host's matmul rate each run trained at (TFLOP/s in the step's precision;" \
        in fig9
    assert "*runtime host TFLOP/s*: the host's matmul rate as each runtime was timed (fp32 TFLOP/s" in fig9
    assert "different speeds" not in fig9  # 1.1x apart: within HOST_SPREAD


def test_provenance_names_runs_commits_and_machines(project, full_report):
    readme = (full_report / "README.md").read_text()
    rows = {r["generator"]: r for r in tables_after(readme, "Where each generator")[0]}
    for name in TRAINED:
        train = json.loads((project / "metrics" / "provenance" / f"train-{name}.json").read_text())
        assert rows[name]["MLflow run"] == train["mlflow_run_id"]
        assert rows[name]["training run"] == train["run_name"]
        assert rows[name]["training commit"] == TRAIN_COMMIT[:10]  # from the provenance sidecar
        assert rows[name]["train seed"] == ("1" if name == "asapnet-seed1" else "0")
        if name in SCORES:
            assert rows[name]["eval commit"] == EVAL_COMMIT[:10]
    for name, train in provenance_on_disk(project, "train").items():  # the sidecars, not the metrics files
        assert rows[name]["MLflow run"] == train["mlflow_run_id"] and rows[name]["trained on"] == train["train_device"]
    assert rows["pix2pixhd-slim"]["MLflow run"] == "not recorded"
    bench = json.loads((project / "metrics" / "benchmark-cpu.json").read_text())
    measured = tables_after(readme, "Fig. 1:")[0]
    assert measured == [{"file": "`metrics/benchmark-cpu.json`", "measured on": measured[0]["measured on"],
                         "commit": bench["git_commit"][:10] if bench["git_commit"] != "unknown" else "not recorded",
                         "timed iterations (warm-up)": f"{bench['iters']} ({bench['warmup']})",
                         "host matmul TFLOP/s before / after":
                             f"{bench['host_matmul_tflops']['start']:.3f} / {bench['host_matmul_tflops']['end']:.3f}"}]
    assert bench["device"]["cpu_model"] in measured[0]["measured on"]


def test_fig6_draws_a_point_per_generator_and_the_floor(project, tmp_path, monkeypatch):
    """The Fig. 6 the report saves: FID at each generator's (runtime, FID), the floor as a line at
    fid_floor.fid, KID with its std as error bars; and the dvc plots series has the same points."""
    drawn = {}
    monkeypatch.setattr(report.Report, "save", lambda self, key, fig: drawn.setdefault(key, fig))
    params = yaml.safe_load((project / "params.yaml").read_text())
    report.make_report(project, out=tmp_path, params=params)
    evals = evals_on_disk(project)
    fid_ax, kid_ax = drawn["fig6"].axes[:2]
    points = {tuple(np.round(xy, 6)) for c in fid_ax.collections for xy in c.get_offsets()}
    assert points == {(round(ev["runtime_ms"], 6), round(ev["fid"], 6)) for ev in evals.values()}
    flat = [line.get_ydata()[0] for line in fid_ax.get_lines() if len(set(line.get_ydata())) == 1]
    assert flat == pytest.approx([FLOOR["fid"]])
    bars = {}
    for container in kid_ax.containers:
        (x, y), = container.lines[0].get_xydata()
        (low, high), = [seg[:, 1] for seg in container.lines[2][0].get_segments()]
        bars[round(x, 6)] = (y, (high - low) / 2)
    assert bars == {round(ev["runtime_ms"], 6): pytest.approx((ev["kid_mean"], ev["kid_std"])) for ev in evals.values()}
    with open(tmp_path / "plots" / "quality_vs_runtime.csv") as f:
        series = {r["name"]: r for r in csv.DictReader(f)}
    assert sorted(series) == sorted(evals)
    for name, ev in evals.items():
        r = series[name]
        assert float(r["fid"]) == pytest.approx(ev["fid"]) and float(r["fid_floor"]) == pytest.approx(FLOOR["fid"])
        assert float(r["runtime_ms"]) == pytest.approx(ev["runtime_ms"])
        assert float(r["kid_std"]) == pytest.approx(ev["kid_std"])
        assert float(r["steps"]) == ev["generator_steps"]
        assert float(r["train_seconds"]) == pytest.approx(ev["generator_train_seconds"])
    # the second seed: an open marker joined to ASAP-Net's point by a line (not a generator of its own)
    seed0, seed1 = evals["asapnet"], evals["asapnet-seed1"]
    link = [line.get_xydata().tolist() for line in fid_ax.get_lines() if len(set(line.get_ydata())) == 2]
    assert link == [[[seed0["runtime_ms"], seed0["fid"]], [seed1["runtime_ms"], seed1["fid"]]]]
    hollow = [c for c in fid_ax.collections if (c.get_facecolors()[:, :3] == 1).all()]
    assert [tuple(c.get_offsets()[0]) for c in hollow] == [(seed1["runtime_ms"], seed1["fid"])]
    # the qualitative grid: label map + a column per trained or expected generator + the real photo
    assert len(drawn["qualitative"].axes) == 2 * (1 + len(["asapnet", *BASELINES]) + 1)
    # every figure of trained generators says the budget it was made with (steps reached, seconds,
    # device) in its title; the runtime figures say their weights are random and name the device
    steps = {ev["generator_steps"] for ev in evals.values()}
    for key in ("fig6", "fig8", "fig11", "qualitative"):
        title = drawn[key].get_suptitle().replace("\n", " ")
        assert f"training budget {BUDGET_S} s each on cpu" in title, (key, title)
        assert all(f" {n}" in title for n in steps) and "runtime batch 1 on cpu, 2 threads" in title, (key, title)
    for key in ("fig9", "fig9b"):
        title = drawn[key].get_suptitle().replace("\n", " ")
        assert "40 s of training per trial on cpu, steps reached 2 in 1 s" in title, (key, title)
    for key in ("fig1", "fig1b", "fig4", "fig8"):
        texts = " ".join([drawn[key].get_suptitle(), *(ax.get_title() for ax in drawn[key].axes)])
        assert "random weights" in texts and "CPU" in texts, (key, texts)


def test_readme_says_what_is_missing(full_report):
    readme = (full_report / "README.md").read_text()
    missing = readme.split("## Not drawn")[1]
    # a baseline trained but not evaluated, one in params.yaml with nothing run: each with its stage
    assert "metrics/eval-pix2pixhd.json; run `dvc repro evaluate-baseline@pix2pixhd`" in missing
    assert "run `dvc repro train-baseline@pix2pixhd-slim`" in missing
    assert "run `dvc repro evaluate-baseline@pix2pixhd-slim`" in missing
    for name in SCORES:  # evaluated: nothing missing
        assert f"eval-{name}.json" not in missing
    for kind in ("benchmark results", "sweep results", "eval results", "inference results", "Fig. 8 (b)"):
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
        run_stage(lambda: report.main(["--root", str(tmp_path)]))
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
        run_stage(lambda: report.main(["--root", str(tmp_path), "--require", "eval"]))
    assert "metrics/eval-<name>.json" in (err := capsys.readouterr().err) and "dvc repro evaluate" in err
    with pytest.raises(SystemExit):
        run_stage(lambda: report.main(["--root", str(tmp_path), "--benchmark", "metrics/benchmark-nvidia-h100.json"]))
    assert "benchmark-nvidia-h100.json" in (err := capsys.readouterr().err) and "dvc repro benchmark" in err
    write_params(tmp_path, require=["sweep"])
    with pytest.raises(SystemExit):
        run_stage(lambda: report.main(["--root", str(tmp_path)]))
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
    table = tables_after(readme, "Fig. 1:")[1]
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
