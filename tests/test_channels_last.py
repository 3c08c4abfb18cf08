"""train.perceptual_channels_last: the perceptual network (VGG16/19 trunk) in the channels-last memory
format. The same function in another layout: from the same seed, the step it computes must be the
one without it (to rounding); it must really change the layout (else that check is vacuous), and keep
G's and D's (their InstanceNorms would undo it); it is not part of a run's identity. On the CPU here
(oneDNN runs channels-last convolutions too); the GPU campaign's phase 3 times it
(benchmarks/training.py, "ours_channels_last")."""

import dataclasses

import pytest
import torch

from asap.engine import TrainConfig
from test_graphed_step import TINY_G, batches, make_trainer

CL = torch.channels_last


def conv_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def only_channels_last(t: torch.Tensor) -> bool:
    """Laid out channels-last and not also NCHW-contiguous (a tensor with one channel or one pixel is both)."""
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def test_the_switch_changes_the_perceptual_layout_only():
    trainer = make_trainer(perceptual="hed-vgg16", perceptual_channels_last=True)
    assert all(only_channels_last(w) for w in conv_weights(trainer.perceptual))
    x, real = trainer.inputs(batches(1)[0])
    with torch.no_grad():
        fake = trainer.generator(x)
        features = trainer.perceptual.network(fake.contiguous(memory_format=CL))
        fake_out, _ = trainer.discriminate(x, fake, real)
    assert all(only_channels_last(f) for f in features)  # every tap, through every layer
    # G and D are left alone: an InstanceNorm returns NCHW whatever it is given (which is why)
    assert not any(only_channels_last(p) for p in [*trainer.generator.parameters(), *trainer.discriminator.parameters()])
    assert not any(only_channels_last(f) for scale in fake_out for f in scale)
    norm = torch.nn.InstanceNorm2d(16)(torch.randn(2, 16, 8, 8).contiguous(memory_format=CL))
    assert norm.is_contiguous() and not norm.is_contiguous(memory_format=CL)
    # off (the default): nothing is channels-last
    plain = make_trainer(perceptual="hed-vgg16")
    assert not any(only_channels_last(w) for w in conv_weights(plain.perceptual))


def generator_gradient(trainer, batch) -> torch.Tensor:
    """G's gradient of its whole loss (GAN, feature matching, perceptual) at the trainer's weights, flat."""
    x, real = trainer.inputs(batch)
    with trainer.autocast():  # bf16 on CUDA where the run is mixed precision; a no-op on the CPU
        fake = trainer.g_model(x)
        fake_out, real_out = trainer.discriminate(x, fake, real)
        g_total, _ = trainer.generator_loss(fake, real, fake_out, real_out)
    params = [p for p in trainer.generator.parameters() if p.requires_grad]
    grads = torch.autograd.grad(g_total, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def test_channels_last_computes_the_same_step():
    """From one seed: G's gradient through a channels-last VGG is the NCHW one to fp32 rounding (and
    not the gradient without the perceptual term: that term is in it); five steps give the same losses.
    (Not the weights after several steps: a GAN's Adam with beta1 0 turns rounding-level differences
    of near-zero gradients into LR-sized ones, and they grow from step to step.)"""
    cfg = dict(lr_g=1e-3, lr_d=4e-3)
    plain = make_trainer(perceptual="hed-vgg16", **cfg)
    cl = make_trainer(perceptual="hed-vgg16", perceptual_channels_last=True, **cfg)
    off = make_trainer(perceptual="off", **cfg)
    batch = batches(1)[0]
    want, got, without = (generator_gradient(t, batch) for t in (plain, cl, off))
    assert (got - want).norm() <= 1e-5 * want.norm()
    assert (without - want).norm() > 0.1 * want.norm()
    for batch in batches(5):
        a, b = plain.train_step(batch), cl.train_step(batch)
        assert a["G_vgg"] > 0
        for name in ("G_total", "G_gan", "G_feat", "G_vgg", "D"):
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-5), name


def test_a_run_differing_only_in_the_layout_has_the_same_identity():
    from asap.losses import GANLossConfig
    from asap.models.asapnet import asapnet
    from asap.training import TrainingRun

    run = TrainingRun(name="t", arch="asapnet", generator=asapnet(5, 32, 32, **TINY_G).config.to_dict(),
                      train=TrainConfig(), loss=GANLossConfig(perceptual="off"), dataset="d", data_root="")
    assert run.digest() == dataclasses.replace(run, train=TrainConfig(perceptual_channels_last=True)).digest()
    assert run.digest() != dataclasses.replace(run, train=TrainConfig(ndf=16)).digest()  # the check can fail


def test_a_bad_value_is_refused():
    with pytest.raises(ValueError, match="train perceptual_channels_last must be true or false, got 'yes'"):
        TrainConfig(perceptual_channels_last="yes")


@pytest.mark.gpu
@pytest.mark.parametrize("mixed_precision", [False, True], ids=["fp32", "bf16"])
def test_channels_last_on_cuda_computes_the_same_step(mixed_precision):
    """Phase 1 of the GPU campaign (cuDNN's NHWC kernels are not oneDNN's): G's gradient through a
    channels-last VGG against the NCHW one, fp32 with TF32 off (1e-4 of its norm: only the order of
    sums differs) and bf16 autocast (5e-2: two roundings of every activation); the features really
    channels-last on the device; three steps' losses alike."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cfg = dict(device="cuda", perceptual="hed-vgg16", mixed_precision=mixed_precision, lr_g=1e-3, lr_d=4e-3)
        plain, cl = make_trainer(**cfg), make_trainer(perceptual_channels_last=True, **cfg)
        with torch.no_grad(), cl.autocast():
            features = cl.perceptual.network(torch.rand(1, 3, 32, 32, device="cuda").contiguous(memory_format=CL))
        assert all(only_channels_last(f) for f in features)
        batch = batches(1)[0]
        want, got = generator_gradient(plain, batch), generator_gradient(cl, batch)
        rel = 5e-2 if mixed_precision else 1e-4
        assert (got - want).norm() <= rel * want.norm(), ((got - want).norm().item(), want.norm().item())
        for batch in batches(3):
            a, b = plain.train_step(batch), cl.train_step(batch)
            assert b["G_vgg"] == pytest.approx(a["G_vgg"], rel=rel) and b["G_total"] == pytest.approx(a["G_total"], rel=rel)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
