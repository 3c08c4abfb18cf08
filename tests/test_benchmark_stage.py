"""The benchmark stage at tiny sizes on the CPU: it runs and writes the documented schema."""

import json

import pytest
import yaml

from asap.config import ConfigError
from pipelines import benchmark

TINY = {
    "device": "cpu",
    "precision": "fp32",
    "num_classes": {"32x64": 5, "64x64": 3},
    "models": {
        "asapnet": {"arch": "asapnet", "lr_width": 8, "lr_max_width": 16, "lr_depth": 1},
        "pix2pixhd": {"arch": "pix2pixhd", "ngf": 4, "n_blocks": 1},
        "spade-slim": {"arch": "spade", "nf": 2, "spade_hidden": 8, "width_mult": 0.5},
    },
    "cpu": {"models": ["asapnet", "pix2pixhd", "spade-slim"], "sizes": ["32x64", "64x64"],
            "warmup": 1, "iters": 2},
    "cuda": {"models": ["asapnet"], "sizes": ["64x64"], "warmup": 1, "iters": 2},
}
ROW_KEYS = {"model", "arch", "fast", "width_mult", "size", "height", "width", "num_classes", "batch", "params",
            "median_ms", "p10_ms", "p90_ms", "mean_ms", "n", "timer", "threads", "allocator", "lr_ms", "hr_ms"}


def test_stage_writes_the_documented_schema(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"benchmark": TINY}))
    out = tmp_path / "metrics" / "benchmark-cpu.json"
    benchmark.main(["--params", str(params), "--out", str(out), "--no-mlflow"])
    result = json.loads(out.read_text())
    assert result["schema"] == "asap-benchmark/1" and result["precision"] == "fp32"
    assert result["device"]["device"] == "cpu" and result["device"]["torch"]
    assert (result["warmup"], result["iters"]) == (1, 2)
    host = result["host_matmul_tflops"]  # the host's speed around the rows, at the threads they were timed with
    assert host["start"] > 0 and host["end"] > 0 and host["precision"] == "fp32"
    assert host["threads"] == result["rows"][0]["threads"]
    rows = result["rows"]
    assert [(r["model"], r["size"]) for r in rows] == [
        (m, s) for s in ("32x64", "64x64") for m in ("asapnet", "pix2pixhd", "spade-slim")]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["n"] == 2 and r["batch"] == 1 and r["timer"] == "perf_counter" and r["params"] > 0
        assert r["threads"] >= 1  # the CPU threads the time was measured with
        assert r["allocator"] == "glibc steady (mmap threshold 32 MiB, trim threshold 1024 MiB)"  # (Linux, glibc)
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert (r["height"], r["width"]) == tuple(int(v) for v in r["size"].split("x"))
        assert r["num_classes"] == TINY["num_classes"][r["size"]]
        assert result["median_ms"][r["model"]][r["size"]] == r["median_ms"]
        if r["arch"] == "asapnet":  # Fig. 4 split, both parts timed
            assert r["lr_ms"] > 0 and r["hr_ms"] > 0
        else:
            assert r["lr_ms"] is None and r["hr_ms"] is None
    assert [r["width_mult"] for r in rows[:3]] == [1.0, 1.0, 0.5]
    # the DVC metric beside it: the medians only, every leaf a number
    runtime = json.loads((out.parent / "runtime-cpu.json").read_text())
    assert runtime == {"median_ms": {r["model"]: {s["size"]: s["median_ms"] for s in rows if s["model"] == r["model"]}
                                     for r in rows}}


def test_bad_sections_name_the_key():
    with pytest.raises(ConfigError, match="not defined in params.yaml benchmark.models"):
        benchmark.load_config({**TINY, "cpu": {**TINY["cpu"], "models": ["nope"]}})
    with pytest.raises(ConfigError, match="no positive class count for size 128x128"):
        benchmark.load_config({**TINY, "cpu": {**TINY["cpu"], "sizes": ["128x128"]}})
    with pytest.raises(ConfigError, match="precision"):
        benchmark.load_config({**TINY, "precision": "fp8"})
    cfg = benchmark.load_config(TINY, device="cuda")
    assert cfg.sizes == ("64x64",) and list(cfg.models) == ["asapnet"]


@pytest.mark.slow
def test_stage_logs_every_median_to_mlflow(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the store's artifacts go beside the project root: here, tmp_path
    small = {**TINY, "cpu": {**TINY["cpu"], "sizes": ["32x64"]}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"benchmark": small}))
    out = tmp_path / "benchmark-cpu.json"
    benchmark.main(["--params", str(params), "--out", str(out)])
    result = json.loads(out.read_text())
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("benchmark").experiment_id])
    assert [r.info.run_name for r in runs] == ["benchmark-cpu"] and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    for r in result["rows"]:
        assert metrics[f"{r['model']}/{r['size']}/median_ms"] == pytest.approx(r["median_ms"])
    assert metrics["asapnet/32x64/lr_ms"] == pytest.approx(result["rows"][0]["lr_ms"])
    assert metrics["host_matmul_tflops_end"] == pytest.approx(result["host_matmul_tflops"]["end"])
    assert runs[0].data.params["device.precision"] == "fp32"
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id)]
    assert artifacts == ["benchmark-cpu.json"]
    assert not (tmp_path / "mlruns").exists()  # nothing in the file store's default place
