"""The served model: the train stage's `log_final_model` logs the real trained ASAP-Net generator as an
MLflow pyfunc model and registers it; `mlflow models serve --env-manager local` serves it; a real
facades label map posted to /invocations comes back as the image the generator makes in-process; bad
requests get one clear line (HTTP 400) and the server keeps serving. Every store here is a temporary
sqlite file: the project's mlflow.db is never touched."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from PIL import Image

from asap.files import file_sha1
from asap.infer import TranslateError
from asap.models.asapnet import asapnet
from asap.models.checkpoint import CheckpointError, load_generator, save_generator, weights_sha1
from asap.serving import GeneratorService
from pipelines import serving, train
from project_helpers import REPO, TRAINED

pytestmark = pytest.mark.usefixtures("trained256")  # TRAINED's files (tests/conftest.py)
NAME = "asapnet-facades-256x256"  # <generator>-<dataset> of that checkpoint
MLFLOW = Path(sys.executable).with_name("mlflow")


def label_map(stem: str) -> np.ndarray:
    with Image.open(TRAINED.labels / f"{stem}.png") as img:  # uint8 class indices (asap/data/prepared.py)
        return np.asarray(img).astype(np.int64)


def generator_images(model: torch.nn.Module, labels: np.ndarray, edges=None) -> np.ndarray:
    """The independent path: the generator's own forward (one-hot encode inside), mapped [-1, 1] -> 0..255."""
    with torch.no_grad():
        out = model(torch.from_numpy(labels), edges)                       # (N, 3, H, W) in [-1, 1]
    return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)


def assert_same_image(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to uint8 rounding of float results computed in another order (max 1 level off)."""
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temporary sqlite MLflow store with a real run in which the train stage logged its final model."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            client = mlflow.MlflowClient(uri)
            exp = client.create_experiment(NAME, artifact_location=(root / "artifacts").as_uri())
            run_id = client.create_run(exp, run_name="train-asapnet-test").info.run_id
            t0 = time.perf_counter()
            train.log_final_model(run_id, TRAINED.asapnet, {"steps": 68, "train_seconds": 182.2,
                                                             "stopped_by": "time_budget", "arch": "asapnet"})
            log_s = time.perf_counter() - t0
            yield {"root": root, "uri": uri, "client": client, "run_id": run_id, "experiment": exp, "log_s": log_s}
        finally:
            mlflow.set_tracking_uri(before_uri)


# ----------------------------------------------------------------------------------------------
# What the train stage logs and registers
# ----------------------------------------------------------------------------------------------

def test_train_stage_registers_the_served_model(store):
    client, run_id = store["client"], store["run_id"]
    versions = client.search_model_versions(f"name='{NAME}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run_id)]
    assert "label maps: class indices 0..12, 256x256" in versions[0].description
    model = mlflow.models.get_model_info(f"models:/{NAME}/1")
    inputs, outputs = model.signature.inputs.inputs, model.signature.outputs.inputs
    assert [(str(s.type), s.shape) for s in inputs] == [("int64", (-1, 256, 256))]      # label map in
    assert [(str(s.type), s.shape) for s in outputs] == [("uint8", (-1, 256, 256, 3))]  # image out
    assert model.metadata["generator"] == "asapnet" and model.metadata["dataset"] == "facades-256x256"
    # the run's other records stay: measured metrics, the stop reason, the checkpoint file
    run = client.get_run(run_id)
    assert run.data.metrics["final_steps"] == 68 and run.data.tags["stopped_by"] == "time_budget"
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/generator.pt"]
    print(f"\nlog_final_model (served model logged + registered): {store['log_s']:.1f} s")


def test_a_rerun_registers_the_same_weights_once(store, tmp_path, capsys):
    """`dvc repro` reruns a train stage after a code change; the stage resumes its finished run (same
    MLflow run, same weights) and re-exports the checkpoint, whose meta now records another commit: no
    second model version. Other weights in the same run are a new version."""
    client = store["client"]
    model, meta = load_generator(TRAINED.asapnet)
    first = save_generator(tmp_path / "a.pt", model, {**meta, "name": "rerun"})  # registered as rerun-<dataset>
    again = save_generator(tmp_path / "b.pt", model, {**meta, "name": "rerun", "git_commit": "0" * 40})
    assert file_sha1(first) != file_sha1(again)  # other bytes, same weights
    run_id = client.create_run(store["experiment"], run_name="train-rerun").info.run_id
    metrics = {"steps": 68, "train_seconds": 182.2, "stopped_by": "time_budget"}
    name = f"rerun-{meta['dataset']}"
    train.log_final_model(run_id, first, metrics)
    train.log_final_model(run_id, again, metrics)
    out = capsys.readouterr().out
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert f"models:/{name}/1 already holds these weights" in out and "not logged or registered again" in out
    logged = mlflow.search_logged_models(experiment_ids=[store["experiment"]], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'")
    assert len(logged) == 1  # one served model logged
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    other = save_generator(tmp_path / "c.pt", model, {**meta, "name": "rerun"})
    train.log_final_model(run_id, other, metrics)
    versions = {str(v.version): v.tags["weights_sha1"] for v in client.search_model_versions(f"name='{name}'")}
    assert len(set(versions.values())) == 2 and set(versions) == {"1", "2"}


def test_weights_digest_covers_tensors_and_config_not_metadata(tmp_path):
    """weights_sha1 against hashlib over the same bytes in the order it documents."""
    import hashlib

    torch.manual_seed(0)
    g = asapnet(4, 32, 32, downsampling=16, lr_width=8, lr_max_width=16, lr_depth=1)
    a = save_generator(tmp_path / "a.pt", g, {"steps": 1})
    b = save_generator(tmp_path / "b.pt", g, {"steps": 2, "git_commit": "x"})
    expected = hashlib.sha1(json.dumps({"arch": "asapnet", "config": g.config.to_dict()}, sort_keys=True).encode())
    for key, t in sorted(g.state_dict().items()):
        expected.update(f"{key} {t.dtype} {tuple(t.shape)}".encode() + t.detach().numpy().tobytes())
    assert weights_sha1(a) == weights_sha1(b) == expected.hexdigest()
    g.config = g.config.__class__(**{**g.config.to_dict(), "spatially_uniform": not g.config.spatially_uniform})
    assert weights_sha1(save_generator(tmp_path / "c.pt", g)) != weights_sha1(a)  # same tensors, other function
    with pytest.raises(CheckpointError, match="params.yaml|not a generator checkpoint"):
        weights_sha1(REPO / "params.yaml")


def test_served_model_needs_neither_the_project_nor_its_install(store, tmp_path):
    """Load the registered model in a Python that cannot see this project (its editable install and
    its folder hidden): asap comes from the model's own code/ folder, and it translates."""
    script = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]
