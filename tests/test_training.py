"""The in-process trainer (asap/training.py, `asap train`): every architecture through one set-up, on
real facades pairs; a wall-clock budget that stops training and survives a kill; load_generator
round trips; bad params named before anything starts; no Ray, MLflow or DVC on the path."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from asap.config import ConfigError
from asap.models.checkpoint import load_generator
from asap.training import TrainingRun, build_trainer, train
from project_helpers import PYTHON, REPO

TINY = {
    "model": {"lr_width": 8, "lr_max_width": 16, "lr_depth": 1, "mlp_width": 16},
    "train": {"steps": 4, "ndf": 8, "d_layers": 2, "log_every": 1, "checkpoint_every": 2, "sample_every": 1000,
              "num_workers": 1},
    "loss": {"perceptual": "off"},
    "baselines": {"pix2pixhd": {"arch": "pix2pixhd", "width_mult": 0.125},
                  "spade": {"arch": "spade", "width_mult": 0.125}},
}


def params(**train):
    p = json.loads(json.dumps(TINY))
    p["train"].update(train)
    return p


def quiet(*args, **kwargs):
    pass


@pytest.mark.parametrize("name", ["pix2pixhd", "spade"])
def test_a_baseline_learns_a_real_pair_with_the_shared_recipe(facades64, name):
    """Each baseline, built by name through build_trainer with the discriminator and losses ASAP-Net
    gets, moves towards a real training photo: the L1 and perceptual (HED VGG16) distances between its
    output and the photo fall over 40 steps on that one pair (lr raised so that few steps suffice)."""
    from asap.data.prepared import PreparedDataset
    from asap.engine import collate

    p = params(steps=40, lr_g=1e-3, lr_d=4e-3, decay_from=1.0, flip=False)
    p["loss"]["perceptual"] = "hed-vgg16"
    run = TrainingRun.from_params(p, facades64, name)
    trainer = build_trainer(run)
    assert type(trainer.generator).__name__ == {"pix2pixhd": "Pix2PixHDGenerator", "spade": "SPADEGenerator"}[name]
    pair = collate(PreparedDataset(facades64, "train"), [0], [False])

    def distances():
        with torch.no_grad():
            trainer.generator.eval()
            out = trainer.generator(pair["label"])
            trainer.generator.train()
            return (out - pair["image"]).abs().mean().item(), trainer.perceptual(out, pair["image"]).item()

    l1_before, vgg_before = distances()
    for _ in range(40):
        trainer.train_step(pair)
    l1_after, vgg_after = distances()
    assert l1_after < 0.8 * l1_before, (l1_before, l1_after)
    assert vgg_after < 0.8 * vgg_before, (vgg_before, vgg_after)


@pytest.mark.parametrize("name", ["asapnet", "pix2pixhd", "spade"])
def test_trained_generator_round_trips_through_load_generator(tmp_path, facades64, name):
    run = TrainingRun.from_params(params(steps=2), facades64, name)
    summary = train(run, tmp_path / name, printer=quiet)
    model, meta = load_generator(summary["generator"])
    assert meta["arch"] == run.arch and meta["steps"] == 2 and meta["stopped_by"] == "steps"
    assert meta["dataset"] == "facades-64x64" and (meta["height"], meta["width"]) == (64, 64)
    # the same weights as the last training checkpoint, hence the same images
    state = torch.load(sorted((tmp_path / name / "checkpoints").glob("step_*"))[-1] / "state.pt",
                       weights_only=True)
    fresh = build_trainer(run).generator
    fresh.load_state_dict(state["generator"])
    labels = torch.randint(1, 13, (1, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(model(labels), fresh.eval()(labels))


def test_budgeted_run_stops_at_its_budget(tmp_path, facades64):
    budget = 4.0
    run = TrainingRun.from_params(params(steps=100000, time_budget_s=budget, log_every=5), facades64, "asapnet")
    t0 = time.perf_counter()
    summary = train(run, tmp_path / "run", printer=quiet)
    wall = time.perf_counter() - t0
    assert summary["stopped_by"] == "time_budget" and summary["steps"] > 3
    one_step = budget / summary["steps"]
    # stops at the first step that ends past the budget, so within one step of it
    assert budget <= summary["train_seconds"] <= budget + 2 * one_step + 0.5
    assert wall < budget + 15  # set-up and the final save are the rest
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [line["lr_G"] for line in lines]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.3 * run.train.lr_g  # decays with the seconds spent


@pytest.mark.slow
def test_killed_budgeted_run_resumes_without_spending_its_time_again(tmp_path, facades64):
    """`asap train` killed with SIGKILL mid-budget, then run again: the second run starts from the last
    checkpoint with its seconds counted, trains only for what is left, and ends at the budget."""
    budget = 16.0
    run_dir = tmp_path / "run"
    cmd = [PYTHON, "-m", "asap.cli", "train", str(facades64), "--generator", "asapnet", "--time-budget", str(budget),
           "--run-dir", str(run_dir), "--device", "cpu"]
    for key, value in [("model.lr_width", 8), ("model.lr_max_width", 16), ("model.lr_depth", 1),
                       ("model.mlp_width", 16), ("train.ndf", 8), ("train.d_layers", 2), ("train.steps", 100000),
                       ("train.checkpoint_every", 100000), ("train.checkpoint_every_s", 2), ("loss.perceptual", "off")]:
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def spent_at_checkpoints():
        out = []
        for folder in sorted((run_dir / "checkpoints").glob("step_*[0-9]")):
            try:
                out.append(torch.load(folder / "state.pt", weights_only=True)["elapsed_s"])
            except (RuntimeError, OSError, EOFError):
                pass
        return out

    deadline = time.time() + 120
    while time.time() < deadline and not any(s >= 5 for s in spent_at_checkpoints()):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = max(spent_at_checkpoints())
    assert 5 <= saved < budget
    assert not (run_dir / "generator.pt").exists()

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming asapnet from step" in again.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "time_budget" and summary["resumed_from_step"] > 0
    assert budget <= summary["train_seconds"] <= budget + 3
    # the second process trained only for what the first had left (plus one step's overshoot)
    assert summary["this_session_s"] <= budget - saved + 3, (summary, saved)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # steps redone after the kill are not logged twice


def test_asap_train_runs_without_ray_mlflow_or_dvc(tmp_path, facades64):
    script = f"""
