"""The training benchmark's two steps compute the same thing, and the command writes its JSON."""

import json

import pytest
import torch

from asap.models.pixelwise import pixelwise_mlp
from benchmarks.training import authors_style_mlp, main


def test_authors_style_mlp_equals_ours():
    torch.manual_seed(0)
    S, channels = 8, [5 + 12, 16, 16, 3]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    x, params = torch.randn(2, 5, 16, 32), torch.randn(2, P, 2, 4) * 0.3
    torch.testing.assert_close(authors_style_mlp(x, params, channels, S), pixelwise_mlp(x, params, channels, S),
                               atol=1e-5, rtol=1e-5)


def test_training_benchmark_writes_json(tmp_path):
    out = tmp_path / "training.json"
    main(["--sizes", "64x64", "--iters", "1", "--warmup", "0", "--lr-max-width", "16", "--ndf", "8",
          "--perceptual", "off", "--out", str(out)])
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert row["size"] == "64x64" and row["max_abs_output_diff"] < 1e-5
    assert row["ours"]["images_per_s"] > 0 and row["authors_way"]["images_per_s"] > 0
    pixelwise = report["pixelwise"][0]  # the MLP alone, both autograd layouts (the kernel needs CUDA)
    assert pixelwise["size"] == "64x64" and pixelwise["S"] == 4 and set(pixelwise["ms"]) == {"reference", "authors_way"}
    theirs = row["authors_way"]
    # the row's share and bound follow from its own medians (two medians measured apart: on a busy CPU
    # one timed step of the generator alone can outlast one of the whole step, and then there is no bound)
    share = theirs["generator_s_median"] / theirs["step_s_median"]
    assert theirs["generator_s_median"] > 0 and row["authors_generator_share"] == pytest.approx(share)
    assert row["generator_alone_bound"] == (pytest.approx(1 / (1 - share)) if share < 1 else None)
    assert row["generator_speedup"] == pytest.approx(theirs["generator_s_median"] / row["ours"]["generator_s_median"])
    # the arithmetic ceiling: both steps counted, read against the matmul rate measured in the same run
    peak = report["matmul_peak"]["bf16"]
    assert peak["dtype"] == "float32"  # the CPU steps run in fp32 whatever the precision's name
    assert peak["tflops"] == pytest.approx(2 * peak["n"] ** 3 / (peak["ms"] / 1e3) / 1e12)
    assert row["flop_ratio"] == pytest.approx(row["flops"]["authors_way"] / row["flops"]["ours"])
    assert row["flop_ratio"] > 1
    assert theirs["fraction_of_matmul_peak"] == pytest.approx(theirs["tflops_per_s"] / peak["tflops"])


def test_flop_count_of_a_convolution_matches_the_hand_count():
    """count_flops counts what ran: a 3x3 conv forward is 2 * B * Cout * H * W * Cin * 9; its backward
    adds the same again for the weight gradient and again for the input gradient only where the input
    needs one (a label map does not)."""
    from benchmarks.roofline import count_flops

    B, cin, cout, H, W = 2, 5, 7, 6, 10
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    forward = 2 * B * cout * H * W * cin * 9
    x = torch.randn(B, cin, H, W)
    assert count_flops(lambda: conv(x)) == forward
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward            # weight gradient only
    xg = x.clone().requires_grad_()
    assert count_flops(lambda: conv(xg).sum().backward()) == 3 * forward           # and the input's


def test_the_authors_step_does_one_generator_forward_and_two_discriminator_passes_more():
    """The steps' counted arithmetic differs by exactly what the authors' step runs twice: G's forward
    (the D step's fake, under no_grad) and a forward of D on fake and real, plus D's weight gradients
    in their G step (for a conv, as many FLOPs as its forward). Counted here piece by piece on the
    same networks: G's forward alone and D's forward alone."""
    from asap.training import build_trainer
    from benchmarks.roofline import count_flops
    from benchmarks.training import AuthorsStep, authors_wrap

    batch = _batch()
    steps = {}
    for name, kwargs in (("ours", {}), ("authors", {"wrap": authors_wrap, "trainer_class": AuthorsStep})):
        trainer = build_trainer(_tiny_run(), "cpu", **kwargs)
        steps[name] = count_flops(lambda: trainer.train_step(batch))
    x, real = trainer.inputs(batch)
    with torch.no_grad():
        g_forward = count_flops(lambda: trainer.g_model(x))
        fake = trainer.g_model(x)
        d_forward = count_flops(lambda: trainer.discriminate(x, fake, real))
    assert g_forward > 0 and d_forward > 0
    assert steps["authors"] - steps["ours"] == g_forward + 2 * d_forward


