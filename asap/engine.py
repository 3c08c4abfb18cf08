"""GAN training, in-process (no Ray): one step and a loop, for any generator (ASAP-Net, pix2pixHD, SPADE).

Paper Sec. 3.4 follows SPADE: hinge GAN loss + discriminator feature matching + perceptual loss,
Adam with the two time-scale update rule (G 1e-4, D 4e-4, betas (0, 0.9)) and a linear
learning-rate decay to zero over the second half of training.

Training ends at ``steps`` or, when ``time_budget_s`` is set, when that much wall-clock time has been
spent in the loop, whichever comes first; the learning-rate decay follows the larger of the two
fractions (steps done / steps, seconds spent / budget), so a budgeted run decays to zero as its
time runs out. Seconds spent are part of the checkpoint: a resumed run continues the same budget.

asap/training.py builds a trainer for any architecture from typed config and runs this loop with
checkpoints; the Ray Train stage (pipelines/train.py) wraps the same loop. Data order and flips are a
pure function of (seed, step, rank), so a resumed run sees exactly the batches the uninterrupted run
would have seen.

One step is device work only (``GANTrainer.update``): both optimisers are PyTorch's fused Adam, which
skips its update on the device when told the step's losses are not finite (``found_inf``, as GradScaler
uses it), so the step needs no host sync before its updates; the host reads the losses once, after.
That is what lets ``cuda_graph`` capture the whole step (G and D forward, backward and Adam updates)
as one CUDA graph and replay it: at batch 1 the eager step is bound by launching its many small
kernels (on an H200: 30.7 ms for one 256x256 image, 37.9 ms for eight), which a replay issues at once.
D runs forward once per step and serves both updates: the G loss's backward pass computes D's input
gradient only, the D loss's D's weight gradients only (``update``). The loop reads the next batch
between queueing a step (``launch``) and reading its losses (``finish``), while the device works.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from asap.config import require
from asap.files import atomic_path
from asap.images import colour_labels, to_rgb
from asap.losses import GANLossConfig, feature_matching_loss, hinge_d_loss, hinge_g_loss
from asap.metrics.runtime import host_rate

CHECKPOINT_FORMAT = "asap-train-state/2"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults are the paper's (SPADE's) except the step budget."""
    steps: int = 200                # generator updates at most (the budget below may stop earlier)
    time_budget_s: float | None = None  # wall-clock seconds of training; None: `steps` alone decides
    batch_size: int = 1             # per worker (SPADE: 1 per GPU on facades)
    lr_g: float = 1e-4              # TTUR (Heusel et al.), as SPADE: G 1e-4, D 4e-4
    lr_d: float = 4e-4
    beta1: float = 0.0              # SPADE with TTUR: Adam betas (0, 0.9)
    beta2: float = 0.9
    decay_from: float = 0.5         # linear decay to 0 starting at this fraction of the steps
    ndf: int = 64                   # discriminator width (pix2pixHD / SPADE)
    d_layers: int = 4
    d_scales: int = 2
    flip: bool = True               # random horizontal flips (the only augmentation)
    seed: int = 0
    mixed_precision: bool = True    # bf16 autocast on CUDA; ignored on CPU
    log_every: int = 10
    checkpoint_every: int = 50
    checkpoint_every_s: float | None = None  # also checkpoint after this many training seconds
    sample_every: int = 100
    cuda_graph: bool = False        # CUDA, one process: after GRAPH_WARMUP_STEPS eager steps, replay the whole
                                    # step as one CUDA graph (ignored on CPU, like mixed_precision)
    perceptual_channels_last: bool = False  # the perceptual network (VGG: weights, inputs, activations) in
                                    # the channels-last memory format: the same function, another layout

    def __post_init__(self):
        for name in ("steps", "batch_size", "ndf", "d_layers", "d_scales", "log_every",
                     "checkpoint_every", "sample_every"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                    f"train {name} must be a positive integer, got {v!r}")
        for name in ("lr_g", "lr_d"):
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and v > 0, f"train {name} must be > 0, got {v!r}")
        require(0.0 <= self.decay_from <= 1.0, f"train decay_from must be in [0, 1], got {self.decay_from!r}")
        for name in ("time_budget_s", "checkpoint_every_s"):
            v = getattr(self, name)
            require(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and v > 0),
                    f"train.{name} must be null (off) or a number of seconds > 0, got {v!r}")
        for name in ("cuda_graph", "perceptual_channels_last"):
            v = getattr(self, name)
            require(isinstance(v, bool), f"train {name} must be true or false, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the step was not applied, so the last checkpoint stays good."""


LOSS_NAMES = ("G_total", "G_gan", "G_feat", "G_vgg", "D")
GRAPH_WARMUP_STEPS = 3  # eager steps (on a side stream) before the capture: cuDNN, cuBLAS and Triton choose
                        # and compile their kernels there, not while the graph is being recorded


# The source files under asap/ that shape what training computes (models, losses, data, the loop):
# what a run's ``code_history`` records, so its records say which code made its weights.
TRAINING_CODE = ("engine.py", "losses.py", "training.py", "weights.py", "images.py", "config.py", "models", "data")


@functools.lru_cache(maxsize=1)
def training_code() -> dict[str, str]:
    """{"asap/<file>": first 12 hex digits of its SHA-1} for the TRAINING_CODE files, as they are now."""
    root = Path(__file__).resolve().parent
    files = {}
    for entry in TRAINING_CODE:
        path = root / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            files[f"asap/{f.relative_to(root).as_posix()}"] = hashlib.sha1(f.read_bytes()).hexdigest()[:12]
    return files


def code_sha1(files: dict[str, str]) -> str:
    """One digest of a ``training_code()`` map."""
    return hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]




