"""The `evaluate` stage for real on facades at 64x64: a tiny generator checkpoint linked to an MLflow run
made here, a tiny segmenter; eval-<name>.json, the per-class CSV, the samples, the FID cache and the
real-versus-real floor, the eval_* metrics in that run; a baseline's own eval file; and the clear
errors when an input is missing."""

import csv
import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from scipy import linalg

from asap.data.prepared import PreparedDataset
from asap.models.asapnet import asapnet
from asap.models.baselines import SPADEConfig, SPADEGenerator
from asap.models.checkpoint import save_generator
from asap.models.segmenter import Segmenter, SegmenterConfig, save_segmenter
from metrics_helpers import assert_stage_metrics_are_numbers, matmul_tflops_here
from project_helpers import make_project, run_stage

DATASET = "facades-64x64"
EVAL = {"max_images": 6, "num_samples": 2, "batch_size": 4, "kid_subsets": 10}


def tiny_generator():
    torch.manual_seed(0)
    return asapnet(13, 64, 64, lr_width=8, lr_max_width=16, lr_depth=1, mlp_width=16).eval()


def tiny_segmenter():
    torch.manual_seed(1)
    return Segmenter(SegmenterConfig(num_classes=13, width_mult=0.1)).eval()


def training_run(project) -> str:
    """An MLflow run standing for the train stage's run (what generator meta 'mlflow_run_id' names)."""
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment_id = client.create_experiment(f"asapnet-{DATASET}")
    run = client.create_run(experiment_id, run_name="train-asapnet-test")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.mark.slow