def _tiny_run():
    from benchmarks.training import TrainBenchSettings, make_run

    settings = TrainBenchSettings(iters=1, warmup=0, lr_max_width=16, ndf=8, perceptual="off")
    return make_run((32, 32), 2, "fp32", settings)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return {"label": torch.randint(1, 13, (2, 32, 32), generator=gen),
            "image": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1}


def test_the_authors_step_runs_g_and_d_twice_where_ours_runs_them_once():
    """The authors' trainer's step (AuthorsStep): G forward twice (the D step generates the fake again),
    D forward twice, D's weight gradients twice (their G step's backward computes them as well) and
    G's once; our step runs each forward once and computes each weight gradient once."""
    from op_counts import ConvCounter, conv_count

    from asap.training import build_trainer
    from benchmarks.training import AuthorsStep, authors_wrap

    counts = {}
    for name, kwargs in (("ours", {}), ("authors", {"wrap": authors_wrap, "trainer_class": AuthorsStep})):
        trainer = build_trainer(_tiny_run(), "cpu", **kwargs)
        g, d = conv_count(trainer.generator), conv_count(trainer.discriminator)
        x, real = trainer.inputs(_batch())
        with ConvCounter() as counter:
            trainer.update(x, real)
        counts[name] = (counter.forward, counter.weight_grads)
    assert counts["ours"] == (g + d, g + d)
    assert counts["authors"] == (2 * g + 2 * d, g + 2 * d)


def test_the_authors_step_trains_d_on_the_fake_of_the_updated_generator():
    """Their D step generates the fake again after the G update: its D loss is D's hinge loss on the
    updated generator's fake, recomputed here on a twin (the same seeded weights) whose generator is
    given the updated weights, D having run forward twice as in their step (its spectral norms advance
    once per forward). Not the fake from before the update (ours): that loss differs."""
    from asap.losses import hinge_d_loss
    from asap.training import build_trainer
    from benchmarks.training import AuthorsStep, authors_wrap

    trainer = build_trainer(_tiny_run(), "cpu", wrap=authors_wrap, trainer_class=AuthorsStep)
    twin = build_trainer(_tiny_run(), "cpu")
    batch = _batch()
    losses = trainer.train_step(batch)
    x, real = twin.inputs(batch)
    with torch.no_grad():
        old_fake = twin.generator(x)
        twin.discriminate(x, old_fake, real)  # the G step's forward of D: one power iteration
        twin.generator.load_state_dict(trainer.generator.state_dict())
        fake_out, real_out = twin.discriminate(x, twin.generator(x), real)
        d_loss = hinge_d_loss(real_out, fake_out).item()
        twin.discriminator.eval()  # spectral norms held (no third power iteration): only the fake differs
        fake_out, real_out = twin.discriminate(x, old_fake, real)
        d_loss_old_fake = hinge_d_loss(real_out, fake_out).item()
    assert losses["D"] == pytest.approx(d_loss, rel=1e-6)
    assert d_loss_old_fake != pytest.approx(d_loss, rel=1e-6)  # the check above tells the two apart


