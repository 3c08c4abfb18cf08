"""The report draws the GPU campaign's results (issue 13) from real files: the campaign's smoke mode
(every phase on this CPU, the Triton kernels in the interpreter; the session fixture in tests/conftest.py)
scored by `python -m benchmarks.gpu_campaign score` into the metrics/ of the report tests' project
(tests/test_report.py). The README's GPU rows, targets and Fig. 6/1b points are checked against the
JSON files read here; without campaign files the README says so in one line pointing to docs/gpu.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_report import close, project, tables_after  # noqa: F401  (the report tests' project, module scope)

from pipelines import report

SCORED_IMAGES = 3  # test images scored per generator: enough for FID/KID, a few seconds of Inception each


@pytest.fixture(scope="module")
def gpu_project(project, smoke, facades64, tmp_path_factory) -> Path:  # noqa: F811
    """The report tests' project plus metrics/gpu-cpu-{quality,correctness,inference,training}.json
    written by the campaign's own `score` from the smoke run's files."""
    from asap.models.segmenter import Segmenter, SegmenterConfig, save_segmenter
    from benchmarks.campaign.score import score

    root = tmp_path_factory.mktemp("gpu_report") / "proj"
    shutil.copytree(project, root, symlinks=True, ignore=shutil.ignore_patterns("reports", "noise"))
    torch.manual_seed(0)  # an untrained segmenter: pixel accuracy and mIoU are numbers, not good ones
    seg = save_segmenter(root / "seg.pt", Segmenter(SegmenterConfig(num_classes=13, width_mult=0.125)),
                         meta={"dataset": "facades-64x64", "steps": 0})
    score(smoke["out"], data_root=facades64, segmenter=seg, metrics_dir=root / "metrics",
          fid_cache=root / "fid-cache", device="cpu", max_images=SCORED_IMAGES, kid_subsets=2,
          kid_subset_size=SCORED_IMAGES)
    return root


@pytest.fixture(scope="module")
def drawn(gpu_project) -> dict:
    """The report on that project, its figures kept in memory as well as saved."""
    figures = {}
    save = report.Report.save

    def keep(self, key, fig):
        figures[key] = fig
        save(self, key, fig)

    report.Report.save = keep
    try:
        report.make_report(gpu_project, params=yaml.safe_load((gpu_project / "params.yaml").read_text()))
    finally:
        report.Report.save = save
    return figures


def gpu_file(root: Path, kind: str) -> dict:
    return json.loads((root / "metrics" / f"gpu-cpu-{kind}.json").read_text())


def test_the_campaign_targets_are_tabled_met_missed_or_not_measured(gpu_project, drawn):
    readme = (gpu_project / "reports" / "README.md").read_text()
    section = readme.split("## GPU campaign")[1].split("\n## ")[0]
    assert "Smoke-mode files" in section
    rows = {r["target"]: r for r in tables_after(readme, "GPU campaign")[0]}
    expected = {}
    for kind in ("inference", "training"):
        expected |= gpu_file(gpu_project, kind)["result"]["targets"]
    expected |= gpu_file(gpu_project, "quality")["targets"]
    assert set(expected) <= set(rows)
    for name, t in expected.items():
        row = rows[name]
        if t["measured"] is None:
            assert row["measured"] == "not measured" and row["verdict"] == "not measured"
        else:
            assert float(row["measured"]) == pytest.approx(t["measured"], rel=5e-3)
            assert row["verdict"].startswith("**met**" if t["met"] else "**missed**"), (name, row)
        if t.get("bound") is None:
            assert row["bound on this device"] == "n/a"
        else:  # e.g. "1.07 x at an equal FLOP rate": the file's bound and what kind of bound it is
            value, kind = row["bound on this device"].split(" ", 1)
            assert float(value) == pytest.approx(t["bound"], rel=5e-3) and t["bound_is"].startswith(kind + ":")
    step = expected["ours >= 2x the authors' way at equal batch, size and precision (worst row)"]
    assert step["bound_is"].startswith("x at an equal FLOP rate:") and step["bound"] > 1  # counted in the smoke too
    # the targets are all there: the smoke sizes measure none of the 1024x1024 / 512x1024 ones
    for start in ("1024x1024 fast bf16 batch-1 ms <= 1.0", "1024x1024 fast bf16 >= 8x", "512x1024 fast bf16 batch-1 ms "
                  "<= 0.8", "pixelwise kernel time / memory-traffic bound", "ours >= 2x the authors' way",
                  "ASAP-Net FID <= pix2pixHD", "ASAP-Net FID within 10% of SPADE",
                  "ASAP-Net inference >= 5x faster than SPADE"):
        assert [n for n in rows if n.startswith(start)], start
    assert rows["1024x1024 fast bf16 batch-1 ms <= 1.0"]["verdict"] == "not measured"


def test_equal_time_quality_rows_hold_the_scored_numbers(gpu_project, drawn):
    readme = (gpu_project / "reports" / "README.md").read_text()
    quality = gpu_file(gpu_project, "quality")
    tables = tables_after(readme, "GPU campaign")
    rows = {r["generator"]: r for r in tables[4]}  # [0] targets, [1] pixelwise, [2] training step, [3] kernels,
    #                                                 [4] quality
    assert sorted(rows) == sorted(quality["generators"])
    for name, g in quality["generators"].items():
        row = rows[name]
        assert close(row["FID"], g["fid"], 1) and close(row["floor FID"], quality["real_vs_real_floor"]["fid"], 1)
        assert close(row["pixel acc"], g["pixel_acc"], 3) and close(row["mIoU"], g["miou"], 3)
        assert close(row["runtime ms (best path, training size)"], g["latency_train_size"]["best_ms"], 3)
        assert row["steps"] == str(g["steps"]) and row["budget"] == f"{quality['budget_s']:g} s"
        assert row["test images"] == str(SCORED_IMAGES) and "[GPU campaign, smoke]" in row["device"]
    phase3 = gpu_file(gpu_project, "training")["result"]
    training = phase3["rows"]
    assert [float(r["speed-up"]) for r in tables[2]] == pytest.approx([t["speedup"] for t in training], abs=0.006)
    assert [float(r["generator fwd+bwd speed-up"]) for r in tables[2]] == pytest.approx(
        [t["generator_speedup"] for t in training], abs=0.006)
    # the bound 1 / (1 - share) exists only while the generator is less than the whole step; on the
    # smoke's tiny CPU steps its separately timed share can reach 1, and the table says n/a
    for r, t in zip(tables[2], training, strict=True):
        share = t["authors_generator_share"]
        if share < 1:
            assert float(r["generator-alone bound"]) == pytest.approx(1 / (1 - share), abs=0.006)
        else:
            assert r["generator-alone bound"] == "n/a"
        assert r["authors' way"] == t["authors_way_runs"]
        # the arithmetic ceiling and how near each step ran to the matmul rate (no graph on the CPU)
        assert close(r["FLOP ratio (authors' / ours)"], t["flop_ratio"], 2)
        ours, graphed, authors = r["% of matmul peak: ours / graphed / authors'"].split(" / ")
        assert close(ours, 100 * t["ours"]["fraction_of_matmul_peak"], 1) and graphed == "n/a"
        assert close(authors, 100 * t["authors_way"]["fraction_of_matmul_peak"], 1)
        # ours with a channels-last VGG: timed in the bf16 rows only (settings.channels_last)
        if t["precision"] == "bf16":
            assert close(r["VGG channels-last speed-up"], t["speedup_channels_last"], 2)
            assert t["speedup_channels_last"] == pytest.approx(
                t["ours_channels_last"]["images_per_s"] / t["authors_way"]["images_per_s"])
        else:
            assert r["VGG channels-last speed-up"] == "n/a" and "ours_channels_last" not in t
    # the pixelwise MLP alone: the milliseconds of each way; no fused column on the CPU
    pixelwise = phase3["pixelwise"]
    assert len(tables[1]) == len(pixelwise) > 0
    for row, p in zip(tables[1], pixelwise):
        assert (row["size"], row["precision"]) == (p["size"], p["precision"])
        assert close(row["reference ms"], p["ms"]["reference"], 3) and close(row["authors' way ms"], p["ms"]["authors_way"], 3)
        assert row["fused ms (recompute / stash)"] == "n/a / n/a" and "fused" not in p["ms"]
    # the budget the squares of Fig. 6 were made with, in its title
    title = drawn["fig6"].get_suptitle().replace("\n", " ")
    assert f"{quality['budget_s']:g} s of training per generator" in title and "[GPU campaign, smoke]" in title
    fid_ax = drawn["fig6"].axes[0]
    squares = {tuple(np.round(o, 6)) for c in fid_ax.collections if c.get_paths() and
               len(c.get_paths()[0].vertices) == 5 for o in c.get_offsets()}  # marker "s": a closed square path
    assert squares == {(round(g["latency_train_size"]["best_ms"], 6), round(g["fid"], 6))
                       for g in quality["generators"].values()}


def test_where_the_time_goes_is_tabled_from_the_profiles(gpu_project, drawn):
    """Each profile of phases 2 and 3 is a row: its total and its kinds as the file holds them, beside
    the time its phase measured for the same work."""
    readme = (gpu_project / "reports" / "README.md").read_text()
    rows = tables_after(readme, "GPU campaign")[3]
    expected = []
    for r in gpu_file(gpu_project, "inference")["result"]["rows"]:
        if r.get("kernels"):
            expected += [(f"fast path {r['size']}, whole forward", r["kernels"]["forward"], r["batch1_ms"]["median_ms"]),
                         (f"fast path {r['size']}, low-res stream", r["kernels"]["lowres"], r["lr_ms"])]
    for r in gpu_file(gpu_project, "training")["result"]["rows"]:
        if r["ours"].get("kernels"):
            expected.append((f"our step {r['size']} batch {r['batch']}", r["ours"]["kernels"],
                             r["ours"]["step_s_median"] * 1e3))
    assert len(expected) >= 3 and [r["what"] for r in rows] == [e[0] for e in expected]
    for row, (_, k, timed) in zip(rows, expected):
        assert close(row["kernel time ms"], k["total_ms"], 3)
        assert close(row["timed ms (how)"].split(" (")[0], timed, 3)
        assert row["kernels"] == f"{k['calls_per_forward']:.0f} aten ops"  # a CPU's profile counts aten ops
        for kind, ms in k["by_kind_ms"].items():
            assert f"{kind} {ms:.3f} ms ({k['calls_by_kind'][kind]:.0f})" in row["by kind: ms (kernels)"]


def test_phase2_runtimes_join_fig1_and_the_fast_path_speedups(gpu_project, drawn):
    readme = (gpu_project / "reports" / "README.md").read_text()
    phase2 = gpu_file(gpu_project, "inference")
    rows = [r for r in phase2["result"]["rows"] if "error" not in r]
    fig1 = [r for r in tables_after(readme, "Fig. 1:")[1] if "[GPU campaign, smoke]" in r["device"]]
    assert len(fig1) == len(rows)
    for cell, row in zip(fig1, rows):
        assert cell["model"] == row["model"] + ("" if row["path"] == "reference" else f"-{row['path']}")
        assert cell["device"].endswith(f", {row['precision']}") and cell["size"] == row["size"]
        assert close(cell["median ms"], row["batch1_ms"]["median_ms"], 2)
    # the fast path against the fp32 reference timed in the same run: the table and the figure's labels
    speedups = [r for r in tables_after(readme, "ASAP-Net reference generator vs the fast path")[1]
                if "gpu-cpu-inference.json" in r["file"]]
    reference = next(r for r in rows if r["model"] == "asapnet" and r["path"] == "reference"
                     and r["precision"] == "fp32")["batch1_ms"]["median_ms"]
    fast = [r for r in rows if r["model"] == "asapnet" and r["path"] != "reference"]
    assert len(speedups) == len(fast)
    for cell, row in zip(speedups, fast):
        assert close(cell["speed-up vs fp32"], reference / row["batch1_ms"]["median_ms"], 2)
    # ASAP-Net's rows with their low-res stream timed apart, and (fast path, here in the interpreter as
    # the smoke run's TRITON_INTERPRET=1 makes it) also with PyTorch's norms instead of the norm kernels
    timed = [r for r in tables_after(readme, "ASAP-Net reference generator vs the fast path")[0]
             if "[GPU campaign, smoke]" in r["device"]]
    ours = [r for r in rows if r["model"] == "asapnet"]
    assert len(timed) == len(ours) and all(r.get("lr_ms") for r in ours)
    for cell, row in zip(timed, ours):
        assert (cell["path"], cell["size"]) == (row["path"], row["size"])
        assert close(cell["low-res ms"], row["lr_ms"], 2) and close(cell["MLP ms"], row["hr_ms"], 2)
        assert cell["wide convs"] == "n/a"  # on a CPU the fast path keeps the convolutions without timing
        # which kernels a fast row ran, from the row's own record (phase 1 may have turned them off)
        ran = [name for name, on in (("fused Triton MLP", row.get("fused_kernel")),
                                     ("norm kernels", row.get("fused_norm"))) if on]
        assert cell["kernels"] == ("n/a" if row["path"] == "reference" else ", ".join(ran) or "none")
        if row["path"] == "reference":
            assert cell["low-res ms, PyTorch norms"] == "n/a"
        else:
            assert row["fused_norm"] and close(cell["low-res ms, PyTorch norms"], row["lr_torch_norm_ms"], 2)
    panel = next(ax for ax in drawn["fig1b"].axes if "gpu-cpu-inference.json" in ax.get_title().replace("\n", ""))
    labels = sorted(t.get_text() for t in panel.texts)
    assert labels == sorted(f"x{reference / r['batch1_ms']['median_ms']:.1f}" for r in fast)
    # Fig. 1 gets a panel per campaign precision beside the CPU benchmark's
    titles = [ax.get_title().replace("\n", " ") for ax in drawn["fig1"].axes]
    assert sum("[GPU campaign, smoke], fp32" in t for t in titles) == 1
    assert sum("[GPU campaign, smoke], bf16" in t for t in titles) == 1


def test_no_campaign_files_is_one_line_pointing_to_the_docs(project):  # noqa: F811
    readme = (project / "reports" / "README.md")
    if not readme.is_file():
        report.main(["--root", str(project)])
    section = readme.read_text().split("## GPU campaign")[1].split("\n## ")[0].strip().splitlines()
    body = [line for line in section[1:] if line]
    assert len(body) == 1 and "No GPU campaign results in metrics/" in body[0] and "docs/gpu.md" in body[0]


def test_the_wide_conv_choice_is_shown_with_both_times():
    from asap.report.campaign import _wide_convs

    assert _wide_convs({"use": "gemm", "ms": {"cudnn": 0.52, "gemm": 0.41}, "timed": "cuda graph replays"}) \
        == "cuBLAS GEMM (0.41 vs cuDNN 0.52 ms, graph)"
    # a record without "timed" was timed eagerly (before the choice moved into graphs)
    assert _wide_convs({"use": "cudnn", "ms": {"gemm": 0.7, "cudnn": 0.5}}) == "cuDNN (0.50 vs cuBLAS GEMM 0.70 ms, eager)"
    assert _wide_convs({"use": "cudnn", "ms": {}, "error": "RuntimeError: ..."}) == "cuDNN (timing failed)"
    assert _wide_convs(None) == "" and _wide_convs({"use": "other"}) == ""
    # three forms, the split-by-tap one chosen; a form that could not run is named
    assert _wide_convs({"use": "split-k", "ms": {"cudnn": 0.9, "gemm": 0.6, "split-k": 0.3},
                        "timed": "cuda graph replays"}) == "cuBLAS split-K (0.30 vs cuDNN 0.90, cuBLAS GEMM 0.60 ms, graph)"
    assert _wide_convs({"use": "gemm", "ms": {"cudnn": 0.9, "gemm": 0.6}, "timed": "cuda graph replays",
                        "failed": {"split-k": "NotImplementedError: ..."}}) \
        == "cuBLAS GEMM (0.60 vs cuDNN 0.90 ms, graph, cuBLAS split-K failed)"
