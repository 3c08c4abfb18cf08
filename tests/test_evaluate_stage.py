"""The `evaluate` stage for real on facades at 64x64: a tiny generator checkpoint linked to an MLflow run
made here, a tiny segmenter; eval.json, the per-class CSV, the samples, the FID cache, the eval_*
metrics in that run; and the clear errors when an input is missing."""

import csv
import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from asap.data.prepared import PreparedDataset
from asap.models.asapnet import asapnet
from asap.models.checkpoint import save_generator
from asap.models.segmenter import Segmenter, SegmenterConfig, save_segmenter
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
    generator, segmenter = tiny_generator(), tiny_segmenter()
    save_generator(project / "models" / "asapnet" / "generator.pt", generator,
                   meta={"dataset": DATASET, "steps": 7, "mlflow_run_id": run_id, "run_name": "train-asapnet-test"})
    save_segmenter(project / "models" / f"segmenter-{DATASET}.pt", segmenter, meta={"dataset": DATASET, "steps": 5})

    proc = run_stage(project, "pipelines.evaluate", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scored 6/6 images" in proc.stdout

    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert metrics["num_images"] == 6 and metrics["generator_steps"] == 7 and metrics["segmenter_steps"] == 5
    assert metrics["dataset"] == DATASET and metrics["generator_mlflow_run_id"] == run_id
    assert metrics["fid"] > 0 and metrics["kid_subset_size"] == 6
    assert set(metrics["real"]) == {"pixel_acc", "miou"} and len(metrics["per_class"]) == 13

    # Pixel accuracy of the segmenter on the generated images, counted here pixel by pixel.
    test = PreparedDataset(facades64, "test")
    labels = torch.stack([test[i]["label"] for i in range(6)])
    with torch.no_grad():
        predicted = segmenter(generator(labels)).argmax(1)
    assert metrics["pixel_acc"] == pytest.approx((predicted == labels).double().mean().item(), abs=1e-4)

    with open(project / "metrics" / "eval_per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows][:3] == ["unused", "background", "facade"] and len(rows) == 13
    for row, c in zip(rows, metrics["per_class"]):
        assert float(row["pixel_share"]) == pytest.approx(c["pixel_share"])
        assert (row["iou"] == "") == (c["iou"] is None)

    samples = sorted((project / "metrics" / "samples").glob("*.png"))
    assert [s.name for s in samples] == ["cmp_b0001.png", "cmp_b0002.png"]
    assert np.asarray(Image.open(samples[0])).shape == (64, 192, 3)
    cache = project / "data" / "cache"
    assert (cache / f"{DATASET}.fid-test-first6.npz").is_file() and (cache / ".gitignore").read_text().endswith("*\n")

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval_fid"] == pytest.approx(metrics["fid"])
    assert run.data.metrics["eval_miou"] == pytest.approx(metrics["miou"])
    assert run.data.metrics["eval_real_pixel_acc"] == pytest.approx(metrics["real"]["pixel_acc"])
    assert run.data.metrics["eval_pixel_share_facade"] == pytest.approx(metrics["per_class"][2]["pixel_share"])
    assert run.data.tags["eval.dataset"] == DATASET and run.data.tags["eval.linked_to_training_run"] == "true"
    assert client.get_metric_history(run_id, "eval_fid")[0].step == 7
    assert {a.path for a in client.list_artifacts(run_id, "eval")} >= {"eval/eval.json", "eval/eval_per_class.csv"}


def test_missing_inputs_name_the_stage_to_run(tmp_path, facades64, monkeypatch):
    import pipelines.evaluate as stage

    project = make_project(tmp_path / "proj", facades64, {"evaluate": EVAL})
    monkeypatch.chdir(project)
    with pytest.raises(stage.MissingInput, match=r"models/asapnet/generator.pt missing: run `dvc repro train`"):
        stage.main()
    save_generator(project / "models" / "asapnet" / "generator.pt", tiny_generator(), meta={"dataset": DATASET})
    with pytest.raises(stage.MissingInput, match=rf"models/segmenter-{DATASET}.pt missing: run `dvc repro segmenter`"):
        stage.main()


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
               "generator_steps": 3, "generator_mlflow_run_id": "0123456789abcdef", "segmenter": "models/s.pt",
               "real": {"pixel_acc": 0.6, "miou": 0.3},
               "per_class": [{"class": 0, "name": "traffic light", "pixel_share": 1.0, "iou": None, "real_iou": 0.5}]}
    common.write_json(project / stage.EVAL_JSON, metrics)
    stage.write_per_class_csv(project / stage.PER_CLASS_CSV, metrics["per_class"])
    try:
        run_id = stage.log_to_mlflow(metrics, DATASET, "asapnet", project)
    finally:
        mlflow.set_tracking_uri(None)
    run = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(run_id)
    assert run.info.run_name == f"evaluate-asapnet-{DATASET}" and run.info.status == "FINISHED"
    assert run.data.tags["eval.linked_to_training_run"] == "false"
    assert run.data.metrics == {"eval_fid": 12.5, "eval_kid_mean": 0.1, "eval_kid_std": 0.0, "eval_pixel_acc": 0.5,
                                "eval_miou": 0.25, "eval_real_pixel_acc": 0.6, "eval_real_miou": 0.3,
                                "eval_num_images": 2.0, "eval_pixel_share_traffic_light": 1.0,
                                "eval_real_iou_traffic_light": 0.5}
