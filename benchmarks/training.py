"""Training-throughput benchmark: images/s of the in-process GAN step (asap.engine), ours vs the same
step written the authors' way, measured in the same run.

    python -m benchmarks.training --out metrics/training-cpu.json                        # CPU, 256x256
    python -m benchmarks.training --device cuda --sizes 256x256,512x512 --batches 1,8 \\
        --precisions bf16,fp32 --lr-max-width 1024 --ndf 64 --cuda-graph --channels-last \\
        --out metrics/training-h200.json

"The authors' way" (github.com/tamarott/ASAPNet, described, not copied) is their generator's layout
and their step. Layout: the label map enters as a full-resolution one-hot tensor, the positional
encoding is concatenated at full resolution, and the MLP cuts tiles with ``unfold`` + ``permute`` and
folds them back with ``permute`` + ``view``. Ours builds the encoding for one tile only and broadcasts
it, and splits tiles with one ``rearrange``. Step (their trainer, SPADE's): a G step (G forward, D
forward on fake and real with D's weights in the graph, so its backward computes D's weight gradients
too, which the D step then zeroes; G update), then a D step that generates the fake again under
no_grad with the updated G and runs D forward again (``AuthorsStep``). Ours (asap.engine) runs G and
D forward once and takes both updates from that pass, D's weight gradients from the D loss only.

Both trainers come from ``asap.training.build_trainer``, the set-up the train stage and the in-process
trainer use (generator, multi-scale discriminator, perceptual network, fused Adam optimisers); the
authors' way swaps its generator's forward through build_trainer's ``wrap`` hook for ``AuthorsWay``,
which runs the authors' layout on the very same parameters, and its step through ``trainer_class``.
So both run the same GAN objective (hinge + feature matching + perceptual) with the same weights.
The generator's forward + backward is also timed alone: there only the layout differs. Precision:
"bf16" is the trainer's bf16 autocast on CUDA (TrainConfig.mixed_precision), "fp32" switches it off
(and TF32 with it); on the CPU both are fp32.

Imports only torch and asap: runs on the GPU machine without Ray, DVC or MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from asap.engine import GRAPH_WARMUP_STEPS, GANTrainer, TrainConfig, describe_graph
from asap.losses import GANLossConfig, hinge_d_loss
from asap.models.asapnet import ASAPNetConfig, ASAPNetGenerator, default_downsampling, fused_mlp_default
from asap.models.pixelwise import LEAKY_SLOPE, mlp_layout, num_mlp_params, pixelwise_mlp, positional_encoding
from asap.training import TrainingRun, build_trainer
from benchmarks.roofline import count_flops, matmul_peak

PRECISIONS = ("bf16", "fp32")
OUR_WAYS = ("ours", "ours_graphed", "ours_channels_last")  # ours eager, as one CUDA graph, VGG channels-last
AUTHORS_LAYOUT_AND_STEP = "their layout and step"  # what a row's "authors_way" ran ("authors_way_runs")
FLOPS_COUNTED = ("one more step of each way after its timings, under torch.utils.flop_counter: matmuls and "
                 "convolutions, forward and backward, as they ran; ours with the pixelwise MLP through its "
                 "reference layers (the counter cannot see into the fused kernel, whose backward also "
                 "recomputes the forward)")


def authors_style_mlp(x: torch.Tensor, params: torch.Tensor, channels: list[int], S: int) -> torch.Tensor:
    """Pixelwise MLP as the authors' code does it: full-resolution encoding, unfold into tiles."""
    B, _, H, W = x.shape
    h, w = H // S, W // S
    enc = positional_encoding(H, W, S, device=x.device, dtype=x.dtype).expand(B, -1, -1, -1)
    x = torch.cat([x, enc], 1)                                      # (B, C + E, H, W) at full resolution
    tiles = x.unfold(2, S, S).unfold(3, S, S)                       # (B, C, h, w, S, S)
    out = tiles.permute(0, 2, 3, 4, 5, 1).reshape(B, h, w, S * S, x.shape[1])
    layers = mlp_layout(channels)
    for i, layer in enumerate(layers):
        wgt = params[:, layer.weight].permute(0, 2, 3, 1).reshape(B, h, w, layer.nci, layer.nco)
        bias = params[:, layer.bias].permute(0, 2, 3, 1).reshape(B, h, w, 1, layer.nco)
        out = torch.matmul(out, wgt) + bias
        out = F.leaky_relu(out, LEAKY_SLOPE) if i < len(layers) - 1 else torch.tanh(out)
    out = out.reshape(B, h, w, S, S, channels[-1]).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(B, channels[-1], H, W)


