"""The trainer's step as device work only (asap.engine.GANTrainer.update): fused Adam skipping a
non-finite step on the device, checkpoints of the earlier unfused optimiser resuming, and, on CUDA,
the whole step captured as one CUDA graph (train.cuda_graph) against the same trainer run eagerly.

The gpu tests are part of the GPU campaign's phase 1 (benchmarks/campaign/correctness.py): phase 4
trains with cuda_graph only where they passed on that device. They use synthetic data (the GPU
machine has no archive) and import nothing beyond torch and asap.
"""

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asap.config import ConfigError
from asap.engine import GRAPH_WARMUP_STEPS, NonFiniteLossError, TrainConfig, describe_graph
from asap.losses import GANLossConfig
from asap.models.asapnet import asapnet
from asap.training import TrainingRun, build_trainer, split_train_section
from host_sync import StepRecorder, changing_scalars
from op_counts import ConvCounter, conv_count

ROOT = Path(__file__).resolve().parents[1]

TINY_G = dict(lr_width=8, lr_max_width=16, lr_depth=1, mlp_width=16)


def make_trainer(device="cpu", size=32, num_classes=5, perceptual="off", **train):
    cfg = TrainConfig(**{"steps": 100, "ndf": 8, "d_layers": 2, "log_every": 1, "checkpoint_every": 1000,
                         "sample_every": 1000, **train})
    generator = asapnet(num_classes, size, size, **TINY_G).config.to_dict()
    run = TrainingRun(name="test", arch="asapnet", generator=generator, train=cfg,
                      loss=GANLossConfig(perceptual=perceptual), dataset="synthetic", data_root="")
    return build_trainer(run, device)


def batches(n, size=32, num_classes=5, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{"label": torch.randint(0, num_classes, (batch, size, size), generator=gen),
             "image": torch.rand(batch, 3, size, size, generator=gen) * 2 - 1} for _ in range(n)]


def snapshot(trainer):
    """Every number the step may change: both models' state and both optimisers' state (moments and
    step counts)."""
    return copy.deepcopy({"g": trainer.generator.state_dict(), "d": trainer.discriminator.state_dict(),
                          "opt_g": trainer.opt_g.state_dict()["state"], "opt_d": trainer.opt_d.state_dict()["state"]})


def assert_same_weights(a: dict, b: dict, **tol):
    for part in ("g", "opt_g", "opt_d"):
        torch.testing.assert_close(a[part], b[part], msg=part, **tol)
    # D's spectral norms keep their power-iteration vectors as buffers, which every forward moves (a
    # skipped step has run D forward, as the eager step always did before its check)
    torch.testing.assert_close({k: v for k, v in a["d"].items() if not k.endswith(("_u", "_v"))},
                               {k: v for k, v in b["d"].items() if not k.endswith(("_u", "_v"))}, **tol)


# ----------------------------------------------------------------------------------------------
# CPU: the device-side skip, the step equal to a hand-written Adam, resume of unfused checkpoints
# ----------------------------------------------------------------------------------------------

def test_non_finite_loss_skips_both_updates_on_the_device():
    """A NaN in the photo makes every loss NaN: the fused optimisers' found_inf must leave the weights,
    both Adam moments and both step counts exactly as they were, and the step must say so."""
    trainer = make_trainer()
    good, bad = batches(2)
    trainer.train_step(good)  # the optimisers have state (moments, step 1) before the bad step
    bad["image"][0, 1, 5, 7] = float("nan")
    before = snapshot(trainer)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 1: .*G_total.*The step was not applied;"):
        trainer.train_step(bad)
    after = snapshot(trainer)
    assert trainer.step == 1
    assert_same_weights(after, before, rtol=0, atol=0)
    trainer.train_step(good)  # and training goes on from there
    assert trainer.step == 2 and float(trainer.opt_g.state_dict()["state"][0]["step"]) == 2


