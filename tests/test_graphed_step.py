"""The trainer's step as device work only (asap.engine.GANTrainer.update): fused Adam skipping a
non-finite step on the device, checkpoints of the earlier unfused optimiser resuming, and, on CUDA,
the whole step captured as one CUDA graph (train.cuda_graph) against the same trainer run eagerly.

The gpu tests are part of the GPU campaign's phase 1 (benchmarks/campaign/correctness.py): phase 4
trains with cuda_graph only where they passed on that device. They use synthetic data (the GPU
machine has no archive) and import nothing beyond torch and asap.
"""

import copy
import dataclasses

import pytest
import torch

from asap.config import ConfigError
from asap.engine import GRAPH_WARMUP_STEPS, NonFiniteLossError, TrainConfig, describe_graph
from asap.losses import GANLossConfig
from asap.models.asapnet import asapnet
from asap.training import TrainingRun, build_trainer, split_train_section

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


def test_step_equals_a_hand_written_adam_update():
    """The generator's first update, recomputed here: the same losses' gradients through autograd and
    Adam written out (betas (0, 0.9), bias-corrected), against what the fused optimiser did."""
    trainer = make_trainer(lr_g=1e-3, lr_d=4e-3)
    batch = batches(1)[0]
    g0 = {n: p.detach().clone() for n, p in trainer.generator.named_parameters()}
    twin = make_trainer(lr_g=1e-3, lr_d=4e-3)  # same seed: the same initial weights
    x, real = twin.inputs(batch)
    fake = twin.generator(x)
    fake_out, real_out = twin.discriminate(x, fake, real)
    from asap.losses import feature_matching_loss, hinge_g_loss
    g_total = hinge_g_loss(fake_out) + feature_matching_loss(fake_out, real_out, twin.loss.lambda_feat)
    grads = dict(zip([n for n, _ in twin.generator.named_parameters()],
                     torch.autograd.grad(g_total, list(twin.generator.parameters()), allow_unused=True)))
    losses = trainer.train_step(batch)
    assert losses["G_total"] == pytest.approx(g_total.item(), rel=1e-6)
    eps, beta2, lr = 1e-8, 0.9, 1e-3
    for name, p in trainer.generator.named_parameters():
        g = grads[name] if grads[name] is not None else torch.zeros_like(p)
        m, v = g, (1 - beta2) * g * g                      # beta1 = 0: m is the gradient
        expected = g0[name] - lr * m / ((v / (1 - beta2)).sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)


def _unfused_step(old, batch) -> None:
    """The step as it was before the optimisers were fused: plain (foreach) Adam, no found_inf."""
    from asap.losses import feature_matching_loss, hinge_d_loss, hinge_g_loss

    old.set_learning_rates()
    x, real = old.inputs(batch)
    fake = old.g_model(x)
    fake_out, real_out = old.discriminate(x, fake, real)
    old.opt_g.zero_grad(set_to_none=True)
    (hinge_g_loss(fake_out) + feature_matching_loss(fake_out, real_out, old.loss.lambda_feat)).backward()
    old.opt_g.step()
    fake_out, real_out = old.discriminate(x, fake.detach(), real)
    old.opt_d.zero_grad(set_to_none=True)
    hinge_d_loss(real_out, fake_out).backward()
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