def test_evaluate_stage_scores_the_generator_and_logs_into_its_training_run(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64, {"evaluate": EVAL})
    run_id = training_run(project)
    ended_at = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(run_id).info.end_time
    generator, segmenter = tiny_generator(), tiny_segmenter()
    save_generator(project / "models" / "asapnet" / "generator.pt", generator,
                   meta={"dataset": DATASET, "steps": 7, "mlflow_run_id": run_id, "run_name": "train-asapnet-test"})
    save_segmenter(project / "models" / f"segmenter-{DATASET}.pt", segmenter, meta={"dataset": DATASET, "steps": 5})

    proc = run_stage(project, "pipelines.evaluate", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scored 6/6 images" in proc.stdout

    metrics = json.loads((project / "metrics" / "eval-asapnet.json").read_text())
    assert metrics["num_images"] == 6 and metrics["generator_steps"] == 7 and metrics["segmenter_steps"] == 5
    assert metrics["fid"] > 0 and metrics["kid_subset_size"] == 6 and set(metrics["real"]) == {"pixel_acc", "miou"}
    assert_stage_metrics_are_numbers(project, "evaluate")  # the DVC metric: numbers only
    provenance = json.loads((project / "metrics" / "provenance" / "eval-asapnet.json").read_text())
    assert provenance["dataset"] == DATASET and provenance["generator_mlflow_run_id"] == run_id
    assert provenance["name"] == "asapnet" and provenance["arch"] == "asapnet" and provenance["repeat_of"] is None
    assert provenance["generator"] == "models/asapnet/generator.pt" and provenance["runtime_device"] == "cpu"
    assert provenance["segmenter"] == f"models/segmenter-{DATASET}.pt" and provenance["train_seed"] == 0
    # the runtime sits between two samples of the host's matmul rate at its threads, and records their mean
    start, end = provenance["runtime_host_matmul_tflops_start"], provenance["runtime_host_matmul_tflops_end"]
    assert metrics["runtime_host_matmul_tflops"] == pytest.approx((start + end) / 2, abs=1e-4)
    threads = metrics["runtime_threads"]
    assert provenance["runtime_allocator"] == "glibc steady (mmap threshold 32 MiB, trim threshold 1024 MiB)"
    assert (f"[evaluate] asapnet: batch-1 runtime {metrics['runtime_ms']:.1f} ms on cpu, {threads} threads; host fp32 "
            f"matmul at {start:.4f} TFLOP/s before, {end:.4f} after") in proc.stdout
    here = matmul_tflops_here(threads)  # a 1024^3 matmul timed here at the runtime's threads
    assert here / 2.5 < metrics["runtime_host_matmul_tflops"] < here * 2.5, (metrics, here)

    # Pixel accuracy of the segmenter on the generated images, counted here pixel by pixel.
    test = PreparedDataset(facades64, "test")
    labels = torch.stack([test[i]["label"] for i in range(6)])
    with torch.no_grad():
        predicted = segmenter(generator(labels)).argmax(1)
    assert metrics["pixel_acc"] == pytest.approx((predicted == labels).double().mean().item(), abs=1e-4)

    with open(project / "metrics" / "eval_per_class-asapnet.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows][:3] == ["unused", "background", "facade"] and len(rows) == 13
    for c, row in enumerate(rows):  # each class's share of the 6 test label maps, counted here
        share = (labels == c).double().mean().item()
        assert float(row["pixel_share"]) == pytest.approx(share, abs=1e-6)
        assert (row["iou"] == "") == (share == 0 and not (predicted == c).any().item())

    samples = sorted((project / "metrics" / "samples" / "asapnet").glob("*.png"))
    assert [s.name for s in samples] == ["cmp_b0001.png", "cmp_b0002.png"]
    assert np.asarray(Image.open(samples[0])).shape == (64, 192, 3)
    cache = project / "data" / "cache"
    assert (cache / f"{DATASET}.fid-test-first6.npz").is_file() and (cache / ".gitignore").read_text().endswith("*\n")
    # the floor: FID of 6 held-out real photos against the 6 test photos, from the cached Inception
    # features, by the Frechet formula written out here with scipy
    def stats(name):
        with np.load(cache / name) as data:
            f = data["features"].astype(np.float64)
        return f.mean(0), np.cov(f, rowvar=False)
    (mu1, s1), (mu2, s2) = stats(f"{DATASET}.fid-test-first6.npz"), stats(f"{DATASET}.fid-train-first6.npz")
    covmean = linalg.sqrtm(s1 @ s2).real
    floor = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert metrics["fid_floor"]["fid"] == pytest.approx(floor, rel=1e-3)
    assert metrics["fid_floor"]["num_images"] == 6 and provenance["fid_floor_reference_split"] == "train"

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval_fid"] == pytest.approx(metrics["fid"])
    assert run.data.metrics["eval_miou"] == pytest.approx(metrics["miou"])
    assert run.data.metrics["eval_real_pixel_acc"] == pytest.approx(metrics["real"]["pixel_acc"])
    assert run.data.metrics["eval_pixel_share_facade"] == pytest.approx(float(rows[2]["pixel_share"]))
    assert run.data.metrics["eval_fid_floor"] == pytest.approx(floor, rel=1e-3)
    assert run.data.metrics["eval_runtime_host_matmul_tflops"] == pytest.approx(metrics["runtime_host_matmul_tflops"])
    assert run.data.tags["eval.dataset"] == DATASET and run.data.tags["eval.linked_to_training_run"] == "true"
    assert run.data.tags["eval.num_images"] == "6" and "eval_num_images" not in run.data.metrics  # a setting
    assert client.get_metric_history(run_id, "eval_fid")[0].step == 7
    assert {a.path for a in client.list_artifacts(run_id, "eval")} >= {"eval/eval-asapnet.json",
                                                                      "eval/eval_per_class-asapnet.csv"}
    assert [a.path for a in client.list_artifacts(run_id, "eval/provenance")] == ["eval/provenance/eval-asapnet.json"]
    # the training run was not reopened: its end time is still the one set before evaluation
    assert run.info.end_time == ended_at


@pytest.mark.slow
def test_a_baseline_gets_its_own_eval_file(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64, {"evaluate": {**EVAL, "num_samples": 1, "runtime_iters": 0},
                                                          "baselines": {"spade": {"arch": "spade", "width_mult": 0.1}}})
    torch.manual_seed(2)
    spade = SPADEGenerator(SPADEConfig(num_classes=13, width_mult=0.1)).eval()
    save_generator(project / "models" / "spade" / "generator.pt", spade, meta={"dataset": DATASET, "steps": 3})
    save_segmenter(project / "models" / f"segmenter-{DATASET}.pt", tiny_segmenter(), meta={"dataset": DATASET})
    proc = run_stage(project, "pipelines.evaluate", "--generator", "spade", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((project / "metrics" / "eval-spade.json").read_text())
    provenance = json.loads((project / "metrics" / "provenance" / "eval-spade.json").read_text())
    assert provenance["arch"] == "spade" and metrics["width_mult"] == 0.1 and metrics["generator_steps"] == 3
    assert "runtime_ms" not in metrics and "runtime_device" not in provenance  # evaluate.runtime_iters: 0
    assert_stage_metrics_are_numbers(project, "evaluate-baseline@spade")
    assert metrics["params"] == sum(t.numel() for t in spade.parameters())
    assert [p.name for p in (project / "metrics" / "samples" / "spade").iterdir()] == ["cmp_b0001.png"]
    assert not (project / "metrics" / "eval-asapnet.json").exists()


def test_missing_inputs_name_the_stage_to_run(tmp_path, facades64, monkeypatch):
    import pipelines.evaluate as stage

    project = make_project(tmp_path / "proj", facades64, {"evaluate": EVAL})
    monkeypatch.chdir(project)
    with pytest.raises(stage.MissingInput, match=r"models/asapnet/generator.pt missing: run `dvc repro train`"):
        stage.main([])
    with pytest.raises(stage.MissingInput, match=r"models/pix2pixhd/generator.pt missing: run "
                                                 r"`dvc repro train-baseline@pix2pixhd`"):
        stage.main(["--generator", "pix2pixhd"])
    with pytest.raises(stage.ConfigError, match=r"generator 'pix2pixHD' is neither train.name"):
        stage.main(["--generator", "pix2pixHD"])
    save_generator(project / "models" / "asapnet" / "generator.pt", tiny_generator(), meta={"dataset": DATASET})
    with pytest.raises(stage.MissingInput, match=rf"models/segmenter-{DATASET}.pt missing: run `dvc repro segmenter`"):
        stage.main([])


@pytest.mark.slow
def test_missing_generator_fails_the_stage_with_one_clear_line(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64)
    proc = run_stage(project, "pipelines.evaluate", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: models/asapnet/generator.pt missing: run `dvc repro train` "
                                   "(or `python -m pipelines.train`)")


def test_a_checkpoint_without_a_known_training_run_gets_an_evaluate_run(tmp_path, facades64, monkeypatch):
    import pipelines.evaluate as stage
    from pipelines import common

    project = make_project(tmp_path / "proj", facades64)
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")  # restored after the test
    metrics = {"fid": 12.5, "kid_mean": 0.1, "kid_std": 0.0, "pixel_acc": 0.5, "miou": 0.25, "num_images": 2,
               "generator_steps": 3, "real": {"pixel_acc": 0.6, "miou": 0.3}}
    provenance = {"generator_mlflow_run_id": "0123456789abcdef", "segmenter": "models/s.pt"}
    per_class = [{"class": 0, "name": "traffic light", "pixel_share": 1.0, "iou": None, "real_iou": 0.5}]
    common.write_json(project / stage.eval_json("asapnet"), metrics)
    common.write_json(project / stage.provenance_json("asapnet"), provenance)
    stage.write_per_class_csv(project / stage.per_class_csv("asapnet"), per_class)
    try:
        run_id = stage.log_to_mlflow(metrics, provenance, per_class, DATASET, "asapnet", project)
    finally:
        mlflow.set_tracking_uri(None)
    run = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(run_id)
    assert run.info.run_name == f"evaluate-asapnet-{DATASET}" and run.info.status == "FINISHED"
    assert run.data.tags["eval.linked_to_training_run"] == "false"
    assert run.data.metrics == {"eval_fid": 12.5, "eval_kid_mean": 0.1, "eval_kid_std": 0.0, "eval_pixel_acc": 0.5,
                                "eval_miou": 0.25, "eval_real_pixel_acc": 0.6, "eval_real_miou": 0.3,
                                "eval_pixel_share_traffic_light": 1.0, "eval_real_iou_traffic_light": 0.5}
    assert run.data.tags["eval.num_images"] == "2"