sys.path[:] = [p for p in sys.path if p and not (p.startswith({str(REPO)!r}) and '.venv' not in p)]
try:
    import asap
    raise SystemExit('asap is importable before loading the model: ' + asap.__file__)
except ImportError:
    pass
import mlflow, numpy as np
model = mlflow.pyfunc.load_model('models:/{NAME}/1')
labels = np.load({str(tmp_path / 'labels.npy')!r})
np.save({str(tmp_path / 'out.npy')!r}, model.predict(labels))
import asap
print(asap.__file__)
"""
    np.save(tmp_path / "labels.npy", label_map("cmp_b0002")[None])
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    asap_file = Path(done.stdout.strip().splitlines()[-1])
    assert asap_file.parent.name == "asap" and asap_file.parent.parent.name == "code"
    assert str(store["root"]) in str(asap_file) and str(REPO) not in str(asap_file)
    model, _ = load_generator(TRAINED.asapnet)
    assert_same_image(np.load(tmp_path / "out.npy"), generator_images(model, label_map("cmp_b0002")[None]))


def test_non_generator_file_is_refused_before_logging(store):
    client = store["client"]
    registered = sorted(m.name for m in client.search_registered_models())
    assert NAME in registered
    for path in (TRAINED.segmenter, REPO / "params.yaml"):
        if not path.is_file():
            continue
        with mlflow.start_run(experiment_id=store["experiment"]) as run:
            with pytest.raises(CheckpointError) as err:
                serving.log_generator_model(path, register=True)
        message = str(err.value)
        assert str(path.name) in message and "\n" not in message
        assert not mlflow.search_logged_models(experiment_ids=[store["experiment"]],
                                               filter_string=f"source_run_id = '{run.info.run_id}'",
                                               output_format="list")
    assert sorted(m.name for m in client.search_registered_models()) == registered  # nothing new


# ----------------------------------------------------------------------------------------------
# `mlflow models serve` for real
# ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(store, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(MLFLOW), "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": store["uri"]},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, f"mlflow models serve exited: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() - t0 < 180, f"no /ping in 180 s: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            time.sleep(0.5)
        print(f"\nmlflow models serve answered /ping after {time.monotonic() - t0:.1f} s")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the CLI execs uvicorn in its own session: the whole group
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
        log.close()


def post(url: str, maps) -> requests.Response:
    return requests.post(f"{url}/invocations", json={"inputs": np.asarray(maps).tolist()}, timeout=120)


def assert_clear_error(response: requests.Response, *needles: str) -> None:
    assert response.status_code == 400, response.text[:500]
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in body
    assert "Traceback" not in response.text
    for needle in needles:
        assert needle in body["message"], body["message"][-500:]


def test_mlflow_models_serve_translates_a_real_label_map(server):
    maps = np.stack([label_map("cmp_b0001"), label_map("cmp_b0007")])   # (2, 256, 256)
    model, _ = load_generator(TRAINED.asapnet)
    want = generator_images(model, maps)
    assert want.std() > 3  # not a flat picture (which a broken server might also return); 12 steps give ~7

    t0 = time.perf_counter()
    ok = post(server, maps)
    seconds = time.perf_counter() - t0
    assert ok.status_code == 200, ok.text[-2000:]
    got = np.asarray(ok.json()["predictions"], dtype=np.uint8)
    assert_same_image(got, want)
    print(f"POST of 2 label maps (256x256) -> 2 images: {seconds:.2f} s")

    # wrong label values: 99 and -1 are not among the 13 classes
    bad = maps[:1].copy()
    bad[0, :8, :8] = 99
    bad[0, -1, -1] = -1
    assert_clear_error(post(server, bad), "label values -1, 99", "65 pixels", "13 classes, allowed 0..12")
    # wrong sizes: half a map, and a map without its batch axis
    assert_clear_error(post(server, maps[:1, :128]), "Shape of input (1, 128, 256)", "expected shape (-1, 256, 256)")
    assert_clear_error(requests.post(f"{server}/invocations", json={"inputs": maps[0].tolist()}, timeout=120),
                       "Shape of input (256, 256)", "expected shape (-1, 256, 256)")

    again = post(server, maps[1:])  # still serving, and the same answer
    assert again.status_code == 200
    assert np.array_equal(np.asarray(again.json()["predictions"], dtype=np.uint8), got[1:])


# ----------------------------------------------------------------------------------------------
# The other input kinds, in-process (tiny generators; the served code path without the server)
# ----------------------------------------------------------------------------------------------

SMALL = dict(lr_width=8, lr_max_width=16, lr_depth=1, mlp_width=8, downsampling=8)


def tiny_checkpoint(path: Path, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = asapnet(height=32, width=32, **SMALL, **config).eval()
    save_generator(path, model, meta={"name": "tiny", "dataset": "tiny-32x32", "height": 32, "width": 32})
    return model


def instance_edges_by_hand(ids: np.ndarray) -> np.ndarray:
    """(N, H, W) ids -> (N, 1, H, W): 1 where any 4-neighbour has another id (pix2pixHD's edge map)."""
    edge = np.zeros(ids.shape, bool)
    for n, y, x in np.ndindex(*ids.shape):
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < ids.shape[1] and 0 <= xx < ids.shape[2] and ids[n, yy, xx] != ids[n, y, x]:
                edge[n, y, x] = True
    return edge[:, None].astype(np.float32)


def test_instance_edge_generator_takes_named_labels_and_instances(store, tmp_path):
    model = tiny_checkpoint(tmp_path / "g.pt", num_classes=4, instance_edge=True)
    with mlflow.start_run(experiment_id=store["experiment"]):
        info = serving.log_generator_model(tmp_path / "g.pt").info
    assert [(s.name, str(s.type), s.shape) for s in info.signature.inputs.inputs] == [
        ("labels", "int64", (-1, 32, 32)), ("instances", "int64", (-1, 32, 32))]
    served = mlflow.pyfunc.load_model(info.model_uri)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (2, 32, 32))
    instances = np.repeat(np.repeat(rng.integers(0, 3, (2, 4, 4)), 8, axis=1), 8, axis=2)
    got = served.predict({"labels": labels, "instances": instances})
    assert_same_image(got, generator_images(model, labels, torch.from_numpy(instance_edges_by_hand(instances))))
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"label values 4 .*allowed 0\.\.3"):
        served.predict({"labels": np.full((1, 32, 32), 4), "instances": instances[:1]})


