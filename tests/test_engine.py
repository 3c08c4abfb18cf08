"""In-process GAN training: LR schedule, data order, exact resume, overfitting one real facades pair,
and a non-finite loss stopping the run without touching the weights."""

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asap.engine import NonFiniteLossError, TrainConfig, batch_plan, collate, linear_decay, train_loop
from asap.losses import GANLossConfig
from asap.models.asapnet import asapnet
from asap.training import TrainingRun, build_trainer

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "CMP_facade_DB_base.zip"
TINY_G = dict(lr_width=8, lr_max_width=16, lr_depth=1, mlp_width=16)


def facades_pair(stem: str, size: int):
    """One real pair decoded here with PIL (label nearest, photo bicubic), independent of asap.data."""
    with zipfile.ZipFile(ARCHIVE) as zf:
        label = Image.open(io.BytesIO(zf.read(f"base/{stem}.png")))
        photo = Image.open(io.BytesIO(zf.read(f"base/{stem}.jpg"))).convert("RGB")
    label = np.array(label.resize((size, size), Image.NEAREST))
    photo = np.asarray(photo.resize((size, size), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    return {"label": torch.from_numpy(label.astype(np.int64)), "image": torch.from_numpy(photo).permute(2, 0, 1)}


def make_trainer(num_classes=13, size=64, steps=10, perceptual="off", **train):
    """The trainer every path uses (asap.training.build_trainer), for a tiny ASAP-Net."""
    cfg = TrainConfig(steps=steps, ndf=8, d_layers=2, log_every=1, checkpoint_every=1000, sample_every=1000, **train)
    run = TrainingRun(name="test", arch="asapnet", generator=asapnet(num_classes, size, size, **TINY_G).config.to_dict(),
                      train=cfg, loss=GANLossConfig(perceptual=perceptual), dataset="facades", data_root="")
    return build_trainer(run)


def test_linear_decay_hand_values():
    f = lambda progress: linear_decay(progress, 0.5)  # noqa: E731
    assert [f(0), f(0.49), f(0.5), f(0.75), f(1.0)] == [1.0, 1.0, 1.0, 0.5, 0.0]
    assert f(0.99) == pytest.approx(0.02)
    assert linear_decay(0.9, 1.0) == 1.0


def test_learning_rate_follows_the_larger_of_the_step_and_time_fractions():
    trainer = make_trainer(steps=100, time_budget_s=10.0, lr_g=1e-4, lr_d=4e-4)
    for step, elapsed, factor in [(0, 0.0, 1.0), (25, 7.5, 0.5), (75, 2.0, 0.5), (10, 9.0, 0.2), (40, 10.0, 0.0)]:
        trainer.step, trainer.elapsed_s = step, elapsed
        trainer.set_learning_rates()
        assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(1e-4 * factor), (step, elapsed)
        assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(4e-4 * factor), (step, elapsed)
    trainer.step, trainer.elapsed_s = 99, 9.99
    assert not trainer.done()
    trainer.elapsed_s = 10.0
    assert trainer.done() and trainer.stopped_by() == "time_budget"
    trainer.step, trainer.elapsed_s = 100, 1.0
    assert trainer.done() and trainer.stopped_by() == "steps"


@pytest.mark.parametrize("value", [0, -5, float("inf"), "60"])
def test_time_budget_must_be_positive_seconds(value):
    from asap.config import ConfigError
    with pytest.raises(ConfigError, match=r"train.time_budget_s must be null \(off\) or a number of seconds > 0"):
        TrainConfig(time_budget_s=value)


def test_batch_plan_covers_each_epoch_once_across_ranks():
    n, bs, world = 10, 2, 2
    per_epoch = n // (bs * world)  # 2 steps per epoch, 2 images dropped
    for epoch in range(3):
        seen = []
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            for rank in range(world):
                seen += batch_plan(step, n, bs, seed=3, rank=rank, world=world)[0]
        assert len(seen) == len(set(seen)) == per_epoch * bs * world
    assert batch_plan(5, n, bs, 3, 1, 2) == batch_plan(5, n, bs, 3, 1, 2)  # a pure function


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    data = [facades_pair(f"cmp_b{i:04d}", 32) for i in range(61, 65)]
    straight = make_trainer(size=32, steps=4)
    train_loop(straight, data, printer=lambda *a, **k: None)

    # two steps, save, and continue in a brand-new trainer (a new process would do the same)
    first = make_trainer(size=32, steps=4)
    for _ in range(2):
        idx, flips = batch_plan(first.step, len(data), 1, first.config.seed)
        first.train_step(collate(data, idx, flips))
    first.save(tmp_path / "state.pt")
    resumed = make_trainer(size=32, steps=4)
    resumed.load(tmp_path / "state.pt")
    assert resumed.step == 2
    train_loop(resumed, data, printer=lambda *a, **k: None)

    for (name, a), b in zip(straight.generator.state_dict().items(), resumed.generator.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    for a, b in zip(straight.discriminator.parameters(), resumed.discriminator.parameters()):
        torch.testing.assert_close(a, b)
    assert straight.opt_g.state_dict()["state"][0]["step"] == resumed.opt_g.state_dict()["state"][0]["step"] == 4
    assert straight.opt_g.param_groups[0]["lr"] == resumed.opt_g.param_groups[0]["lr"]


def test_loop_trains_each_step_on_its_planned_batch_while_reading_the_next():
    """The loop reads step k+1's batch while step k runs on the device: every step must still get
    batch_plan's batch for its own number, and a sample its own step's batch."""
    data = [facades_pair(f"cmp_b{i:04d}", 32) for i in range(61, 66)]
    trainer = make_trainer(size=32, steps=6)
    launched, sampled = [], []
    launch = trainer.launch

    def recording_launch(batch):
        launched.append((trainer.step, batch["label"].clone()))
        return launch(batch)

    trainer.launch = recording_launch
    trainer.config = dataclasses.replace(trainer.config, sample_every=1)
    train_loop(trainer, data, on_sample=lambda step, batch: sampled.append((step, batch["label"].clone())),
               printer=lambda *a, **k: None)
    assert [s for s, _ in launched] == list(range(6)) and [s for s, _ in sampled] == list(range(1, 7))
    for (step, got), (after, sample) in zip(launched, sampled):
        want = collate(data, *batch_plan(step, len(data), 1, trainer.config.seed))["label"]
        assert torch.equal(got, want) and torch.equal(sample, want), step


def test_in_process_loop_overfits_one_real_pair():
    """The paper's objective (hinge + feature matching + perceptual) on one real pair, with a higher
    learning rate than the paper's so 100 steps suffice."""
    pair = facades_pair("cmp_b0061", 64)
    trainer = make_trainer(size=64, steps=100, perceptual="hed-vgg16", flip=False, decay_from=1.0,
                           lr_g=1e-3, lr_d=4e-3)

    def distances():
        with torch.no_grad():
            trainer.generator.eval()
            out = trainer.generator(pair["label"][None])
            trainer.generator.train()
            perceptual = trainer.perceptual(out, pair["image"][None]).item()
        return (out[0] - pair["image"]).abs().mean().item(), perceptual

    l1_before, vgg_before = distances()
    train_loop(trainer, [pair], printer=lambda *a, **k: None)
    l1_after, vgg_after = distances()
    # stated factor: both the L1 and the perceptual distance to the training photo fall >= 1.6x
    # (measured: 0.386 -> 0.203 and 1.16 -> 0.61)
    assert l1_after < l1_before / 1.6, (l1_before, l1_after)
    assert vgg_after < vgg_before / 1.6, (vgg_before, vgg_after)


def test_non_finite_loss_stops_without_applying_the_step():
    trainer = make_trainer(size=32, steps=3)
    bad = facades_pair("cmp_b0061", 32)
    bad["image"] = bad["image"].clone()
    bad["image"][0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in trainer.generator.parameters()]
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 0"):
        train_loop(trainer, [bad], printer=lambda *a, **k: None)
    assert trainer.step == 0
    for a, b in zip(before, trainer.generator.parameters()):
        assert torch.equal(a, b)
