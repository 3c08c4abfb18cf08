"""The `sweep` stage for real: a 2-trial Ray Tune grid (each trial a Ray Train run) on CPU, its MLflow
parent/child runs, its results table, and a re-run that skips the finished trials."""

import json

import mlflow
import pandas as pd
import pytest

from project_helpers import make_project, run_stage

pytestmark = pytest.mark.slow

SWEEP = {"sweep": {"downsampling": [4], "variants": ["uniform"], "steps": 2, "time_budget_s": None, "num_workers": 1,
                   "cpus_per_worker": 0.9, "eval_max_images": 4, "runtime_iters": 2}}


def test_two_trial_sweep_logs_parent_and_children_and_resumes(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64, SWEEP)
    first = run_stage(project, "pipelines.sweep", timeout=420)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    table = pd.read_csv(project / "metrics" / "sweep.csv")
    assert sorted(table["trial"]) == ["full-S4", "uniform-S4"]
    assert set(table["steps"]) == {2}
    for col in ("fid", "kid_mean", "runtime_ms", "lr_ms", "hr_ms", "P"):
        assert table[col].notna().all() and (table[col] >= 0).all(), col
    # the ablation predicts as many MLP parameters per tile as the full model (one set vs a grid)
    assert table["P"].nunique() == 1
    summary = json.loads((project / "metrics" / "sweep.json").read_text())
    assert sorted(summary["trials"]) == ["full-S4", "uniform-S4"]  # keyed by trial: DVC shows them
    for _, row in table.iterrows():
        assert summary["trials"][row["trial"]]["fid"] == pytest.approx(row["fid"])

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("asapnet-facades-64x64")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    provenance = json.loads((project / "metrics" / "provenance" / "sweep.json").read_text())
    assert parents[0].info.run_id == provenance["mlflow_parent_run_id"] and provenance["dataset"] == "facades-64x64"
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert sorted(c.data.params["sweep.variant"] for c in children) == ["full", "uniform"]
    assert all(c.data.params["sweep.S"] == "4" for c in children)
    assert all("eval_fid" in c.data.metrics and c.info.status == "FINISHED" for c in children)
    from asap.engine import code_sha1, training_code
    code = [{"from_step": 0, "code_sha1": code_sha1(training_code())}]  # which code trained each trial
    assert all(json.loads(c.data.tags["code_history"]) == code for c in children)
    # and the host each trial trained on, at what matmul rate: the row, the MLflow tag and metric agree
    for c in children:
        (host,) = json.loads(c.data.tags["host_history"])
        row = table[table["mlflow_run_id"] == c.info.run_id].iloc[0]
        assert host["from_step"] == 0 and host["matmul_tflops"] > 0 and host["matmul_tflops_end"] > 0
        mean = (host["matmul_tflops"] + host["matmul_tflops_end"]) / 2  # the trial's one session
        assert row["host_matmul_tflops"] == pytest.approx(mean)
        assert summary["trials"][row["trial"]]["host_matmul_tflops"] == pytest.approx(mean)
        assert c.data.metrics["host_matmul_tflops"] == pytest.approx(host["matmul_tflops_end"])  # the latest sample
        # and the host's rate as the trial's runtime was timed (two samples around it, at its threads)
        assert row["runtime_host_matmul_tflops"] > 0
        assert row["runtime_allocator"] == "glibc steady (mmap threshold 32 MiB, trim threshold 1024 MiB)"
        # timed by the driver once the trials were done (one line each, the row's numbers)
        assert (f"[sweep] {row['trial']}: batch-1 runtime {row['runtime_ms']:.1f} ms (low-res {row['lr_ms']:.1f} + "
                f"pixelwise {row['hr_ms']:.1f}) on cpu") in first.stdout
        assert c.data.metrics["eval_runtime_ms"] == pytest.approx(row["runtime_ms"])
        assert c.data.metrics["eval_runtime_host_matmul_tflops"] == pytest.approx(row["runtime_host_matmul_tflops"])
        assert summary["trials"][row["trial"]]["runtime_host_matmul_tflops"] == pytest.approx(
            row["runtime_host_matmul_tflops"])
    # the parent run shows the sweep: best trial, the table, the figure; each child holds its generator
    parent = parents[0]
    best = table.loc[table["fid"].idxmin()]
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == best["trial"]
    assert parent.data.metrics["best_fid"] == pytest.approx(best["fid"])
    assert "| trial |" in parent.data.tags["mlflow.note.content"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep.csv", "sweep_fid_vs_runtime.png"}
    assert all([a.path for a in client.list_artifacts(c.info.run_id, "checkpoint")] == ["checkpoint/generator.pt"]
               for c in children)
    # each child run records the config its trial ran with, not params.yaml's train / model sections
    by_variant = {c.data.params["sweep.variant"]: c.data.params for c in children}
    assert by_variant["uniform"]["model.spatially_uniform"] == "True"
    assert by_variant["full"]["model.spatially_uniform"] == "False"
    for trial in by_variant.values():
        assert trial["train.steps"] == "2" and trial["train.num_workers"] == "1" and trial["model.downsampling"] == "4"
        assert trial["train.global_batch"] == "1" and trial["train.time_budget_s"] == "None"

    # a re-run (e.g. after an interruption) trains nothing again and keeps the same runs
    again = run_stage(project, "pipelines.sweep", timeout=420)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert out.count("finished earlier") == 2
    assert "training code changed" not in out  # the same code trained them
    assert "repeated" not in out and "deduplicates" not in out, out[-3000:]  # every trial's own line, no Ray notice
    assert "[train] step" not in out
    runs_after = client.search_runs([exp.experiment_id])
    assert len(runs_after) == len(runs)
    assert pd.read_csv(project / "metrics" / "sweep.csv")["fid"].tolist() == table["fid"].tolist()


def test_a_sweep_run_again_from_scratch_supersedes_its_earlier_parent_run(tmp_path):
    """The sweep's parent run is reused while its folder holds the id; a sweep whose folder was removed
    starts a new parent run and tags the earlier one superseded_by it (real sqlite store, no Ray)."""
    from pipelines import common
    from pipelines.sweep import SweepConfig, grid, parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("asapnet-test")
    sweep, storage = SweepConfig(downsampling=[4]), tmp_path / "sweeps"
    points = grid(sweep, 4)
    first = parent_run(uri, "asapnet-test", "sweep-test", storage, sweep, points)
    assert parent_run(uri, "asapnet-test", "sweep-test", storage, sweep, points) == first
    (storage / "sweep-test" / "mlflow_parent_run_id").unlink()
    second = parent_run(uri, "asapnet-test", "sweep-test", storage, sweep, points)
    assert second != first
    assert client.get_run(first).data.tags["superseded_by"] == second
    assert client.get_run(second).data.tags["supersedes"] == first
    shown = [r.info.run_id for r in client.search_runs([experiment], common.SUPERSEDED_FILTER)]
    assert shown == [second]


def test_a_reused_trial_moves_to_the_current_parent_run(tmp_path, capsys):
    """A trial finished under a parent run that was since superseded, and reused by the new sweep,
    becomes the new parent's child (the current sweep lists every trial it reports), remembering the
    earlier parent; a trial already under it is untouched; a run missing from the store is named."""
    from pipelines.sweep import adopt_reused_trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("asapnet-test")
    old, new = (client.create_run(experiment, run_name="sweep-test").info.run_id for _ in range(2))
    trial = client.create_run(experiment, run_name="trial", tags={"mlflow.parentRunId": old}).info.run_id
    adopt_reused_trial(uri, trial, new)
    tags = client.get_run(trial).data.tags
    assert tags["mlflow.parentRunId"] == new and tags["sweep.earlier_parent"] == old
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{new}'")
    assert [r.info.run_id for r in children] == [trial]
    adopt_reused_trial(uri, trial, new)  # already there: nothing changes
    assert client.get_run(trial).data.tags["sweep.earlier_parent"] == old
    adopt_reused_trial(uri, "0" * 32, new)
    assert "is not in" in capsys.readouterr().out


@pytest.mark.parametrize("history", ["current", "other", "none"])
def test_a_reused_trial_says_when_other_code_trained_it(tmp_path, history):
    """A finished trial is reused by its run name, which covers its config, not the code: its
    generator's code_history says which training code made it, and the console says when that is
    not the code of this sweep, naming both digests and the two folders to remove."""
    from asap.engine import code_sha1, training_code
    from asap.models.asapnet import asapnet
    from asap.models.checkpoint import save_generator
    from pipelines.sweep import reused_code_note

    meta = {"current": {"code_history": [{"from_step": 0, "code_sha1": "0" * 12},
                                         {"from_step": 5, "code_sha1": code_sha1(training_code())}]},
            "other": {"code_history": [{"from_step": 0, "code_sha1": "d221e80632f0"}]},
            "none": {}}[history]
    trial, run = tmp_path / "models" / "full-S8", tmp_path / "checkpoints" / "sweep-full-S8-x"
    save_generator(trial / "generator.pt", asapnet(4, 32, 32, lr_width=4, lr_max_width=8, lr_depth=1,
                                                   mlp_width=4, downsampling=8), meta)
    note = reused_code_note(trial, run)
    if history == "current":
        assert note is None
        return
    assert f"remove {trial} and {run}" in note
    if history == "other":
        assert "code d221e80632f0, now " + code_sha1(training_code()) in note
    else:
        assert "records no training code" in note