def session_rate(entry: dict) -> float | None:
    """One ``host_history`` entry's matmul rate: the mean of its start and end samples (a session that
    was killed has its start only); None when it has neither."""
    samples = [float(entry[k]) for k in ("matmul_tflops", "matmul_tflops_end") if entry.get(k) is not None]
    return sum(samples) / len(samples) if samples else None


def host_matmul_tflops(history: list[dict], steps: int) -> float | None:
    """The matmul rate a run trained at: its sessions' rates (``session_rate``) weighted by the steps each
    trained (up to ``steps``, the run's last); None when no entry records one (older checkpoints)."""
    entries = [e for e in history if session_rate(e) is not None]
    if not entries:
        return None
    bounds = [int(e["from_step"]) for e in entries[1:]] + [max(int(steps), int(entries[-1]["from_step"]))]
    spans = [max(end - int(e["from_step"]), 0) for e, end in zip(entries, bounds)]
    if sum(spans) == 0:
        return session_rate(entries[-1])
    return sum(s * session_rate(e) for s, e in zip(spans, entries)) / sum(spans)


def code_record(history: list[dict]) -> list[dict]:
    """A ``code_history`` (as checkpoints carry it) without the per-file digests."""
    return [{"from_step": e["from_step"], "code_sha1": e["code_sha1"]} for e in history]


def linear_decay(progress: float, decay_from: float) -> float:
    """LR multiplier at ``progress`` in [0, 1] of training: 1 until ``decay_from``, then linearly
    down to 0 at 1 (SPADE's schedule, as a function of the fraction of training done)."""
    if progress <= decay_from or decay_from >= 1.0:
        return 1.0
    return max(0.0, (1.0 - progress) / (1.0 - decay_from))


# ----------------------------------------------------------------------------------------------
# Deterministic data order
# ----------------------------------------------------------------------------------------------

