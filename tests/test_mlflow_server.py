"""MLflow server mode: the train stage logs to an `mlflow server` (sqlite backend, artifacts served by
the server) started here on 127.0.0.1, and everything is read back through the server's REST API with
plain HTTP, as a dashboard or another machine would. And a server that is down: the stage stops
before training, with one line naming the URI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from project_helpers import PYTHON, make_project, run_stage, stage_env

MLFLOW = str(Path(PYTHON).parent / "mlflow")
OVERRIDES = {"train": {"steps": 2, "checkpoint_every": 2, "sample_every": 2}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` with a sqlite store; artifacts go through the server (mlflow-artifacts:/) into
    <tmp>/art, so clients on other machines need no access to that folder."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}",
                             "--artifacts-destination", str(tmp_path / "art"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url, tmp_path / "art"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: their own process group
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def get(url: str, endpoint: str, **query) -> bytes:
    qs = f"?{urllib.parse.urlencode(query)}" if query else ""
    with urllib.request.urlopen(f"{url}{endpoint}{qs}", timeout=30) as r:
        return r.read()


def post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_train_stage_logs_to_an_mlflow_server_read_back_over_rest(tmp_path, facades64, mlflow_server):
    url, art = mlflow_server
    project = make_project(tmp_path / "proj", facades64, OVERRIDES)
    proc = run_stage(project, "pipelines.train", env=stage_env(MLFLOW_TRACKING_URI=url))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (project / "mlflow.db").exists()  # nothing went to the local store
    metrics = json.loads((project / "metrics" / "provenance" / "train-asapnet.json").read_text())  # run ids

    exp = json.loads(get(url, "/api/2.0/mlflow/experiments/get-by-name",
                         experiment_name="asapnet-facades-64x64"))["experiment"]
    [run] = post(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    info = run["info"]
    assert info["status"] == "FINISHED" and info["run_id"] == metrics["mlflow_run_id"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["model.lr_max_width"] == "16" and params["train.steps"] == "2"
    history = json.loads(get(url, "/api/2.0/mlflow/metrics/get-history", run_id=info["run_id"],
                             metric_key="G_total"))["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2]
    final = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert final["final_steps"] == 2

    # artifacts through the server's proxy: mlflow-artifacts:/<experiment>/<run>/artifacts
    assert info["artifact_uri"].startswith("mlflow-artifacts:/")
    root = info["artifact_uri"].split(":", 1)[1].lstrip("/")
    listed = json.loads(get(url, "/api/2.0/mlflow-artifacts/artifacts", path=f"{root}/samples"))["files"]
    assert [f["path"] for f in listed] == ["step_000002.png"]
    png = get(url, f"/api/2.0/mlflow-artifacts/artifacts/{root}/samples/step_000002.png")
    assert Image.open(io.BytesIO(png)).size[0] > 0
    checkpoint = get(url, f"/api/2.0/mlflow-artifacts/artifacts/{root}/checkpoint/generator.pt")
    local = (project / "models" / "asapnet" / "generator.pt").read_bytes()
    assert hashlib.sha1(checkpoint).hexdigest() == hashlib.sha1(local).hexdigest()
    assert (art / root / "checkpoint" / "generator.pt").read_bytes() == local  # stored by the server

    models = post(url, "/api/2.0/mlflow/logged-models/search", {"experiment_ids": [exp["experiment_id"]]})
    assert [m["info"]["name"] for m in models["models"]] == ["generator"]
    assert models["models"][0]["info"]["source_run_id"] == info["run_id"]


def test_train_stage_stops_before_training_when_the_mlflow_server_is_down(tmp_path, facades64):
    project = make_project(tmp_path / "proj", facades64)
    stale = project / "models" / "asapnet" / "generator.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an older run with other params")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    proc = run_stage(project, "pipelines.train", env=stage_env(MLFLOW_TRACKING_URI=uri), timeout=120)
    assert time.monotonic() - t0 < 60  # MLflow's own retries take minutes
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: MLFLOW_TRACKING_URI={uri}: no MLflow server answers there")
    assert not stale.exists() and not (project / "metrics" / "train-asapnet.json").exists()
    assert not (project / "checkpoints").exists()  # no training run was started


@pytest.mark.slow
def test_a_server_lost_mid_run_costs_no_training_and_no_metric_twice(tmp_path, facades64):
    """The server dies while the workers train: training goes on at full speed (no worker restart),
    one warning line says where the metrics wait; the stage ends with an error only at the final
    model upload. With the server back, a re-run sends the waiting metrics, each step once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def start_server():
        log = open(tmp_path / "server.log", "a")
        proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}",
                                 "--artifacts-destination", str(tmp_path / "art"), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                return proc
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.5)

    def stop_server(proc):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    project = make_project(tmp_path / "proj", facades64, {"train": {"steps": 12, "log_every": 1, "checkpoint_every": 4,
                                                                    "sample_every": 100}})
    server = start_server()
    proc = subprocess.Popen([PYTHON, "-m", "pipelines.train"], cwd=project, env=stage_env(MLFLOW_TRACKING_URI=url),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:  # kill the server once training is under way
            lines.append(line)
            if "step 3/12" in line:
                stop_server(server)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(lines)
    assert "step 12/12" in out, out[-3000:]  # trained to the end without the server
    assert out.count("does not answer") == 1 and "mlflow_unsent.jsonl" in out
    assert "resuming" not in out  # no worker failure, no restart
    assert proc.returncode != 0  # the final model could not be uploaded: the stage says so

    server = start_server()
    try:
        again = run_stage(project, "pipelines.train", env=stage_env(MLFLOW_TRACKING_URI=url))
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "metric record(s) the workers could not send" in again.stdout
        exp = json.loads(get(url, "/api/2.0/mlflow/experiments/get-by-name",
                             experiment_name="asapnet-facades-64x64"))["experiment"]
        [run] = post(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        history = json.loads(get(url, "/api/2.0/mlflow/metrics/get-history", run_id=run["info"]["run_id"],
                                 metric_key="G_total"))["metrics"]
        assert sorted(m["step"] for m in history) == list(range(1, 13))  # every step, once
        assert run["info"]["status"] == "FINISHED"
    finally:
        stop_server(server)