def _adam_first_update(p0: torch.Tensor, grad: torch.Tensor | None, lr: float) -> torch.Tensor:
    """Adam's first update written out: betas (0, 0.9), bias-corrected, eps 1e-8."""
    g = grad if grad is not None else torch.zeros_like(p0)
    m, v = g, (1 - 0.9) * g * g                      # beta1 = 0: m is the gradient
    return p0 - lr * m / ((v / (1 - 0.9)).sqrt() + 1e-8)


def spectral_norms_held(discriminator):
    """D's spectral-normalised modules. Put in eval mode they skip their power iteration: the next
    forward uses the vectors the last one left, so it repeats that forward's weights."""
    from torch.nn.utils import parametrize

    return [m for m in discriminator.modules() if parametrize.is_parametrized(m)]


def test_step_equals_a_hand_written_adam_update():
    """Both first updates, recomputed here the way the authors' step has them: a G step (D's weights
    in the graph of the G loss, its gradient taken into G only), then a D step with its own forward of
    D on the detached fake, and Adam written out, against what the fused optimisers did from their one
    forward of D. The second forward runs D's spectral norms held at the first's power iteration:
    then it repeats the first's numbers, which is what lets the step skip it."""
    from asap.losses import feature_matching_loss, hinge_d_loss, hinge_g_loss

    trainer = make_trainer(lr_g=1e-3, lr_d=4e-3)
    batch = batches(1)[0]
    g0 = {n: p.detach().clone() for n, p in trainer.generator.named_parameters()}
    d0 = {n: p.detach().clone() for n, p in trainer.discriminator.named_parameters()}
    twin = make_trainer(lr_g=1e-3, lr_d=4e-3)  # same seed: the same initial weights
    x, real = twin.inputs(batch)
    fake = twin.generator(x)
    fake_out, real_out = twin.discriminate(x, fake, real)
    g_total = hinge_g_loss(fake_out) + feature_matching_loss(fake_out, real_out, twin.loss.lambda_feat)
    g_names, g_params = zip(*twin.generator.named_parameters())
    grads_g = dict(zip(g_names, torch.autograd.grad(g_total, g_params, allow_unused=True)))
    held = spectral_norms_held(twin.discriminator)
    assert held  # D is spectral-normalised: without holding them, the forward below would differ
    for m in held:
        m.eval()
    fake_out, real_out = twin.discriminate(x, fake.detach(), real)
    d_loss = hinge_d_loss(real_out, fake_out)
    d_names, d_params = zip(*twin.discriminator.named_parameters())
    grads_d = dict(zip(d_names, torch.autograd.grad(d_loss, d_params, allow_unused=True)))

    losses = trainer.train_step(batch)
    assert losses["G_total"] == pytest.approx(g_total.item(), rel=1e-6)
    assert losses["D"] == pytest.approx(d_loss.item(), rel=1e-6)
    for name, p in trainer.generator.named_parameters():
        torch.testing.assert_close(p.detach(), _adam_first_update(g0[name], grads_g[name], 1e-3),
                                   rtol=1e-5, atol=1e-6, msg=name)
    for name, p in trainer.discriminator.named_parameters():
        torch.testing.assert_close(p.detach(), _adam_first_update(d0[name], grads_d[name], 4e-3),
                                   rtol=1e-5, atol=1e-6, msg=name)


def _unfused_step(old, batch) -> None:
    """The step as it was before the optimisers were fused: plain (foreach) Adam, no found_inf; the
    losses and their gradients as the step takes them (one forward of D, the G loss into G only)."""
    from asap.losses import feature_matching_loss, hinge_d_loss, hinge_g_loss

    old.set_learning_rates()
    x, real = old.inputs(batch)
    fake = old.g_model(x)
    fake_out, real_out = old.discriminate(x, fake, real)
    old.opt_g.zero_grad(set_to_none=True)
    old.opt_d.zero_grad(set_to_none=True)
    g_loss = hinge_g_loss(fake_out) + feature_matching_loss(fake_out, real_out, old.loss.lambda_feat)
    g_loss.backward(inputs=list(old.generator.parameters()), retain_graph=True)
    hinge_d_loss(real_out, fake_out).backward(inputs=list(old.discriminator.parameters()))
    old.opt_g.step()
    old.opt_d.step()
    old.step += 1


