"""The `train` stage for real: Ray Train with 2 CPU workers (DDP over gloo) on the real facades data,
its checkpoints, its MLflow run, a kill -9 of the whole stage followed by a resume, and a killed worker
replaced inside the run."""

import json
import os
import signal
import subprocess
import time

import mlflow
import pytest
import torch

from asap.metrics.runtime import device_info
from asap.models.checkpoint import load_generator
from metrics_helpers import assert_stage_metrics_are_numbers
from project_helpers import PYTHON, make_project, run_stage, stage_env

pytestmark = pytest.mark.slow


def mlflow_run(project, dataset):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(f"asapnet-{dataset}")
    runs = client.search_runs([exp.experiment_id])
    return client, runs


def checkpoint_steps(project):
    return sorted(json.loads(p.read_text())["step"]
                  for p in (project / "checkpoints" / "ray").glob("*/checkpoint_*/meta.json"))


def registered_steps(project):
    """Steps of the checkpoints Ray Train has registered (its snapshot): what a restart resumes from.
    A checkpoint folder can exist a moment before it is registered; a kill then resumes earlier."""
    steps = []
    for snap in (project / "checkpoints" / "ray").glob("*/checkpoint_manager_snapshot.json"):
        try:
            steps += [r["metrics"]["step"] for r in json.loads(snap.read_text())["checkpoint_results"]]
        except (ValueError, KeyError):  # being written right now
            pass
    return sorted(steps)


def start_stage_until_checkpoint(project, step: int = 2, timeout_s: float = 400):
    """`python -m pipelines.train` in its own process group, returned once Ray Train has registered a
    checkpoint of at least ``step``; also returns the deadline for the rest of the test."""
    proc = subprocess.Popen([PYTHON, "-m", "pipelines.train"], cwd=project, env=stage_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline and not any(s >= step for s in registered_steps(project)):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.5)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc, deadline