import sys
from asap.cli import main
code = main(["train", {str(facades64)!r}, "--arch", "spade", "--steps", "2", "--run-dir", {str(tmp_path / 'r')!r},
             "--set", "baselines.spade.width_mult=0.125", "--set", "train.ndf=8", "--set", "loss.perceptual=off"])
loaded = sorted(m for m in ("ray", "mlflow", "dvc") if m in sys.modules)
print("LOADED", loaded)
sys.exit(code)
"""
    proc = subprocess.run([PYTHON, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout
    model, meta = load_generator(tmp_path / "r" / "generator.pt")
    assert meta["arch"] == "spade" and meta["steps"] == 2 and model.config.width_mult == 0.125
    helped = subprocess.run([PYTHON, "-m", "asap.cli", "train", "--help"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert helped.returncode == 0 and "--time-budget" in helped.stdout


def test_a_run_records_which_code_trained_which_steps(tmp_path, facades64, monkeypatch):
    """A run records the training code it ran (asap.engine.training_code: each file's SHA-1, checked
    here with hashlib), carried by its checkpoints. Resumed after a code change, it names the changed
    files, and the steps from there on get their own entry; a finished run resumed after a change says
    its weights stay those of the earlier code, and its record does not change."""
    import hashlib

    from asap import engine
    from asap.models.checkpoint import load_generator

    now = engine.training_code()
    assert now["asap/engine.py"] == hashlib.sha1((REPO / "asap" / "engine.py").read_bytes()).hexdigest()[:12]
    assert "asap/models/asapnet.py" in now and "asap/losses.py" in now
    assert not any(f.startswith(("asap/report/", "asap/cli.py")) for f in now)  # not what training computes
    run = TrainingRun.from_params(params(steps=4), facades64, "asapnet")  # checkpoints at steps 2 and 4
    first = train(run, tmp_path / "r", printer=quiet)
    assert first["code_history"] == [{"from_step": 0, "code_sha1": engine.code_sha1(now)}]

    # back to the checkpoint of step 2, then the code changes: steps 3 and 4 run the new code
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "step_0000004")
    edited = {**now, "asap/losses.py": "0" * 12}
    monkeypatch.setattr(engine, "training_code", lambda: edited)
    lines = []
    second = train(run, tmp_path / "r", printer=lambda *a, **k: lines.append(" ".join(map(str, a))))
    (note,) = [line for line in lines if "note:" in line]
    assert ("the training code changed since this run's checkpoint of step 2 (asap/losses.py); the steps from 3 "
            f"on run the code as it is now. To train the run afresh with this code, remove {tmp_path / 'r'}") in note
    history = [{"from_step": 0, "code_sha1": engine.code_sha1(now)}, {"from_step": 2, "code_sha1": engine.code_sha1(edited)}]
    assert second["code_history"] == history
    assert load_generator(tmp_path / "r" / "generator.pt")[1]["code_history"] == history

    # the code changes back; the run is finished: nothing trains, the record stays
    monkeypatch.undo()
    lines.clear()
    third = train(run, tmp_path / "r", printer=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any("(asap/losses.py); the run is finished: its weights stay those of the earlier code" in line
               for line in lines), lines
    assert third["code_history"] == history and third["steps"] == 4


def test_a_run_records_its_host_and_matmul_rate_per_session(tmp_path, facades64, monkeypatch):
    """Each session of a run times its device's matmul rate before its first step and after its last
    (asap.engine record_host / record_host_end, outside the budget) and its checkpoints carry them; a
    resumed run adds an entry at the step it resumed from, the run's rate is the step-weighted mean of
    its sessions' means (worked by hand here) and a finished run resumed adds none. The recorded rate is
    checked against a 1024^3 matmul timed here with perf_counter."""
    from asap.metrics import runtime
    from asap.metrics.runtime import device_info
    from metrics_helpers import matmul_tflops_here

    # each measurement in turn (fixed, so that the means can be worked by hand): session 1 start and
    # end, session 2 start and end
    rates = iter([0.25, 0.375, 0.125, 0.0625])
    measured = []

    def fake_peak(device, precision, n=None, iters=10):
        measured.append((str(device), precision, n, iters))
        return {"tflops": next(rates), "precision": precision, "n": n}

    monkeypatch.setattr("asap.metrics.runtime.matmul_peak", fake_peak)
    run = TrainingRun.from_params(params(steps=4), facades64, "asapnet")  # checkpoints at steps 2 and 4
    lines = []
    first = train(run, tmp_path / "r", printer=lambda *a, **k: lines.append(" ".join(map(str, a))))
    cpu = {"device_name": device_info("cpu")["device_name"], "threads": torch.get_num_threads(), "precision": "fp32",
           "n": runtime.HOST_MATMUL_N["cpu"]}
    assert first["host_history"] == [{"from_step": 0, "matmul_tflops": 0.25, "matmul_tflops_end": 0.375, **cpu}]
    assert first["host_matmul_tflops"] == (0.25 + 0.375) / 2
    assert measured == [("cpu", "fp32", 1024, runtime.HOST_MATMUL_ITERS)] * 2
    threads = f"{cpu['threads']} thread" + ("s" if cpu["threads"] != 1 else "")
    assert any(f"[train] host: {cpu['device_name']}, {threads}; fp32 matmul at 0.25 TFLOP/s" in line
               for line in lines), lines
    assert any("[train] host at the end: fp32 matmul at 0.375 TFLOP/s" in line for line in lines), lines

    # back to step 2 (its checkpoint was written mid-session: no end sample): steps 3 and 4 run in a
    # second session, on a slower host
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "step_0000004")
    second = train(run, tmp_path / "r", printer=quiet)
    history = [{"from_step": 0, "matmul_tflops": 0.25, "matmul_tflops_end": None, **cpu},
               {"from_step": 2, "matmul_tflops": 0.125, "matmul_tflops_end": 0.0625, **cpu}]
    assert second["host_history"] == history
    assert second["host_matmul_tflops"] == (2 * 0.25 + 2 * (0.125 + 0.0625) / 2) / 4
    meta = load_generator(tmp_path / "r" / "generator.pt")[1]
    assert meta["host_history"] == history and meta["host_matmul_tflops"] == 0.171875
    third = train(run, tmp_path / "r", printer=quiet)  # finished: nothing trains, nothing is measured
    assert third["host_history"] == history and len(measured) == 4

    # the real measurement, against a matmul timed here
    monkeypatch.undo()
    trainer = build_trainer(TrainingRun.from_params(params(steps=1), facades64, "asapnet"))
    entry = trainer.record_host()
    assert trainer.record_host() is entry and trainer.host_history == [entry]  # once per process
    here = matmul_tflops_here()
    assert here / 2.5 < entry["matmul_tflops"] < here * 2.5, (entry, here)


def test_a_run_folder_of_another_config_is_refused(tmp_path, facades64):
    train(TrainingRun.from_params(params(steps=1), facades64, "asapnet"), tmp_path / "r", printer=quiet)
    other = TrainingRun.from_params(params(steps=1, lr_g=2e-4), facades64, "asapnet")
    with pytest.raises(ConfigError, match="holds another training run"):
        train(other, tmp_path / "r", printer=quiet)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, facades64):
    run = TrainingRun.from_params(params(steps=4), facades64, "asapnet")
    train(run, tmp_path / "r", printer=quiet)
    newest = sorted((tmp_path / "r" / "checkpoints").glob("step_*"))[-1] / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    (tmp_path / "r" / "checkpoints" / "step_0000009.tmp").mkdir()  # left half-written by a kill
    lines = []
    summary = train(run, tmp_path / "r", printer=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any(f"checkpoint {newest} does not load" in line for line in lines)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    assert not (tmp_path / "r" / "checkpoints" / "step_0000009.tmp").exists()


def test_a_checkpoint_with_flipped_bytes_is_caught_by_its_checksum(tmp_path, facades64):
    run = TrainingRun.from_params(params(steps=4), facades64, "asapnet")  # checkpoints at steps 2 and 4
    train(run, tmp_path / "r", printer=quiet)
    for folder in (tmp_path / "r" / "checkpoints").glob("step_*"):
        data = bytearray((folder / "state.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensors: torch.load may not notice
        (folder / "state.pt").write_bytes(bytes(data))
    lines = []
    with pytest.raises(ConfigError, match="no checkpoint in .* loads"):
        train(run, tmp_path / "r", printer=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert sum("do not match the SHA-256 recorded" in line for line in lines) == 2


@pytest.mark.parametrize("change, match", [
    ({"baselines": {"p2p": {"arch": "pix2pixHD"}}}, r"params.yaml baselines.p2p.arch: unknown architecture "
                                                    r"'pix2pixHD'; allowed: asapnet, pix2pixhd, spade"),
    ({"baselines": {"p2p": {"width_mult": 0.5}}}, r"params.yaml baselines.p2p needs an `arch`"),
    ({"baselines": {"p2p": {"arch": "spade", "num_upsampling_layers": "most"}}},
     r"params.yaml baselines.p2p: spade needs image sides divisible by 128, but the dataset is 64x64"),
    ({"baselines": {"p2p": {"arch": "pix2pixhd", "num_classes": 5}}}, r"come from the dataset"),
    ({"train": {"time_budget_s": 0}}, r"train.time_budget_s must be null \(off\) or a number of seconds > 0"),
])
def test_bad_generator_params_name_the_key(facades64, change, match):
    p = params()
    for section, value in change.items():
        p[section] = {**p.get(section, {}), **value} if section == "train" else value
    with pytest.raises(ConfigError, match=match):
        TrainingRun.from_params(p, facades64, "p2p" if "baselines" in change else None)


def test_bad_baseline_fails_the_stage_before_ray_starts(tmp_path, facades64, monkeypatch):
    import pipelines.train as stage
    from project_helpers import make_project

    project = make_project(tmp_path / "proj", facades64, {"baselines": {"spade": {"arch": "spade", "nf": 0}}})
    monkeypatch.chdir(project)
    with pytest.raises(ConfigError, match=r"^params.yaml baselines.spade: SPADE nf must be a positive integer, got 0"):
        stage.main(["--generator", "spade"])
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()
    assert not (project / "checkpoints").exists()


def test_loss_perceptual_off_as_yaml_reads_it():
    import yaml

    from asap.losses import GANLossConfig
    assert GANLossConfig(**yaml.safe_load("perceptual: off")).perceptual == "off"


def test_keep_checkpoints_zero_trains_without_writing_any(tmp_path, facades64):
    run = TrainingRun.from_params(params(steps=4), facades64, "asapnet")
    summary = train(run, tmp_path / "r", keep_checkpoints=0, printer=quiet)
    assert summary["steps"] == 4 and (tmp_path / "r" / "generator.pt").is_file()
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_repeat_entry_is_its_generator_again_with_another_seed(facades64):
    """baselines.<name>: {repeat: asapnet, seed: 1} is ASAP-Net's own config (the `model` section) with
    train.seed 1: the same architecture and shapes, initial weights those of seed 1 (built here directly
    with torch's seed), a run of its own (another name and identity); bad entries are named."""
    from asap.models.checkpoint import build_generator

    p = params()
    p["baselines"]["asapnet-seed1"] = {"repeat": "asapnet", "seed": 1}
    rep = TrainingRun.from_params(p, facades64, "asapnet-seed1")
    ref = TrainingRun.from_params(p, facades64, "asapnet")
    assert rep.arch == "asapnet" and rep.generator == ref.generator and rep.train.seed == 1 and ref.train.seed == 0
    assert rep.run_name() != ref.run_name() and rep.identity()["train"]["seed"] == 1
    torch.manual_seed(1)
    expected = build_generator("asapnet", ref.generator).state_dict()
    got = build_trainer(rep).generator.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    seed0 = build_trainer(ref).generator.state_dict()
    assert any(not torch.equal(seed0[k], expected[k]) for k in expected if expected[k].is_floating_point())

    for entry, needle in [({"repeat": "asapnet", "seed": 0}, "would repeat the same run"),
                          ({"repeat": "nope", "seed": 2}, "'nope' is neither train.name"),
                          ({"repeat": "asapnet", "seed": 2, "lr_width": 4}, "takes only `repeat` and `seed`"),
                          ({"repeat": "asapnet", "seed": "one"}, "seed must be a non-negative integer")]:
        p["baselines"]["bad"] = entry
        with pytest.raises(ConfigError, match="baselines.bad") as err:
            TrainingRun.from_params(p, facades64, "bad")
        assert needle in str(err.value)