def test_authors_way_trains_the_generator_build_trainer_made():
    """The authors' layout is the same trainer (asap.training.build_trainer) with a shared-weight view
    of its generator: one step updates the generator's own parameters, and afterwards both layouts
    still give the same output."""
    from benchmarks.training import AuthorsWay, TrainBenchSettings, make_run, step_times
    from asap.training import build_trainer
    from benchmarks.training import authors_wrap

    settings = TrainBenchSettings(iters=1, warmup=0, lr_max_width=16, ndf=8, perceptual="off")
    run = make_run((32, 32), 2, "fp32", settings)
    trainer = build_trainer(run, "cpu", wrap=authors_wrap)
    assert isinstance(trainer.g_model, AuthorsWay) and trainer.g_model.generator is trainer.generator
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    batch = {"label": torch.randint(1, 13, (2, 32, 32)), "image": torch.rand(2, 3, 32, 32) * 2 - 1}
    trainer.train_step(batch)
    changed = [k for k, v in trainer.generator.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the authors' step did not update the generator"
    with torch.no_grad():
        lbl = batch["label"][:1]
        torch.testing.assert_close(AuthorsWay(trainer.generator)(lbl), trainer.generator(lbl), atol=1e-5, rtol=0)
    # and the two ways start from the same weights (seeded build)
    fresh = build_trainer(run, "cpu")
    assert all(torch.equal(v, before[k]) for k, v in fresh.generator.state_dict().items())
    got = step_times(run, (32, 32), False, torch.device("cpu"), settings, check_layouts=True)
    assert len(got["times"]) == 1 and len(got["generator_times"]) == 1
    assert not got["amp"] and got["max_diff"] < 1e-5


def test_a_failing_graphed_way_costs_its_own_numbers_not_the_rows(monkeypatch):
    """Phase 3 times ours as one CUDA graph beside the eager ways; when that new way raises, the row
    keeps ours and the authors' way and says what failed (a fault injected in place of the timing)."""
    import benchmarks.training as bt

    def timing(run, size, authors, device, settings, deadline=None, check_layouts=False, graphed=False,
               count=False, channels_last=False):
        if graphed:
            raise RuntimeError("capture failed")
        return {"times": [0.2 if authors else 0.1], "amp": False, "max_diff": None, "generator_times": [0.05],
                "fused_mlp": False, "graph": {}, "flops": (3e9 if authors else 2e9) if count else None}

    monkeypatch.setattr(bt, "step_times", timing)
    cuda = type("Device", (), {"type": "cuda"})()  # the ways list asks only for the device's type
    row = bt.measure((32, 32), 1, "bf16", bt.TrainBenchSettings(iters=1, warmup=0), cuda, graphed=True,
                     log=lambda *a: None)
    assert row["ours_graphed"] == {"error": "RuntimeError: capture failed"}
    assert row["speedup"] == row["speedup_best"] == 2.0 and "speedup_graphed" not in row
    assert row["flop_ratio"] == 1.5 and row["ours"]["tflops_per_s"] == pytest.approx(2e9 / 0.1 / 1e12)


def test_the_channels_last_way_runs_ours_with_a_channels_last_vgg(tmp_path, monkeypatch):
    """--channels-last times ours a third time with train.perceptual_channels_last: its row entry is a
    timing of that trainer (its VGG's weights channels-last, the flag recorded), its speed-up is its
    images/s over the authors' way's, the best of ours is the fastest, and it counts no FLOPs of its
    own (the same arithmetic as ours). With the perceptual loss off there is no such way."""
    import benchmarks.training as bt

    seen = []
    real_step_times = bt.step_times

    def spy(run, *args, **kwargs):
        seen.append((run.train.perceptual_channels_last, kwargs.get("channels_last")))
        return real_step_times(run, *args, **kwargs)

    out = tmp_path / "training.json"
    monkeypatch.setattr(bt, "step_times", spy)
    main(["--sizes", "32x32", "--iters", "1", "--warmup", "0", "--lr-max-width", "16", "--ndf", "8",
          "--perceptual", "hed-vgg16", "--channels-last", "--out", str(out)])
    assert seen == [(False, False), (False, True), (False, False)]  # ours, ours channels-last, the authors'
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert report["settings"]["channels_last"] is True
    cl, theirs = row["ours_channels_last"], row["authors_way"]
    assert cl["step_s_median"] > 0 and cl["images_per_s"] == pytest.approx(1 / cl["step_s_median"])  # batch 1
    assert row["speedup_channels_last"] == pytest.approx(cl["images_per_s"] / theirs["images_per_s"])
    assert row["speedup_best"] == pytest.approx(max(row["speedup"], row["speedup_channels_last"]))
    assert set(row["flops"]) == {"counted", "ours", "authors_way"}
    assert cl["tflops_per_s"] == pytest.approx(row["flops"]["ours"] / cl["step_s_median"] / 1e12)
    off = bt.measure((32, 32), 1, "bf16", bt.TrainBenchSettings(iters=1, warmup=0, lr_max_width=16, ndf=8,
                                                                  perceptual="off"),
                     torch.device("cpu"), channels_last=True, log=lambda *a: None)
    assert "ours_channels_last" not in off and "speedup_channels_last" not in off


def test_step_times_builds_the_channels_last_trainer(monkeypatch):
    """The timed trainer itself has the flag and a channels-last VGG (not only the run's record)."""
    import benchmarks.training as bt
    from asap import engine

    built = []
    real_init = engine.GANTrainer.__init__

    def record(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)

    settings = bt.TrainBenchSettings(iters=1, warmup=0, lr_max_width=16, ndf=8, perceptual="hed-vgg16")
    run = bt.make_run((32, 32), 1, "bf16", settings)
    monkeypatch.setattr(engine.GANTrainer, "__init__", record)
    bt.step_times(run, (32, 32), False, torch.device("cpu"), settings, channels_last=True)
    (trainer,) = built
    assert trainer.config.perceptual_channels_last
    weights = [m.weight for m in trainer.perceptual.modules() if isinstance(m, torch.nn.Conv2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w in weights)