def test_two_worker_ray_train_run_writes_checkpoint_model_and_mlflow_run(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64)
    proc = run_stage(project, "pipelines.train")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 4/4" in proc.stdout + proc.stderr  # console progress from rank 0
    # a captured console (a log file, CI) gets the workers' lines without ANSI colour codes
    colored = [line for line in (proc.stdout + proc.stderr).splitlines() if "\x1b[" in line]
    assert not colored, colored[:3]

    model, meta = load_generator(project / "models" / "asapnet" / "generator.pt")
    assert meta["steps"] == 4 and meta["dataset"] == "facades-64x64"
    assert model(torch.randint(1, 13, (1, 64, 64))).shape == (1, 3, 64, 64)
    assert checkpoint_steps(project)[-2:] == [2, 4]
    metrics = json.loads((project / "metrics" / "train-asapnet.json").read_text())
    assert metrics["steps"] == 4 and metrics["num_workers"] == 2 and metrics["global_batch"] == 2
    assert_stage_metrics_are_numbers(project, "train")  # the DVC metric: numbers only
    provenance = json.loads((project / "metrics" / "provenance" / "train-asapnet.json").read_text())
    assert provenance["stopped_by"] == "steps" and provenance["arch"] == "asapnet" and provenance["train_seed"] == 0
    assert provenance["train_device"] == meta["train_device"] == "cpu" and provenance["dataset"] == "facades-64x64"
    assert provenance["run_name"] == meta["run_name"] and provenance["generator"] == "models/asapnet/generator.pt"
    assert provenance["cuda_graph"] == meta["cuda_graph"] == "off"  # how the steps ran (train.cuda_graph)
    from asap.engine import code_sha1, training_code
    code = [{"from_step": 0, "code_sha1": code_sha1(training_code())}]  # one code trained every step
    assert provenance["code_history"] == meta["code_history"] == code
    # where and how fast the one session ran: rank 0's measurement, before its clock started
    (host,) = provenance["host_history"]
    assert meta["host_history"] == [host] and host["from_step"] == 0 and host["precision"] == "fp32"
    assert host["device_name"] == device_info("cpu")["device_name"] and host["threads"] >= 1
    assert host["matmul_tflops"] > 0 and host["matmul_tflops_end"] > 0  # sampled at the start and the end
    mean = (host["matmul_tflops"] + host["matmul_tflops_end"]) / 2
    threads = f"{host['threads']} thread" + ("s" if host["threads"] != 1 else "")  # rank 0 prints its own
    assert f"[train] host: {host['device_name']}, {threads}; fp32 matmul at {host['matmul_tflops']:.3g}" in proc.stdout + proc.stderr
    assert metrics["host_matmul_tflops"] == pytest.approx(mean, abs=1e-4)

    client, runs = mlflow_run(project, "facades-64x64")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_id == provenance["mlflow_run_id"] == meta["mlflow_run_id"]
    assert run.data.params["model.lr_max_width"] == "16" and len(run.data.params["dataset.manifest_sha1"]) == 40
    assert run.data.params["train.lr_d"] == "0.0004"
    assert run.data.params["train.cuda_graph"] == "False" and run.data.tags["cuda_graph"] == "off"
    assert run.data.params["train.perceptual_channels_last"] == "False"  # how the VGG's tensors were laid out
    assert json.loads(run.data.tags["code_history"]) == code
    assert json.loads(run.data.tags["host_history"]) == [host]
    rates = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "host_matmul_tflops"))
    assert rates == [(1, pytest.approx(host["matmul_tflops"])), (4, pytest.approx(host["matmul_tflops_end"]))]
    assert run.data.metrics["final_host_matmul_tflops"] == pytest.approx(mean, abs=1e-4)
    # the resolved config that ran: S from the image size, the global batch, the worker count
    assert run.data.params["model.downsampling"] == "4" and run.data.params["arch"] == "asapnet"
    assert run.data.params["train.num_workers"] == "2" and run.data.params["train.global_batch"] == "2"
    history = client.get_metric_history(run.info.run_id, "G_total")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(m.value)) for m in history)
    assert {m.key for m in client.get_metric_history(run.info.run_id, "images_per_s")} == {"images_per_s"}
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert samples == ["samples/step_000002.png", "samples/step_000004.png"]
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert [m.name for m in logged] == ["generator"] and logged[0].source_run_id == run.info.run_id


def test_killed_stage_resumes_from_its_last_checkpoint(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64, {"train": {"steps": 8}})
    proc, deadline = start_stage_until_checkpoint(project)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and what shares its process group
    proc.wait()
    # Ray's own processes notice their driver is gone a moment later and may register one more
    # checkpoint first: wait until the registry stops changing, then resume must start from its last.
    seen, stable_since = registered_steps(project), time.time()
    while time.time() - stable_since < 5 and time.time() < deadline + 60:
        time.sleep(0.5)
        now = registered_steps(project)
        if now != seen:
            seen, stable_since = now, time.time()
    saved = max(seen)
    assert 2 <= saved < 8
    assert not (project / "models" / "asapnet" / "generator.pt").exists()
    # a kill while Ray copied a checkpoint in leaves a folder its snapshot never recorded
    [run_dir] = [d for d in (project / "checkpoints" / "ray").glob("train-*") if d.is_dir()]
    partial = run_dir / "checkpoint_2099-01-01_00-00-00.000000"
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"PK\x03\x04 half a zip")

    again = run_stage(project, "pipelines.train")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "resuming" in out and f"from step {saved}" in out
    assert f"removed {partial}" in out and not partial.exists()
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    assert {d.name for d in run_dir.glob("checkpoint_*") if d.is_dir()} <= {
        r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]}
    _, meta = load_generator(project / "models" / "asapnet" / "generator.pt")
    assert meta["steps"] == 8
    client, runs = mlflow_run(project, "facades-64x64")
    assert len(runs) == 1  # the resumed run continues the same MLflow run
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "G_total"))
    assert steps[-1] == 8 and set(range(saved + 1, 9)) <= set(steps)