def test_checkpoint_of_the_unfused_optimiser_resumes(tmp_path):
    """A checkpoint written before the optimisers were fused (foreach Adam: CPU step counts, fused
    unset) resumes into fused ones and continues like the run that wrote it would have."""
    data = batches(4)
    old = make_trainer()
    betas = (old.config.beta1, old.config.beta2)
    old.opt_g = torch.optim.Adam(old.generator.parameters(), lr=old.config.lr_g, betas=betas, foreach=True)
    old.opt_d = torch.optim.Adam(old.discriminator.parameters(), lr=old.config.lr_d, betas=betas, foreach=True)
    for batch in data[:2]:
        _unfused_step(old, batch)
    old.save(tmp_path / "old.pt")
    assert old.opt_g.state_dict()["param_groups"][0]["fused"] is None

    resumed = make_trainer()
    resumed.load(tmp_path / "old.pt")
    assert all(g["fused"] for opt in (resumed.opt_g, resumed.opt_d) for g in opt.param_groups)
    for batch in data[2:]:
        resumed.train_step(batch)
        _unfused_step(old, batch)  # the run that wrote the checkpoint, continued
    assert resumed.step == old.step == 4
    for (name, a), b in zip(old.generator.state_dict().items(), resumed.generator.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_cuda_graph_is_ignored_on_cpu_and_validated():
    trainer = make_trainer(cuda_graph=True)
    assert not trainer.graphed
    trainer.train_step(batches(1)[0])
    assert trainer.step == 1 and trainer.graph is None
    assert describe_graph(trainer.graph_status()) == "requested; eager (not on CUDA)"
    assert describe_graph(make_trainer().graph_status()) == "off" and describe_graph(None) == "not recorded"
    with pytest.raises(ConfigError, match="train cuda_graph must be true or false, got 'yes'"):
        TrainConfig(cuda_graph="yes")
    with pytest.raises(ConfigError, match=r"train.cuda_graph captures the step of one process.*num_workers is 2"):
        split_train_section({"cuda_graph": True, "num_workers": 2})
    run = TrainingRun(name="t", arch="asapnet", generator=asapnet(5, 32, 32, **TINY_G).config.to_dict(),
                      train=TrainConfig(), loss=GANLossConfig(perceptual="off"), dataset="s", data_root="")
    graphed = dataclasses.replace(run, train=TrainConfig(cuda_graph=True))
    assert run.digest() == graphed.digest()  # how a step runs is not what it computes: the same run folder


# ----------------------------------------------------------------------------------------------
# CPU: what a capture cannot hold (tests/host_sync.py), and what the G step no longer computes
# ----------------------------------------------------------------------------------------------

def test_the_recorder_sees_what_a_capture_cannot_hold():
    """The recorder the next tests rely on, on each kind of host read it must report, and on work that
    is none (a graph holds torch.where, full, arithmetic)."""
    t = torch.randn(6)
    reads = {"item": lambda: t.sum().item(), "bool": lambda: bool(t.sum() > 0),
             "if any": lambda: 1 if (t > 0).any() else 0, "float": lambda: float(t[0]),
             "tensor from Python": lambda: torch.tensor([0.5, 1.0]), "boolean mask": lambda: t[t > 0],
             "nonzero": lambda: t.nonzero(), "tolist": lambda: t.tolist(), "cpu": lambda: t.cpu(),
             "numpy": lambda: t.numpy(), "unique": lambda: t.round().unique(),
             "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2]))}
    for what, fn in reads.items():
        with StepRecorder() as rec:
            fn()
        assert rec.host_reads, what
    with StepRecorder() as rec:
        torch.where(t > 0, t, 0.0) * torch.full((), 2.0) + t.square().mean()
    assert rec.host_reads == [] and len(rec.ops) >= 5
    assert torch.Tensor.tolist is not None and "reading" not in torch.Tensor.tolist.__name__  # restored


def _recorded_steps(trainer, n: int, size: int, num_classes: int = 5) -> list[StepRecorder]:
    records = []
    for batch in batches(n, size=size, num_classes=num_classes):
        trainer.set_learning_rates()
        x, real = trainer.inputs(batch)
        with StepRecorder() as rec:
            trainer.update(x, real)
        trainer.step += 1
        records.append(rec)
    return records


BASELINES_TINY = {"pix2pixhd": {"width_mult": 0.125}, "spade": {"width_mult": 0.125}}


@pytest.mark.parametrize("arch", ["asapnet", "pix2pixhd", "spade"])
def test_the_step_reads_nothing_back_and_replays_the_same_numbers(arch):
    """Each generator's whole step (G, D, the perceptual HED VGG16, both backwards, both fused Adam
    updates) as a graph would record it: no host read; and two later steps run the same ops with the same
    Python numbers once the optimisers are capturable, while the LR decays every step. Without that
    (floats for the LRs) the record finds exactly the two updates' LRs changing: what a graph would have
    frozen."""
    size, classes = 64, 5
    cfg = TrainConfig(steps=10, decay_from=0.0, ndf=8, d_layers=2)
    generator = (asapnet(classes, size, size, **TINY_G).config.to_dict() if arch == "asapnet"
                 else {"num_classes": classes, **BASELINES_TINY[arch]})
    run = TrainingRun(name="t", arch=arch, generator=generator, train=cfg,
                      loss=GANLossConfig(perceptual="hed-vgg16"), dataset="synthetic", data_root="")
    trainer = build_trainer(run)
    first, second, third = _recorded_steps(trainer, 3, size, classes)
    assert first.host_reads == second.host_reads == third.host_reads == []
    changing = changing_scalars(second, third)
    assert len(changing) == 2 and all("aten._fused_adam_" in c and "'lr'" in c for c in changing), changing
    trainer._capturable_optimisers()
    second, third = _recorded_steps(trainer, 2, size, classes)
    assert second.host_reads == [] and changing_scalars(second, third) == []
    assert trainer.opt_g.param_groups[0]["lr"].item() == pytest.approx(run.train.lr_g * (1 - 4 / 10))


def test_the_fused_step_reads_nothing_back_on_the_host():
    """The same, through the fused Triton MLP (forward and backward) in Triton's interpreter, in a
    process of its own (tests/host_sync.py)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "host_sync.py"), "--fused"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fused"] and result["ops"] > 100
    assert result["host_reads"] == []


def test_a_step_runs_each_network_forward_once_and_each_weight_gradient_once():
    """A step runs each conv of G and of D forward once (D on fake and real in one batch serves both
    updates), computes each conv's weight gradient once (G's from the G loss, D's from the D loss:
    not D's from the G loss as well) and D's input gradients twice (the G loss needs them through
    D; the D loss from its last conv down to its second, not into the fake). Counted from the modules,
    against the step's own record; that these are the right gradients is
    test_step_equals_a_hand_written_adam_update."""
    trainer = make_trainer()
    convs = {"g": conv_count(trainer.generator), "d": conv_count(trainer.discriminator)}
    first = [scale.layers[0] for scale in trainer.discriminator.scales]  # each reads cat(label map, image)
    assert convs["g"] > 0 and convs["d"] > len(first) > 0
    trainer.set_learning_rates()
    x, real = trainer.inputs(batches(1)[0])
    with ConvCounter() as counter:
        trainer.update(x, real)
    assert counter.forward == convs["g"] + convs["d"]
    assert counter.weight_grads == convs["g"] + convs["d"]
    g_input_grads = convs["g"] - 1  # G's first conv reads the label map, which needs no gradient
    assert counter.input_grads == g_input_grads + convs["d"] + (convs["d"] - len(first))


# ----------------------------------------------------------------------------------------------
# CUDA: the captured step against the eager one
# ----------------------------------------------------------------------------------------------

def assert_moved_alike(init: dict, a: dict, b: dict, rel: float):
    """Two runs from the same start moved the models' weights alike: the distance between them is at
    most ``rel`` of the distance each moved. (Not element by element: Adam moves a parameter by about
    its LR whatever its gradient's size, so a gradient at rounding level may flip its sign between
    two runs; a step not applied, stale data or a stale LR moves the aggregate.)"""
    def flat(state):
        tensors = {**{f"g.{k}": v for k, v in state["g"].items()},
                   **{f"d.{k}": v for k, v in state["d"].items() if not k.endswith(("_u", "_v"))}}
        return torch.cat([v.detach().double().flatten().cpu() for _, v in sorted(tensors.items())
                          if v.is_floating_point()])

    start, x, y = flat(init), flat(a), flat(b)
    moved = (x - start).norm()
    assert moved > 0
    assert (x - y).norm() <= rel * moved, ((x - y).norm().item(), moved.item())


def test_moved_alike_tells_a_stale_learning_rate_from_the_same_run():
    """The gpu tests' criterion, on the CPU: the same run twice passes at 1e-3; a run whose LR stopped
    following the schedule after 3 of 7 steps (what a graph that baked the LR in would do) fails."""
    data = batches(GRAPH_WARMUP_STEPS + 4)
    cfg = dict(steps=20, decay_from=0.0, lr_g=1e-3, lr_d=4e-3)
    a, b, stale = make_trainer(**cfg), make_trainer(**cfg), make_trainer(**cfg)
    init = snapshot(a)
    for i, batch in enumerate(data):
        a.train_step(batch)
        b.train_step(batch)
        if i >= GRAPH_WARMUP_STEPS:
            stale.set_learning_rates = lambda: None  # keeps the LR of step 3 from here on
        stale.train_step(batch)
    assert_moved_alike(init, snapshot(a), snapshot(b), rel=1e-3)
    with pytest.raises(AssertionError):
        assert_moved_alike(init, snapshot(a), snapshot(stale), rel=1e-2)


@pytest.fixture
def same_arithmetic():
    """TF32 off and cuDNN's deterministic algorithms, so eager and graphed run the same arithmetic;
    restored after the test (other gpu tests share the process)."""
    b = torch.backends
    saved = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = b.cudnn.benchmark = False
    b.cudnn.deterministic = True
    yield
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic = saved


GPU_SIZE = 64  # S = 4: the fused kernel runs the pixelwise MLP, forward and backward (CUDA, "auto")


def _pair(**train):
    """Two trainers from the same seed on CUDA: one eager, one graphed. decay_from 0: the LR changes
    every step, which a graph must read anew."""
    cfg = dict(steps=20, decay_from=0.0, lr_g=1e-3, lr_d=4e-3, size=GPU_SIZE, **train)
    return make_trainer("cuda", **cfg), make_trainer("cuda", cuda_graph=True, **cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("mixed_precision", [False, True], ids=["fp32", "bf16"])
def test_graphed_step_matches_eager(mixed_precision, same_arithmetic):
    eager, graphed = _pair(mixed_precision=mixed_precision)
    assert graphed.graphed and not eager.graphed
    init = snapshot(eager)
    data = batches(GRAPH_WARMUP_STEPS + 4, size=GPU_SIZE)
    for i, batch in enumerate(data):
        a, b = eager.train_step(batch), graphed.train_step(batch)
        if i == GRAPH_WARMUP_STEPS:
            assert graphed.graph is not None  # captured, then replayed with new data and new LRs
            assert describe_graph(graphed.graph_status()) == f"one CUDA graph from step {i + 1}"
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=2e-3 if mixed_precision else 1e-4, abs=1e-5), (i, k)
    assert_moved_alike(init, snapshot(eager), snapshot(graphed), rel=1e-2 if mixed_precision else 1e-3)
    assert int(graphed.opt_g.state_dict()["state"][0]["step"]) == len(data)
    assert graphed.opt_g.param_groups[0]["lr"].item() == pytest.approx(eager.opt_g.param_groups[0]["lr"])


@pytest.mark.gpu
def test_graphed_step_warms_up_again_for_a_new_batch_shape(same_arithmetic):
    """Batches of 1, then of 2: the graph of the first shape is let go, the new shape runs its eager
    warm-up steps and is captured anew, and the run stays with the eager one all along."""
    eager, graphed = _pair(mixed_precision=False)
    init = snapshot(eager)
    ones = batches(GRAPH_WARMUP_STEPS + 2, size=GPU_SIZE)
    twos = batches(GRAPH_WARMUP_STEPS + 2, size=GPU_SIZE, batch=2, seed=1)
    for i, batch in enumerate(ones + twos):
        a, b = eager.train_step(batch), graphed.train_step(batch)
        assert b["G_total"] == pytest.approx(a["G_total"], rel=1e-4), i
        new_shape_steps = i - len(ones)
        if 0 <= new_shape_steps < GRAPH_WARMUP_STEPS:
            assert graphed.graph is None, i  # warming up at the new shape
    assert graphed.graph is not None and graphed._static["x"].shape[0] == 2
    assert graphed.graph_status()["captured_at_step"] == len(ones) + GRAPH_WARMUP_STEPS
    assert_moved_alike(init, snapshot(eager), snapshot(graphed), rel=1e-3)


@pytest.mark.gpu
def test_graphed_step_skips_a_non_finite_step_and_resumes(tmp_path, same_arithmetic):
    _, graphed = _pair(mixed_precision=True)
    data = batches(GRAPH_WARMUP_STEPS + 2, size=GPU_SIZE)
    for batch in data[:GRAPH_WARMUP_STEPS + 1]:
        graphed.train_step(batch)
    assert graphed.graph is not None
    bad = {k: v.clone() for k, v in data[-1].items()}
    bad["image"][0, 0, 3, 3] = float("nan")
    before = snapshot(graphed)
    with pytest.raises(NonFiniteLossError, match="The step was not applied;"):
        graphed.train_step(bad)
    after = snapshot(graphed)
    assert_same_weights(after, before, rtol=0, atol=0)
    # a checkpoint of the graphed run (device-tensor LRs) resumes into an eager trainer and a graphed one
    graphed.save(tmp_path / "state.pt")
    for cuda_graph in (False, True):
        resumed = make_trainer("cuda", size=GPU_SIZE, steps=20, decay_from=0.0, lr_g=1e-3, lr_d=4e-3,
                               cuda_graph=cuda_graph)
        resumed.load(tmp_path / "state.pt")
        for batch in data[:GRAPH_WARMUP_STEPS + 1]:
            resumed.train_step(batch)
        assert resumed.step == graphed.step + GRAPH_WARMUP_STEPS + 1


class HostReadingGenerator(torch.nn.Module):
    """The generator behind a forward that reads a value on the host: such a step cannot be captured."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, x, edges=None):
        if x.sum().item() < 0:  # a host sync: not allowed while a graph is being recorded
            raise AssertionError("one-hot input sums to a negative number")
        return self.generator(x, edges)


@pytest.mark.gpu
def test_graphed_step_that_cannot_be_captured_trains_on_eagerly(same_arithmetic):
    eager, graphed = _pair(mixed_precision=False)
    init = snapshot(eager)
    for t in (eager, graphed):
        t.g_model = HostReadingGenerator(t.generator)
    data = batches(GRAPH_WARMUP_STEPS + 3, size=GPU_SIZE)
    with pytest.warns(RuntimeWarning, match="train.cuda_graph: the step could not be captured"):
        for batch in data:
            a, b = eager.train_step(batch), graphed.train_step(batch)
            assert b["G_total"] == pytest.approx(a["G_total"], rel=1e-4)
    status = graphed.graph_status()
    assert status["requested"] and not status["active"] and status["error"] and graphed.graph is None
    assert describe_graph(status).startswith("requested; eager after a failed capture: ")
    assert graphed.step == len(data)
    assert_moved_alike(init, snapshot(eager), snapshot(graphed), rel=1e-3)