class AuthorsWay(nn.Module):
    """An ASAP-Net generator's own modules (shared, not copied) run with the authors' input path and
    MLP layout: the optimiser built for the generator updates exactly what this forward uses."""

    def __init__(self, generator: ASAPNetGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, x, edges=None):
        g, c = self.generator, self.generator.config
        x = g.encode(x, edges)                                      # one-hot (B, C, H, W)
        params = g.tile_params(x)
        if params.shape[2:] == (1, 1):
            params = params.expand(-1, -1, x.shape[2] // c.downsampling, x.shape[3] // c.downsampling)
        return authors_style_mlp(x[:, :c.hr_in_channels], params, c.mlp_channels, c.downsampling)


class AuthorsStep(GANTrainer):
    """The authors' training step (their trainer's two calls, SPADE's), on build_trainer's networks and
    fused optimisers, with the same device-side skip of a non-finite update as ours."""

    def update(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        # G step: D's weights stay in the graph (their backward computes D's weight gradients as well)
        with self.autocast():
            fake = self.g_model(x)
            fake_out, real_out = self.discriminate(x, fake, real)
            g_total, g_losses = self.generator_loss(fake, real, fake_out, real_out)
        g_skip = self.not_finite(g_losses)
        self.opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_g.found_inf = g_skip
        self.opt_g.step()
        # D step: the fake again, from the updated G, without a graph; D forward again
        with self.autocast():
            with torch.no_grad():
                fake = self.g_model(x)
            fake_out, real_out = self.discriminate(x, fake.detach(), real)
            d_loss = hinge_d_loss(real_out, fake_out)
        d = d_loss.detach().float().reshape(1)
        d_skip = torch.maximum(g_skip, self.not_finite(d))
        self.opt_d.zero_grad(set_to_none=True)  # drops the D gradients of the G step
        d_loss.backward()
        self.opt_d.found_inf = d_skip
        self.opt_d.step()
        return torch.cat([g_losses, d, g_skip.reshape(1), d_skip.reshape(1)])


def authors_wrap(module: nn.Module) -> nn.Module:
    """build_trainer's ``wrap`` hook: the generator goes through AuthorsWay, the discriminator as is."""
    return AuthorsWay(module) if isinstance(module, ASAPNetGenerator) else module


# ----------------------------------------------------------------------------------------------
# Settings and one measurement
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainBenchSettings:
    """What one training-step measurement runs (CLI flags of the same names)."""
    iters: int = 5                  # timed steps
    warmup: int = 2                 # untimed steps first (cuDNN autotuning, allocator growth, lazy init)
    num_classes: int = 13           # facades: 12 labels + the unused 0
    lr_max_width: int = 256         # paper: 1024
    ndf: int = 32                   # paper: 64
    perceptual: str = "auto"        # auto | vgg19 | hed-vgg16 | off (asap/weights.py)
    seed: int = 0

    def __post_init__(self):
        if self.iters < 1 or self.warmup < 0:
            raise ValueError(f"iters must be >= 1 and warmup >= 0, got iters={self.iters}, warmup={self.warmup}")


def make_run(size: tuple[int, int], batch: int, precision: str, settings: TrainBenchSettings) -> TrainingRun:
    """The TrainingRun both ways train: ASAP-Net for ``size`` (S from Sec. 3.2), the params.yaml recipe."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    h, w = size
    config = ASAPNetConfig(num_classes=settings.num_classes, downsampling=default_downsampling(h, w),
                           lr_max_width=settings.lr_max_width)
    config.check_size(h, w)
    steps = settings.warmup + settings.iters
    train = TrainConfig(steps=steps, batch_size=batch, ndf=settings.ndf, seed=settings.seed,
                        mixed_precision=precision == "bf16", log_every=steps, checkpoint_every=steps,
                        sample_every=steps)
    return TrainingRun(name="bench", arch="asapnet", generator=config.to_dict(), train=train,
                       loss=GANLossConfig(perceptual=settings.perceptual), dataset=f"synthetic-{h}x{w}",
                       data_root="")


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def fp32_mode(precision: str, device: torch.device):
    """"fp32" means fp32 on CUDA: TF32 off for convolutions and matmuls (PyTorch lets cuDNN use TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda" and precision == "fp32":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _timed(fn, n: int, warmup: int, device: torch.device, deadline: float | None) -> list[float]:
    """Seconds of each of ``n`` synchronised calls of ``fn`` after ``warmup`` untimed ones; fewer once
    ``deadline`` (perf_counter) has passed (at least one is timed)."""
    times = []
    for i in range(warmup + n):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if deadline is not None and time.perf_counter() > deadline and times:
            break
    return times


def step_times(run: TrainingRun, size: tuple[int, int], authors: bool, device: torch.device,
               settings: TrainBenchSettings, deadline: float | None = None,
               check_layouts: bool = False, graphed: bool = False, count: bool = False,
               channels_last: bool = False) -> dict:
    """Seconds per timed train_step (synchronised) of the trainer build_trainer makes for ``run``;
    ``authors`` swaps in the authors' generator layout. Random labels and images (the step's cost does
    not depend on them). Stops early, returning fewer times, once ``deadline`` (perf_counter) passes.
    Returns {"times", "amp": whether bf16 autocast ran, "max_diff": with ``check_layouts`` the largest
    difference between the two layouts' outputs on the trainer's own initial generator,
    "generator_times": seconds of the generator's forward + backward alone, the part of the step the
    layout changes (the trainer's own generator module and autocast; a fixed random dL/d(image)),
    "fused_mlp": whether ours ran the pixelwise MLP in the fused kernel, "graph": the trainer's
    graph_status(), "flops": with ``count`` the FLOPs of one more step, counted (``FLOPS_COUNTED``)}.
    ``graphed``: the step replayed as one CUDA graph (train.cuda_graph; its eager warm-up steps and the
    capture are among the untimed ones), and no generator-alone times. ``channels_last``: the perceptual
    network in the channels-last layout (train.perceptual_channels_last), and no generator-alone times
    (the generator is the same)."""
    if graphed or channels_last:
        train = dataclasses.replace(run.train, cuda_graph=graphed or run.train.cuda_graph,
                                    perceptual_channels_last=channels_last or run.train.perceptual_channels_last)
        run = dataclasses.replace(run, train=train)
    with torch.device(device):  # parameters initialised where they train: 80 M of them init slowly on a CPU
        trainer = (build_trainer(run, device, wrap=authors_wrap, trainer_class=AuthorsStep) if authors else
                   build_trainer(run, device))
    (h, w), b = size, run.train.batch_size
    gen = torch.Generator().manual_seed(settings.seed)
    batch = {"label": torch.randint(1, settings.num_classes, (b, h, w), generator=gen),
             "image": torch.rand(b, 3, h, w, generator=gen) * 2 - 1}
    grad_image = (torch.randn(b, 3, h, w, generator=gen) * 1e-3).to(device)
    max_diff = None
    if check_layouts:  # the two layouts compute the same function on the same weights
        with torch.no_grad(), fp32_mode("fp32", device):
            lbl = batch["label"][:1].to(device)
            max_diff = (trainer.generator(lbl) - AuthorsWay(trainer.generator)(lbl)).abs().max().item()

    def generator_pass():
        x, _ = trainer.inputs(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.amp):
            fake = trainer.g_model(x)
        fake.backward(grad_image.to(fake.dtype))
        trainer.generator.zero_grad(set_to_none=True)

    warmup = max(settings.warmup, GRAPH_WARMUP_STEPS + 2) if graphed else settings.warmup
    with fp32_mode("bf16" if run.train.mixed_precision else "fp32", device):
        times = _timed(lambda: trainer.train_step(batch), settings.iters, warmup, device, deadline)
        # the steps above already ran these shapes: one untimed pass is warm-up enough
        generator_times = ([] if graphed or channels_last else
                           _timed(generator_pass, settings.iters, min(1, settings.warmup), device, deadline))
    amp = trainer.amp
    x, _ = trainer.inputs(batch)  # did the generator's pixelwise MLP run in the fused kernel (CUDA, "auto")?
    g = trainer.generator
    fused = (not authors and isinstance(g, ASAPNetGenerator) and g.uses_fused_mlp(x[:, :g.config.hr_in_channels]))
    flops = None
    if count and not (graphed or channels_last):  # after every timing: the counter's dispatch overhead touches none of them
        saved = getattr(g, "fused_mlp", None)
        if isinstance(g, ASAPNetGenerator):
            g.fused_mlp = False  # the same function through layers the counter sees
        try:
            with fp32_mode("bf16" if run.train.mixed_precision else "fp32", device):
                flops = count_flops(lambda: trainer.train_step(batch))
        finally:
            if isinstance(g, ASAPNetGenerator):
                g.fused_mlp = saved
    graph = trainer.graph_status()
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"times": times, "amp": amp, "max_diff": max_diff, "generator_times": generator_times,
            "fused_mlp": fused, "graph": graph, "flops": flops}


def step_kernels(size: tuple[int, int], batch: int, precision: str, settings: TrainBenchSettings,
                 device: torch.device, iters: int) -> dict:
    """Where our eager training step's time goes: a fresh trainer of ``measure``'s run, ``settings.warmup``
    steps, then ``iters`` steps under torch.profiler (benchmarks/campaign/breakdown.py). Kept apart from
    the timed steps so that the profiler cannot touch a timing."""
    from benchmarks.campaign.breakdown import kernel_breakdown

    run = make_run(size, batch, precision, settings)
    with torch.device(device):
        trainer = build_trainer(run, device)
    (h, w), b = size, run.train.batch_size
    gen = torch.Generator().manual_seed(settings.seed)
    data = {"label": torch.randint(1, settings.num_classes, (b, h, w), generator=gen),
            "image": torch.rand(b, 3, h, w, generator=gen) * 2 - 1}
    try:
        with fp32_mode(precision, device):
            for _ in range(settings.warmup):
                trainer.train_step(data)
            return kernel_breakdown(lambda: trainer.train_step(data), iters, device)
    finally:
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def measure(size: tuple[int, int], batch: int, precision: str, settings: TrainBenchSettings,
            device: torch.device, deadline: float | None = None, log=print, graphed: bool = False,
            peak: dict | None = None, channels_last: bool = False) -> dict:
    """One row: ours and the authors' way at one size, batch and precision, in this run: the whole GAN
    step, and the generator's forward + backward alone (where the two ways differ). The row also says
    how much of the authors' step their generator takes, and so what a generator alone could gain
    there (Amdahl: 1 / (1 - share), were ours free: "generator_alone_bound"; our step's own structure
    gains on top of it). ``graphed`` (CUDA): ours also with the whole step
    replayed as one CUDA graph ("ours_graphed", "speedup_graphed"). ``channels_last``: ours also with the
    perceptual network channels-last (train.perceptual_channels_last: "ours_channels_last",
    "speedup_channels_last"). "speedup_best" is the fastest of ours.
    The arithmetic of each step is counted on one more step after the timings ("flops"); their ratio,
    authors' / ours ("flop_ratio"), is the speed-up at an equal rate of arithmetic. Each way's
    "tflops_per_s" is its count over its median step, and with ``peak`` (``matmul_peak`` of this
    precision, measured in the same run) "fraction_of_matmul_peak" says how far from that bound it ran."""
    run = make_run(size, batch, precision, settings)
    size_text = f"{size[0]}x{size[1]}"
    row = {"size": size_text, "batch": batch, "precision": precision, "authors_way_runs": AUTHORS_LAYOUT_AND_STEP}
    # (name, the authors' step, as one CUDA graph, VGG channels-last)
    ways = ([("ours", False, False, False)]
            + ([("ours_graphed", False, True, False)] if graphed and device.type == "cuda" else [])
            + ([("ours_channels_last", False, False, True)] if channels_last and settings.perceptual != "off" else []))
    for name, authors, graph, cl in ways + [("authors_way", True, False, False)]:
        extra = graph or cl  # a variant of ours: the same arithmetic, counted once (as "ours")
        try:
            got = step_times(run, size, authors, device, settings, deadline, check_layouts=name == "ours",
                             graphed=graph, count=not extra, channels_last=cl)
        except Exception as err:
            if not extra:
                raise
            # a variant of ours is the new one: its failure costs its own numbers, not the row's
            row[name] = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
            log(f"[bench-train] {size_text} batch {batch} {precision} {name}: ERROR {row[name]['error'][:200]}")
            continue
        if got["max_diff"] is not None:
            row["max_abs_output_diff"] = got["max_diff"]
        med = statistics.median(got["times"])
        gen_med = statistics.median(got["generator_times"]) if got["generator_times"] else None
        row[name] = {"step_s_median": med, "step_s_all": got["times"], "images_per_s": batch / med,
                     "autocast_bf16": got["amp"], "fused_mlp": got["fused_mlp"], "generator_s_median": gen_med,
                     "generator_s_all": got["generator_times"]}
        if graph:
            row[name]["graph"] = got["graph"]
        if not extra:
            row.setdefault("flops", {"counted": FLOPS_COUNTED})[name] = got["flops"]
        log(f"[bench-train] {size_text} batch {batch} {precision} {name:12s} {batch / med:8.3f} img/s "
            f"(median step {med * 1000:.1f} ms over {len(got['times'])}"
            + (f"; generator forward+backward {gen_med * 1000:.1f} ms)" if gen_med is not None else
               f"; {'perceptual network channels-last' if cl else describe_graph(got['graph'])})"))
    ours, theirs = row["ours"], row["authors_way"]
    flops = row["flops"]
    row["flop_ratio"] = flops["authors_way"] / flops["ours"] if flops["ours"] else None
    if peak:
        row["matmul_peak_tflops"] = peak["tflops"]
    for name in OUR_WAYS + ("authors_way",):
        way = row.get(name) or {}
        count = flops["authors_way" if name == "authors_way" else "ours"]  # ours' variants do ours' arithmetic
        if "step_s_median" in way and count:
            way["tflops_per_s"] = count / way["step_s_median"] / 1e12
            if peak:
                way["fraction_of_matmul_peak"] = way["tflops_per_s"] / peak["tflops"]
    if row["flop_ratio"]:
        log(f"[bench-train] {size_text} batch {batch} {precision} step arithmetic: ours {flops['ours'] / 1e9:.1f} "
            f"GFLOP, the authors' {flops['authors_way'] / 1e9:.1f} (ratio {row['flop_ratio']:.2f}: the speed-up at "
            "an equal FLOP rate)"
            + "".join(f"; {name} {row[name]['tflops_per_s']:.2f} TFLOP/s" + (
                f" ({100 * row[name]['fraction_of_matmul_peak']:.0f}% of the matmul peak)" if peak else "")
                for name in OUR_WAYS + ("authors_way",) if "tflops_per_s" in (row.get(name) or {})))
    row["speedup"] = ours["images_per_s"] / theirs["images_per_s"]
    row["speedup_best"] = row["speedup"]
    if "ours_graphed" in row and (row["ours_graphed"].get("graph") or {}).get("active"):
        row["speedup_graphed"] = row["ours_graphed"]["images_per_s"] / theirs["images_per_s"]
        row["speedup_best"] = max(row["speedup_best"], row["speedup_graphed"])
    if "images_per_s" in (row.get("ours_channels_last") or {}):
        row["speedup_channels_last"] = row["ours_channels_last"]["images_per_s"] / theirs["images_per_s"]
        row["speedup_best"] = max(row["speedup_best"], row["speedup_channels_last"])
    row["generator_speedup"] = theirs["generator_s_median"] / ours["generator_s_median"]
    share = theirs["generator_s_median"] / theirs["step_s_median"]
    row["authors_generator_share"] = share
    row["generator_alone_bound"] = 1 / (1 - share) if share < 1 else None
    return row


def measure_pixelwise(size: tuple[int, int], batch: int, precision: str, device: torch.device, iters: int = 5,
                      warmup: int = 2, num_classes: int = 13, deadline: float | None = None) -> dict:
    """The pixelwise MLP alone, forward + backward to its parameters, as a training step runs it: the
    trainer's fp32 one-hot input (+ the encoding), a parameter grid in ``precision`` (bf16 as autocast
    makes it; "fp32" with TF32 off), a random dL/d(image). Three ways in the same run: our reference
    layout through autograd, the authors' layout through autograd, and the fused kernel's forward and
    backward (CUDA only; recomputing its activations, "fused", or stashing them, "fused_stash"; the
    speed-ups use the faster, "fused_best"). Milliseconds (median) and, on CUDA, the peak memory each
    adds."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    h, w = size
    S = default_downsampling(h, w)
    channels = ASAPNetConfig(num_classes=num_classes, downsampling=S).mlp_channels  # the paper's MLP at this S
    dtype = torch.bfloat16 if precision == "bf16" and device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_classes, (batch, h, w), generator=gen)
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float().to(device)
    params = (torch.randn(batch, num_mlp_params(channels), h // S, w // S, generator=gen) * 0.1).to(device, dtype)
    grad_out = torch.randn(batch, 3, h, w, generator=gen).to(device, dtype)
    ways = {"reference": lambda p: pixelwise_mlp(onehot.to(dtype), p, channels, S),
            "authors_way": lambda p: authors_style_mlp(onehot.to(dtype), p, channels, S)}
    if device.type == "cuda" and fused_mlp_default() is not False:  # ASAP_FUSED_MLP=0: a kernel not to run here
        from asap.models.pixelwise_fused import fused_pixelwise_mlp, unsupported_reason

        if unsupported_reason(channels, S) is None:
            # "ieee" (the default): TF32 is off for fp32; the backward recomputing or stashing activations
            ways["fused"] = lambda p: fused_pixelwise_mlp(onehot, p, channels, S, bwd_stash=False)
            ways["fused_stash"] = lambda p: fused_pixelwise_mlp(onehot, p, channels, S, bwd_stash=True)
    row = {"size": f"{h}x{w}", "batch": batch, "precision": precision, "S": S, "ms": {}, "peak_mb": {}}
    with fp32_mode(precision, device):
        for name, fn in ways.items():
            p = params.clone().requires_grad_()

            def step(fn=fn, p=p):
                fn(p).backward(grad_out)
                p.grad = None

            if device.type == "cuda":
                step()  # warm (Triton compiles, cuBLAS picks), then the peak of one clean step
                torch.cuda.synchronize(device)
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step()
                torch.cuda.synchronize(device)
                row["peak_mb"][name] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
            times = _timed(step, iters, warmup, device, deadline)
            row["ms"][name] = statistics.median(times) * 1000
    ms = row["ms"]
    best = min((k for k in ("fused", "fused_stash") if k in ms), key=ms.get, default=None)
    row["fused_best"] = best  # the faster backward of the two
    row["fused_vs_authors"] = ms["authors_way"] / ms[best] if best else None
    row["fused_vs_reference"] = ms["reference"] / ms[best] if best else None
    return row


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="256x256")
    ap.add_argument("--batch", "--batches", dest="batches", default="1", help="comma-separated batch sizes")
    ap.add_argument("--precisions", default="bf16", help="bf16 (autocast on CUDA) and/or fp32")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr-max-width", type=int, default=256, help="paper: 1024")
    ap.add_argument("--ndf", type=int, default=32, help="paper: 64")
    ap.add_argument("--perceptual", default="auto", help="auto | vgg19 | hed-vgg16 | off")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="CUDA: also time ours with the whole step replayed as one CUDA graph (train.cuda_graph)")
    ap.add_argument("--channels-last", action="store_true",
                    help="also time ours with the perceptual network channels-last (train.perceptual_channels_last)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = TrainBenchSettings(iters=args.iters, warmup=args.warmup, lr_max_width=args.lr_max_width,
                                  ndf=args.ndf, perceptual=args.perceptual)
    rows, pixelwise = [], []
    peaks = {}
    for precision in args.precisions.split(","):  # the device's matmul rate: what each row's FLOP rate is read against
        peaks[precision] = matmul_peak(device, precision)
        print(f"[bench-train] matmul peak, {precision} ({peaks[precision]['dtype']}, {peaks[precision]['n']}^3): "
              f"{peaks[precision]['tflops']:.2f} TFLOP/s")
    for size_text in args.sizes.split(","):
        size = tuple(int(v) for v in size_text.split("x"))
        for batch in (int(b) for b in args.batches.split(",")):
            for precision in args.precisions.split(","):
                p = measure_pixelwise(size, batch, precision, device, iters=args.iters, warmup=args.warmup)
                print(f"[bench-train] {size_text} batch {batch} {precision} pixelwise MLP forward+backward: "
                      + ", ".join(f"{k} {v:.2f} ms" for k, v in p["ms"].items()))
                pixelwise.append(p)
                rows.append(measure(size, batch, precision, settings, device, graphed=args.cuda_graph,
                                    peak=peaks[precision], channels_last=args.channels_last))
    report = {"benchmark": "training-step", "device": str(device), "device_name": device_name(device),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "setup": "asap.training.build_trainer",
              "settings": {**asdict(settings), "sizes": args.sizes, "batches": args.batches,
                           "precisions": args.precisions, "device": args.device, "cuda_graph": args.cuda_graph,
                           "channels_last": args.channels_last}, "matmul_peak": peaks,
              "rows": rows, "pixelwise": pixelwise}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"[bench-train] wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