def ray_train_workers(pid: int) -> list:
    """The Ray Train worker processes under the stage process ``pid`` (its local Ray cluster)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone meanwhile
            pass
    return found


def test_a_killed_worker_is_replaced_and_the_run_continues_from_its_checkpoint(tmp_path, facades64):
    """train.max_failures: one DDP worker SIGKILLed mid-run (an OOM kill, a lost node) costs a restart
    of the worker group from the last registered checkpoint, inside the same stage run: it finishes,
    exit 0, the steps after that checkpoint run again, one MLflow run."""
    project = make_project(tmp_path / "proj", facades64, {"train": {"steps": 10, "max_failures": 1}})
    proc, deadline = start_stage_until_checkpoint(project)
    try:
        workers = ray_train_workers(proc.pid)
        assert len(workers) == 2, [w.cmdline() for w in workers]
        saved = max(registered_steps(project))
        workers[1].kill()
        out, _ = proc.communicate(timeout=max(60, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = out.decode()
    assert proc.returncode == 0, out[-4000:]
    resumed = [int(line.split("from step ")[1].split()[0]) for line in out.splitlines() if "resuming" in line]
    assert resumed and saved <= resumed[0] < 10, out[-4000:]  # from a registered checkpoint, not from 0
    # the steps run both before the kill and after the restart give the same losses: the restored state
    # (weights, optimisers, data order, random streams) is the one the first run had at that step
    losses: dict = {}
    for line in out.splitlines():
        if "[train] step " in line and "G_total=" in line:
            step = int(line.split("[train] step ")[1].split("/")[0])
            losses.setdefault(step, []).append(line.split("G_total=")[1].split()[0])
    repeated = {k: v for k, v in losses.items() if len(v) > 1}
    assert all(len(set(v)) == 1 for v in repeated.values()), repeated
    _, meta = load_generator(project / "models" / "asapnet" / "generator.pt")
    assert meta["steps"] == 10
    client, runs = mlflow_run(project, "facades-64x64")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "G_total")})
    assert steps == list(range(1, 11))


def test_baseline_trained_by_the_stage_for_a_time_budget_on_two_workers(tmp_path, facades64):
    """A baseline through the same stage: its own model folder, metrics file and MLflow run in the
    dataset's experiment; two DDP workers agree on when the budget is spent (no rank left waiting)."""
    budget = 8.0
    project = make_project(tmp_path / "proj", facades64, {
        "baselines": {"spade": {"arch": "spade", "width_mult": 0.125}},
        "train": {"steps": 100000, "time_budget_s": budget, "log_every": 2, "checkpoint_every": 100000,
                  "sample_every": 100000}})
    proc = run_stage(project, "pipelines.train", "--generator", "spade")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "of the time budget" in out

    metrics = json.loads((project / "metrics" / "train-spade.json").read_text())
    provenance = json.loads((project / "metrics" / "provenance" / "train-spade.json").read_text())
    assert provenance["stopped_by"] == "time_budget" and provenance["arch"] == "spade" and metrics["steps"] >= 2
    assert_stage_metrics_are_numbers(project, "train-baseline@spade")
    assert metrics["time_budget_s"] == budget
    assert budget <= metrics["train_seconds"] <= budget + 10
    model, meta = load_generator(project / "models" / "spade" / "generator.pt")
    assert type(model).__name__ == "SPADEGenerator" and meta["steps"] == metrics["steps"]
    assert not (project / "models" / "asapnet").exists()

    client, runs = mlflow_run(project, "facades-64x64")
    [run] = runs
    assert run.info.run_name.startswith("train-spade-facades-64x64-") and run.info.status == "FINISHED"
    assert run.data.params["arch"] == "spade" and run.data.params["model.width_mult"] == "0.125"
    assert run.data.params["train.time_budget_s"] == str(budget) and run.data.tags["generator"] == "spade"
    assert run.data.metrics["final_steps"] == metrics["steps"]


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64)
    assert run_stage(project, "pipelines.train").returncode == 0
    folders = sorted((d for d in (project / "checkpoints" / "ray").glob("train-*/checkpoint_*") if d.is_dir()),
                     key=lambda d: json.loads((d / "meta.json").read_text())["step"])
    assert [json.loads((d / "meta.json").read_text())["step"] for d in folders] == [2, 4]
    damaged = folders[-1] / "state.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])  # truncated by a full disk

    again = run_stage(project, "pipelines.train")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert f"checkpoint {damaged} does not load" in out and "resuming" in out and "from step 2" in out
    _, meta = load_generator(project / "models" / "asapnet" / "generator.pt")
    assert meta["steps"] == 4