def test_image_input_generator_takes_uint8_images(store, tmp_path):
    model = tiny_checkpoint(tmp_path / "g.pt", num_classes=3, input_kind="image")
    with mlflow.start_run(experiment_id=store["experiment"]):
        info = serving.log_generator_model(tmp_path / "g.pt").info
    assert [(str(s.type), s.shape) for s in info.signature.inputs.inputs] == [("uint8", (-1, 32, 32, 3))]
    photo = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3)).astype(np.uint8)
    got = mlflow.pyfunc.load_model(info.model_uri).predict(photo)
    x = torch.from_numpy(photo).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # as the prepared data feeds training
    with torch.no_grad():
        want = ((model(x).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert_same_image(got, want)


def test_service_errors_name_the_value_and_what_is_allowed(tmp_path):
    tiny_checkpoint(tmp_path / "g.pt", num_classes=5)
    service = GeneratorService(tmp_path / "g.pt", device="cpu")
    cases = [(np.full((1, 32, 32), 7), r"label values 7 \(in map 0, 1024 pixels\).*5 classes, allowed 0\.\.4"),
             (np.zeros((1, 16, 32), np.int64), r"must be \(N, 32, 32\).*trained at 32x32\), got shape \(1, 16, 32\)"),
             (np.zeros((1, 32, 32), np.float32), r"must be integer values.*got dtype float32"),
             ({"labels": np.zeros((1, 32, 32))}, r"takes one unnamed tensor")]
    for request, pattern in cases:
        with pytest.raises(TranslateError, match=pattern) as err:
            service.translate(request)
        assert "\n" not in str(err.value)
    json.dumps(service.example().tolist())  # the logged example is plain JSON