def batch_plan(step: int, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
               flip: bool = True) -> tuple[list[int], list[bool]]:
    """Indices and flip flags of ``rank``'s batch at ``step``: each epoch is a seeded permutation
    split across ranks (drop-last), so no state beyond the step is needed to resume."""
    global_batch = batch_size * world
    per_epoch = max(1, n // global_batch)
    epoch, pos = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    start = (pos * world + rank) * batch_size
    idx = [int(perm[(start + i) % n]) for i in range(batch_size)]
    return idx, [bool(flips[i]) and flip for i in idx]


def collate(dataset, indices: list[int], flips: list[bool]) -> dict:
    """Stack dataset items (dicts of tensors, see asap.data.prepared) with per-item horizontal flips."""
    items = []
    for i, f in zip(indices, flips):
        item = dataset[i]
        if f:
            item = {k: (v.flip(-1) if torch.is_tensor(v) else v) for k, v in item.items()}
        items.append(item)
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if torch.is_tensor(values[0]) else values
    return out


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------

class GANTrainer:
    """Holds G, D, the perceptual network, both optimisers and schedulers; ``train_step`` does one
    G update and one D update from one forward of G and of D (``update``)."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, config: TrainConfig,
                 loss: GANLossConfig, perceptual: nn.Module | None = None, device="cpu",
                 wrap: Callable[[nn.Module], nn.Module] | None = None):
        self.config, self.loss, self.device = config, loss, torch.device(device)
        self.generator = generator.to(self.device)
        self.discriminator = discriminator.to(self.device)
        # perceptual_channels_last: the frozen VGG's convolutions (most of its time: no norms) run on
        # channels-last weights and activations, where tensor cores want them (a conv of NCHW bf16
        # tensors may run between layout transposes). G and D keep their layout: their InstanceNorms
        # (aten::instance_norm) return NCHW whatever they are given, so channels-last there would add
        # a copy each way around every norm; G's checkpoints and the fused pixelwise kernel read it as is.
        self.perceptual_format = (torch.channels_last if config.perceptual_channels_last and perceptual is not None
                                  else torch.contiguous_format)
        if perceptual is not None:
            perceptual = perceptual.to(self.device, memory_format=self.perceptual_format)
        # `wrap` (e.g. DDP) is used for forward/backward; the raw modules are what we save
        self.g_model = wrap(self.generator) if wrap else self.generator
        self.d_model = wrap(self.discriminator) if wrap else self.discriminator
        self.perceptual = perceptual
        betas = (float(config.beta1), float(config.beta2))
        # fused: one kernel per update, and `found_inf` skips it on the device (see `update`)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=betas, fused=True)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=betas, fused=True)
        self.step = 0
        self.elapsed_s = 0.0  # wall-clock seconds spent in train_loop, over every resume
        self.amp = config.mixed_precision and self.device.type == "cuda"
        self.graphed = config.cuda_graph and self.device.type == "cuda"
        ddp = nn.parallel.DistributedDataParallel
        if self.graphed and any(isinstance(m, ddp) for m in (self.g_model, self.d_model)):
            raise ValueError("train.cuda_graph captures the step of one process; it cannot capture DDP's gradient "
                             "all-reduce: set train.cuda_graph false for a run with several workers")
        self._lrs = {"lr_G": config.lr_g, "lr_D": config.lr_d}
        # what each loss's backward pass writes gradients into (update): each optimiser's own parameters
        self._trained = {name: [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
                         for name, opt in (("g", self.opt_g), ("d", self.opt_d))}
        self._captured_at, self._graph_error = None, None
        # which code trained which steps: [{"from_step", "code_sha1", "files"}], carried by checkpoints
        self.code_history: list[dict] = []
        # where and how fast each session of train_loop ran (record_host), carried by checkpoints
        self.host_history: list[dict] = []
        self._host_measured = False  # this process has measured its host (one entry per session)
        self._reset_graph()

    def _reset_graph(self) -> None:
        """Forget the captured step (a new one is captured after GRAPH_WARMUP_STEPS eager steps)."""
        self.graph = None
        self._eager_steps = 0
        self._capturing = False
        self._static: dict[str, torch.Tensor] = {}
        self._stream = None

    # -- budget and schedule ---------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of training done: steps, or seconds of the budget, whichever is further."""
        c = self.config
        done = self.step / c.steps
        if c.time_budget_s is not None:
            done = max(done, self.elapsed_s / c.time_budget_s)
        return min(1.0, done)

    def done(self) -> bool:
        c = self.config
        return self.step >= c.steps or (c.time_budget_s is not None and self.elapsed_s >= c.time_budget_s)

    def stopped_by(self) -> str:
        return "steps" if self.step >= self.config.steps else "time_budget"

    def set_learning_rates(self) -> None:
        """LRs for the next update from the fraction done (identical on every rank: see agree_elapsed)."""
        factor = linear_decay(self.progress(), self.config.decay_from)
        for name, opt, base in (("lr_G", self.opt_g, self.config.lr_g), ("lr_D", self.opt_d, self.config.lr_d)):
            self._lrs[name] = lr = base * factor
            for group in opt.param_groups:
                if torch.is_tensor(group["lr"]):  # a captured step reads its LR from this tensor
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr

    def agree_elapsed(self, seconds: float) -> float:
        """Under DDP every rank must stop, and checkpoint, at the same step and use the same LR: take
        the slowest rank's clock (one scalar all-reduce per step, only when time decides anything)."""
        timed = self.config.time_budget_s is not None or self.config.checkpoint_every_s is not None
        if timed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([seconds], dtype=torch.float64,
                             device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return float(t.item())
        return seconds

    # -- one step ---------------------------------------------------------------------------------
    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoded generator input, real image) on the device."""
        real = batch["image"].to(self.device, non_blocking=True)
        if "input" in batch:  # image-to-image task
            x = batch["input"].to(self.device, non_blocking=True)
        else:
            edge = batch.get("edge")
            x = self.generator.encode(batch["label"].to(self.device, non_blocking=True),
                                      edge.to(self.device) if edge is not None else None)
        return x, real

    def discriminate(self, x, fake, real, model: nn.Module | None = None):
        """D (``model``, default the wrapped one) on fake and real in one pass (cat along the batch, as
        SPADE), split back per scale."""
        out = (model or self.d_model)(torch.cat([torch.cat([x, fake], 1), torch.cat([x, real], 1)], 0))
        n = fake.shape[0]
        fake_out = [[f[:n] for f in scale] for scale in out]
        real_out = [[f[n:] for f in scale] for scale in out]
        return fake_out, real_out

    def update(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """One G update and one D update, as device work only: no host sync, so that a CUDA graph can
        hold it. Returns a (7,) fp32 tensor: the LOSS_NAMES values, then whether the G update and the
        D update were skipped (1.0) because a loss was not finite: a non-finite G loss skips both, a
        non-finite D loss the D update (the fused optimisers' ``found_inf``).

        D runs forward once, on fake and real in one batch, and both losses are read from that pass:
        the D step's forward on ``fake.detach()`` would repeat the G step's numbers (the G update does
        not touch D, and the fake is the one generated before it, as pix2pixHD's step has it). Two
        backward passes then share that graph: the G loss's into G's weights only (through D's input
        gradient: no D weight gradient is computed there), the D loss's into D's weights only (it stops
        at the fake: nothing flows back into G). Against a step with a forward of D per update this
        saves one D forward of 2B images and its launches; D's spectral norms take one power
        iteration per step (SN-GAN's one per update) instead of one per forward."""
        with self.autocast():
            fake = self.g_model(x)
            fake_out, real_out = self.discriminate(x, fake, real)
            g_total, g_losses = self.generator_loss(fake, real, fake_out, real_out)
            d_loss = hinge_d_loss(real_out, fake_out)
        d = d_loss.detach().float().reshape(1)
        g_skip = self.not_finite(g_losses)
        d_skip = torch.maximum(g_skip, self.not_finite(d))  # a non-finite G loss skips both updates
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        torch.autograd.backward(g_total, inputs=self._trained["g"], retain_graph=True)
        torch.autograd.backward(d_loss, inputs=self._trained["d"])
        self.opt_g.found_inf = g_skip
        self.opt_g.step()
        self.opt_d.found_inf = d_skip
        self.opt_d.step()
        return torch.cat([g_losses, d, g_skip.reshape(1), d_skip.reshape(1)])

    def autocast(self):
        """bf16 autocast where the step runs mixed precision (a no-op context otherwise)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                              cache_enabled=not self._capturing)  # a graph must not keep autocast's cast cache

    def generator_loss(self, fake, real, fake_out, real_out) -> tuple[torch.Tensor, torch.Tensor]:
        """(G's total loss, the fp32 (4,) stack of G_total, G_gan, G_feat, G_vgg) from D's outputs."""
        g_gan = hinge_g_loss(fake_out)
        g_feat = feature_matching_loss(fake_out, real_out, self.loss.lambda_feat)
        g_vgg = (self.perceptual(fake.float().contiguous(memory_format=self.perceptual_format),
                                 real.contiguous(memory_format=self.perceptual_format))
                 if self.perceptual is not None else g_gan.new_zeros(()))
        g_total = g_gan + g_feat + g_vgg
        return g_total, torch.stack([v.detach().float() for v in (g_total, g_gan, g_feat, g_vgg)])

    @staticmethod
    def not_finite(losses: torch.Tensor) -> torch.Tensor:
        """1.0 (on the device) where any of ``losses`` is not finite: the fused Adam's found_inf."""
        return (~torch.isfinite(losses).all()).float()

    def train_step(self, batch: dict) -> dict[str, float]:
        """One step on ``batch``: eager, or the captured graph replayed (``cuda_graph``). The losses are
        read once, after the updates; a non-finite one raises NonFiniteLossError, its update skipped."""
        return self.finish(self.launch(batch))

    def launch(self, batch: dict) -> torch.Tensor:
        """The first half of ``train_step``: the step's device work queued (on a GPU the host is free
        until ``finish``: train_loop reads the next batch meanwhile). Returns what ``finish`` takes."""
        self.set_learning_rates()
        x, real = self.inputs(batch)
        return self._graph_step(x, real) if self.graphed else self.update(x, real)

    def finish(self, out: torch.Tensor) -> dict[str, float]:
        """The second half of ``train_step``: wait for the step, read its losses, count it."""
        values = out.tolist()  # the step's one host sync
        losses = dict(zip(LOSS_NAMES, values[:len(LOSS_NAMES)]))
        if values[-2] or values[-1]:
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step}: {bad}. The step was not applied"
                f"{'' if values[-2] else ' to D (G was updated)'}; the last checkpoint is intact. Lower the "
                "learning rates or switch mixed_precision off, then resume.")
        self.step += 1
        return {**losses, **self._lrs}

    # -- the captured step (cuda_graph) -----------------------------------------------------------
    def _graph_step(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if self._stream is None:  # warm-up and capture on one stream: cuBLAS keeps a workspace per stream
            self._stream = torch.cuda.Stream(self.device)
        if self.graph is not None and (self._static["x"].shape != x.shape or self._static["real"].shape != real.shape):
            # a batch of another shape: cuDNN, cuBLAS and Triton choose their kernels for it in eager
            # warm-up steps first, then it is captured anew (the old graph and its memory are let go)
            self.graph, self._static, self._eager_steps = None, {}, 0
        if self.graph is None and self._eager_steps < GRAPH_WARMUP_STEPS:
            self._eager_steps += 1
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                out = self.update(x, real)
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
            return out
        if self.graph is None:
            try:
                self._capture(x, real)
            except Exception as err:  # train on, eagerly, and say so (graph_status records it)
                self._uncapture(f"{type(err).__name__}: {str(err)[:300]}")
                return self.update(x, real)
        self._static["x"].copy_(x, non_blocking=True)
        self._static["real"].copy_(real, non_blocking=True)
        self.graph.replay()
        return self._static["out"]

    def _capture(self, x: torch.Tensor, real: torch.Tensor) -> None:
        """Record ``update`` on static input buffers as one CUDA graph (``_capturable_optimisers``
        first); nothing runs yet."""
        self._capturable_optimisers()
        self.graph = None
        self._static = {"x": x.detach().clone(), "real": real.detach().clone()}
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        self._capturing = True
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                self._static["out"] = self.update(self._static["x"], self._static["real"])
        finally:
            self._capturing = False
        self.graph = graph
        self._captured_at = self.step

    def _capturable_optimisers(self) -> None:
        """What a graph replays must not change between steps: the LRs become device tensors the graph
        reads (set_learning_rates fills them) instead of floats it would keep, the optimisers capturable."""
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["capturable"] = True
                if not torch.is_tensor(group["lr"]):
                    group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=self.device)

    def _uncapture(self, error: str) -> None:
        """After a failed capture: the eager step from here on, with float LRs again."""
        import warnings

        for opt in (self.opt_g, self.opt_d):
            _fused_after_load(opt)
        self.graphed, self.graph, self._static, self._graph_error = False, None, {}, error
        warnings.warn(f"train.cuda_graph: the step could not be captured ({error}); training goes on eagerly",
                      RuntimeWarning, stacklevel=3)

    def graph_status(self) -> dict:
        """Whether the step ran as a CUDA graph: requested (train.cuda_graph), active (on CUDA, not given
        up), the step at which it was captured, and the error that made it give up."""
        return {"requested": self.config.cuda_graph, "active": self.graphed,
                "captured_at_step": self._captured_at, "error": self._graph_error}

    # -- which code trains -------------------------------------------------------------------------
    def record_code(self) -> None:
        """Before training on from ``step``: a new ``code_history`` entry if the training code is not
        the code of the last entry (a fresh run, or a resume after the code changed)."""
        files = training_code()
        if not self.code_history or self.code_history[-1]["files"] != files:
            self.code_history.append({"from_step": self.step, "code_sha1": code_sha1(files), "files": files})

    def code_changes(self) -> list[str] | None:
        """The training-code files that differ from the code that trained the last recorded steps
        (changed, added or removed); None when the run records no code (a fresh run, or a checkpoint
        written before runs recorded it)."""
        if not self.code_history:
            return None
        then, now = self.code_history[-1]["files"], training_code()
        return sorted(f for f in set(then) | set(now) if then.get(f) != now.get(f))

    def describe_code_change(self, run_folder) -> str | None:
        """One line for a resumed run whose training code changed since its checkpoint; None if not."""
        changed = self.code_changes()
        if not changed:
            return None
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        then = ("the run is finished: its weights stay those of the earlier code" if self.done() else
                f"the steps from {self.step + 1} on run the code as it is now")
        return (f"the training code changed since this run's checkpoint of step {self.step} ({shown}); {then}. "
                f"To train the run afresh with this code, remove {run_folder}")

    def code_record(self) -> list[dict]:
        """``code_history`` without the per-file digests: for a run's records (provenance, meta)."""
        return code_record(self.code_history)

    # -- which machine trains, and how fast it was -------------------------------------------------
    def record_host(self) -> dict:
        """Before training on from ``step``: the device this process trains on and its matrix-multiply
        rate now (``_host_rate``), appended to ``host_history``; once per process (a second call returns
        the first entry). Under an equal time budget a run's steps follow its machine's speed on the
        day, so its records say it. Not counted in ``elapsed_s``."""
        if self._host_measured:
            return self.host_history[-1]
        from asap.metrics.runtime import device_info

        info = device_info(self.device)
        rate, precision, n = self._host_rate()
        entry = {"from_step": self.step, "device_name": info["device_name"],
                 "threads": info["torch_threads"] if self.device.type == "cpu" else None,
                 "matmul_tflops": rate, "matmul_tflops_end": None, "precision": precision, "n": n}
        self.host_history.append(entry)
        self._host_measured = True
        return entry

    def record_host_end(self) -> dict | None:
        """After the last step of this session (before its final checkpoint): the rate again, as
        ``matmul_tflops_end`` of the entry ``record_host`` made (a shared machine's speed moves within a
        run; a killed session has none). None if this process recorded no start."""
        if not self._host_measured or self.host_history[-1].get("matmul_tflops_end") is not None:
            return None
        self.host_history[-1]["matmul_tflops_end"] = self._host_rate()[0]
        return self.host_history[-1]

    def _host_rate(self) -> tuple[float, str, int]:
        """TFLOP/s of a HOST_MATMUL_N matmul on this device (asap.metrics.runtime.matmul_peak, median of
        HOST_MATMUL_ITERS, with the threads this process trains with), in the precision of the step:
        bf16 under mixed precision on CUDA, else fp32."""
        peak = host_rate(self.device, "bf16" if self.amp else "fp32", threads=torch.get_num_threads())
        return peak["tflops"], peak["precision"], peak["n"]

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything to resume: models, optimisers, step and seconds spent (plain tensors and numbers).
        The learning rates are not state: they follow from step and seconds (``set_learning_rates``)."""
        from asap.models.checkpoint import arch_of

        return {"format": CHECKPOINT_FORMAT, "step": self.step, "elapsed_s": self.elapsed_s,
                "arch": arch_of(self.generator),
                "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "generator_config": self.generator.config.to_dict(), "train_config": self.config.to_dict(),
                "code_history": self.code_history, "host_history": self.host_history}

    def load_state_dict(self, state: dict) -> None:
        from asap.models.checkpoint import arch_of

        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a training checkpoint of this version (format {state.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT!r}); start a fresh run (remove its checkpoint folder)")
        saved = {"arch": state["arch"], **state["generator_config"]}
        now = {"arch": arch_of(self.generator), **self.generator.config.to_dict()}
        if saved != now:
            diff = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
            raise ValueError(f"the checkpoint's generator differs from the configured one (saved, now): {diff}; "
                             "change params back or start a fresh run (remove the checkpoint folder)")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        for opt in (self.opt_g, self.opt_d):
            _fused_after_load(opt)
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])
        self.code_history = [dict(e) for e in state.get("code_history", [])]  # older checkpoints: none
        self.host_history = [dict(e) for e in state.get("host_history", [])]  # older checkpoints: none
        self._host_measured = False
        self._reset_graph()  # the captured step read the old tensors

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

    def load(self, path) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


def describe_graph(status: dict | None) -> str:
    """``GANTrainer.graph_status()`` as one line for a run's records (MLflow tag, provenance)."""
    if not status:
        return "not recorded"
    if status.get("error"):
        return f"requested; eager after a failed capture: {status['error']}"
    if status.get("active"):
        at = status.get("captured_at_step")
        return (f"one CUDA graph from step {at + 1}" if at is not None else
                f"requested; eager (the run ended before the capture after {GRAPH_WARMUP_STEPS} warm-up steps)")
    return "requested; eager (not on CUDA)" if status.get("requested") else "off"


def _fused_after_load(opt: torch.optim.Adam) -> None:
    """``load_state_dict`` takes the saved groups' flags: a checkpoint of the earlier, unfused optimiser
    (or of a captured run, whose LRs were device tensors) comes back as it was saved. Make the groups
    fused again, uncaptured with float LRs, and put each step count where the fused kernel reads it."""
    for group in opt.param_groups:
        group.update(fused=True, foreach=None, capturable=False)
        if torch.is_tensor(group["lr"]):
            group["lr"] = float(group["lr"])
        for p in group["params"]:
            state = opt.state.get(p)
            if state and "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

class Progress:
    """Console progress: step, losses, it/s, images/s and ETA (by steps, or by the time budget)."""

    def __init__(self, trainer: GANTrainer, batch_images: int, printer=print):
        self.trainer, self.batch_images, self.printer = trainer, batch_images, printer
        self.t_last, self.last_step = time.perf_counter(), trainer.step

    def update(self, step: int, losses: dict) -> dict:
        now = time.perf_counter()
        its = (step - self.last_step) / max(now - self.t_last, 1e-9)
        self.t_last, self.last_step = now, step
        c, t = self.trainer.config, self.trainer
        done = t.progress()
        eta = t.elapsed_s * (1 - done) / done if done > 0 else math.inf
        stats = {"it_per_s": its, "images_per_s": its * self.batch_images, "elapsed_s": t.elapsed_s}
        text = " ".join(f"{k}={v:.3f}" for k, v in losses.items() if not k.startswith("lr"))
        where = (f"step {step} | {_fmt_time(t.elapsed_s)}/{_fmt_time(c.time_budget_s)} of the time budget"
                 if c.time_budget_s is not None else f"step {step}/{c.steps}")
        self.printer(f"[train] {where} {text} | {its:.2f} it/s {stats['images_per_s']:.2f} img/s | "
                     f"ETA {_fmt_time(eta)}", flush=True)
        return stats


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def train_loop(trainer: GANTrainer, dataset, *, rank: int = 0, world: int = 1,
               on_log: Callable[[int, dict], None] | None = None,
               on_checkpoint: Callable[[int], None] | None = None,
               on_sample: Callable[[int, dict], None] | None = None,
               printer=print) -> dict:
    """Train from ``trainer.step`` until ``trainer.done()`` (steps reached or time budget spent).
    Callbacks get the step number *after* the update; the last step is always logged, sampled and
    checkpointed. ``trainer.elapsed_s`` counts the loop's wall-clock time (data, steps, logging and
    checkpoints), added to what a resumed checkpoint had spent. Returns the last logged losses."""
    c = trainer.config
    progress = Progress(trainer, c.batch_size * world, printer if rank == 0 else (lambda *a, **k: None))
    losses: dict = {}
    trainer.generator.train()
    trainer.discriminator.train()

    def batch_at(step: int) -> dict:
        return collate(dataset, *batch_plan(step, len(dataset), c.batch_size, c.seed, rank, world, c.flip))

    if not trainer.done():
        trainer.record_code()
        host = trainer.record_host()  # before the clock starts: not part of the budget
        threads = host["threads"]
        where = host["device_name"] + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
        progress.printer(f"[train] host: {where}; {host['precision']} matmul at {host['matmul_tflops']:.3g} TFLOP/s "
                         "now (a time budget's steps follow it)", flush=True)
    spent_before, t0 = trainer.elapsed_s, time.perf_counter()
    last_checkpoint_s = trainer.elapsed_s
    upcoming = None
    while not trainer.done():
        batch = upcoming if upcoming is not None else batch_at(trainer.step)
        pending = trainer.launch(batch)
        # the next step's batch is read while the device runs this one (a pure function of the step
        # number, so resuming reads the same batches)
        upcoming = batch_at(trainer.step + 1)
        losses = trainer.finish(pending)
        trainer.elapsed_s = trainer.agree_elapsed(spent_before + time.perf_counter() - t0)
        step, final = trainer.step, trainer.done()
        if final:  # the host's rate again, before the final checkpoint carries it (outside the budget)
            host = trainer.record_host_end()
            if host:
                progress.printer(f"[train] host at the end: {host['precision']} matmul at "
                                 f"{host['matmul_tflops_end']:.3g} TFLOP/s", flush=True)
        if step % c.log_every == 0 or final:
            losses.update(progress.update(step, losses))
            if on_log:
                on_log(step, losses)
        if on_sample and (step % c.sample_every == 0 or final):
            on_sample(step, batch)
        due_by_time = c.checkpoint_every_s is not None and trainer.elapsed_s - last_checkpoint_s >= c.checkpoint_every_s
        if on_checkpoint and (step % c.checkpoint_every == 0 or due_by_time or final):
            on_checkpoint(step)
            last_checkpoint_s = trainer.elapsed_s
    return losses


# ----------------------------------------------------------------------------------------------
# Sample grids
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def sample_grid(generator: nn.Module, batch: dict, max_rows: int = 4) -> np.ndarray:
    """Rows of label (colour) | generated | real, as one uint8 image (H * rows, 3 W, 3)."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    n = min(max_rows, batch["image"].shape[0])
    if "input" in batch:
        x = batch["input"][:n].to(device)
        left = [to_rgb(x[i]) for i in range(n)]
        fake = generator(x)
    else:
        edge = batch.get("edge")
        fake = generator(batch["label"][:n].to(device), edge[:n].to(device) if edge is not None else None)
        left = [colour_labels(batch["label"][i]) for i in range(n)]
    generator.train(was_training)
    rows = [np.concatenate([left[i], to_rgb(fake[i]), to_rgb(batch["image"][i])], axis=1) for i in range(n)]
    return np.concatenate(rows, axis=0)
