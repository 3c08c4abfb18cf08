"""The `segmenter` stage for real on the facades data at 64x64 (tiny settings): model, metrics file,
MLflow run; and the clear error when the prepared dataset is missing."""

import json

import mlflow
import numpy as np
import pytest
import torch

from asap.data.prepared import PreparedDataset
from asap.models.segmenter import load_segmenter
from project_helpers import make_project, run_stage

TINY_SEGMENTER = {"steps": 3, "batch_size": 2, "crop": 32, "width_mult": 0.1, "log_every": 1}


@pytest.mark.slow
def test_segmenter_stage_writes_model_metrics_and_mlflow_run(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64, {"segmenter": TINY_SEGMENTER})
    proc = run_stage(project, "pipelines.segmenter", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 3/3" in proc.stdout

    model, meta = load_segmenter(project / "models" / "segmenter-facades-64x64.pt")
    assert meta["dataset"] == "facades-64x64" and meta["steps"] == 3 and meta["recipe"]["crop"] == 32
    assert model.config.num_classes == 13 and model.config.width_mult == 0.1
    metrics = json.loads((project / "metrics" / "segmenter.json").read_text())
    assert metrics["steps"] == 3 and metrics["test_images"] == 60
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())  # a DVC metric
    provenance = json.loads((project / "metrics" / "provenance" / "segmenter.json").read_text())
    assert len(provenance["test_per_class"]) == 13 and provenance["dataset"] == "facades-64x64"

    # Pixel accuracy on the real test photos, recomputed here by counting equal pixels.
    test = PreparedDataset(facades64, "test")
    photos = torch.stack([test[i]["image"] for i in range(len(test))])
    labels = torch.stack([test[i]["label"] for i in range(len(test))]).numpy()
    predicted = model.predict(photos, batch_size=20).numpy()
    assert metrics["test_pixel_acc"] == pytest.approx(np.mean(predicted == labels), abs=1e-4)  # float ties across batch sizes

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("asapnet-facades-64x64")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "segmenter-facades-64x64" and run.info.run_id == provenance["mlflow_run_id"]
    assert run.info.status == "FINISHED" and run.data.params["segmenter.steps"] == "3"
    assert run.data.metrics["test_pixel_acc"] == pytest.approx(metrics["test_pixel_acc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]


def test_missing_prepared_dataset_names_the_prepare_stage(tmp_path, facades64, monkeypatch):
    import pipelines.segmenter as stage

    project = make_project(tmp_path / "proj", facades64, {"dataset": "facades-128x128"})
    monkeypatch.chdir(project)
    with pytest.raises(stage.MissingInput, match=r"facades-128x128 missing: run `dvc repro prepare-facades@128x128`"):
        stage.main()