def test_more_workers_than_the_machine_has_fail_at_once_naming_the_setting(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64, {"train": {"num_workers": 8}})
    t0 = time.monotonic()
    proc = run_stage(project, "pipelines.train", timeout=300)
    assert time.monotonic() - t0 < 90  # Ray Train alone retries the start every 60 s, forever
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: train.num_workers=8 x train.cpus_per_worker=0.9 needs 7.2 CPUs, but this "
                           "machine has 2 CPUs"), line
    assert "at most 2 fit" in line
    client, runs = mlflow_run(project, "facades-64x64")
    assert runs == []  # no MLflow run was started for a run that could not start


def test_a_retrained_run_supersedes_its_earlier_mlflow_run(tmp_path, facades64, monkeypatch):
    """Removing a run folder (e.g. after a code change) trains the run again under the same name: a new
    MLflow run, and the earlier one tagged superseded_by it (kept, with a note saying why), so the UI
    can hide it. A resume reuses its run; another run name and a sweep trial of the same name are not
    touched. Real sqlite store, no Ray: the function the stage calls before training."""
    from dataclasses import replace

    from pipelines import common
    from pipelines import train as train_stage

    project = make_project(tmp_path / "proj", facades64)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = train_stage.resolve(common.params())
    job = replace(job, tracking_uri=common.tracking_uri())
    storage = project / "checkpoints" / "ray"
    other = replace(job, run_name=job.run_name + "-other")

    first = train_stage.mlflow_run(job, storage)
    assert train_stage.mlflow_run(job, storage) == first  # a resume: same run, nothing superseded
    other_id = train_stage.mlflow_run(other, storage)
    trial_id = train_stage.mlflow_run(job, tmp_path / "sweep-storage", parent_run_id=other_id)  # stage sweep-trial
    (storage / job.run_name / "mlflow_run_id").unlink()
    (storage / job.run_name).rmdir()
    second = train_stage.mlflow_run(job, storage)
    assert second != first and (storage / job.run_name / "mlflow_run_id").read_text() == second

    client, runs = mlflow_run(project, "facades-64x64")
    tags = {r.info.run_id: r.data.tags for r in runs}
    assert tags[first]["superseded_by"] == second and tags[second]["supersedes"] == first
    assert tags[first]["mlflow.note.content"].startswith(f"Superseded by run {second} (")
    assert "the run folder was removed" in tags[first]["mlflow.note.content"]
    assert all("superseded_by" not in tags[i] for i in (second, other_id, trial_id))
    shown = {r.info.run_id for r in client.search_runs([runs[0].info.experiment_id], common.SUPERSEDED_FILTER)}
    assert shown == {second, other_id, trial_id}  # the UI's filter hides exactly the superseded run

    (storage / job.run_name / "mlflow_run_id").unlink()  # a third training: only the current run is superseded
    third = train_stage.mlflow_run(job, storage)
    tags = {r.info.run_id: r.data.tags for r in mlflow_run(project, "facades-64x64")[1]}
    assert tags[first]["superseded_by"] == second and tags[second]["superseded_by"] == third
    assert tags[third]["supersedes"] == second
