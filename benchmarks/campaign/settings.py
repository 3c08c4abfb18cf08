"""The campaign's settings: the real ones (one H100/H200, at most 9 minutes in all) and the smoke ones
(every phase on a CPU in seconds). Typed and validated once; each phase file records its own part.

Time plan of the real run (seconds from the start; the global deadline is ``deadline_s``):

    phase 1  correctness  cap 100  pytest -m gpu (Triton compiles ~30 kernels: most of it) + error table
    phase 2  inference    cap 120  4 sizes x ASAP-Net {reference, fast} x {fp32, bf16}, then 4 baselines
    phase 3  training     cap  60  2 sizes x batch {1, 8} x {bf16, fp32}, ours vs the authors' way
    phase 4  quality      the rest: 3 generators x (budget + ~20 s of set-up, final checkpoint, translation)

Phases 1-3 stop starting new measurements at their cap, or earlier when what is left would no longer
give phase 4 ``min_budget_s`` per generator. Phase 4 then gives every generator the same budget:
``budget_s``, or less when the deadline would not fit three of it (stated in its file).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from asap.config import ConfigError, require


@dataclass(frozen=True)
class CorrectnessSettings:
    """Phase 1: the gpu-marked tests of tests/test_pixelwise_fused.py, then each case's error."""
    pytest_timeout_s: float = 80.0                  # the pytest subprocess is killed after this
    pytest_workers: int = 12                        # pytest-xdist processes (Triton compiles side by side;
                                                    # the H200 machine has 16 cores: 8 took 73 s of the 100)
    cases: tuple[str, ...] | None = None            # error-table cases; None: every case (GPU)
    interpreter_cases: tuple[str, ...] = ("index_S8_fp32", "index_S8_bf16", "index_S8_fp16", "tent_onehot_f2",
                                          "fast_generator_fp32", "grad_index_S8_bf16",
                                          "norm_chunks_bf16")  # CPU, TRITON_INTERPRET=1


@dataclass(frozen=True)
class InferenceSettings:
    """Phase 2: batch-1 latency and batch-B throughput, reference vs fast path, and the baselines."""
    sizes: tuple[str, ...] = ("256x512", "512x1024", "512x512", "1024x1024")  # paper Fig. 1
    num_classes: dict = field(default_factory=lambda: {"256x512": 35, "512x1024": 35, "512x512": 13,
                                                       "1024x1024": 13})  # Cityscapes 35, facades 13
    lr_max_width: int = 1024        # Sec. 3.2 / the authors' code
    downsampling: int | None = None  # S; None: Sec. 3.2's default for the size (short side / 16)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    batch: int = 8                  # the throughput figure's batch
    warmup: int = 10                # batch-1 untimed calls (cuDNN autotuning, graph capture)
    iters: int = 30                 # batch-1 timed calls
    batch_warmup: int = 1           # the first call autotunes cuDNN / captures the batch-B graph
    batch_iters: int = 5
    split_iters: int = 20           # low-res / pixelwise split timings
    baseline_warmup: int = 3        # pix2pixHD / SPADE take 10-100 ms a call at these sizes: fewer calls
    baseline_iters: int = 15
    baselines: dict = field(default_factory=lambda: {
        "pix2pixhd": {"arch": "pix2pixhd"}, "pix2pixhd-slim": {"arch": "pix2pixhd", "width_mult": 0.5},
        "spade": {"arch": "spade"}, "spade-slim": {"arch": "spade", "width_mult": 0.5}})
    profile_iters: int = 5          # fast rows: eager forwards under torch.profiler, where the time goes (0: off)
    profile_reserve_s: float = 20.0  # of the phase's time, kept for the profiles (last, in a child process)
    profile_precisions: tuple[str, ...] = ("bf16",)  # the rows the speed targets read
    copy_mib: int = 1024            # device-to-device copy for the bandwidth ceiling (read + write counted)
    copy_iters: int = 20
    peak_n: int | None = None       # the matmul peak's square side (benchmarks/roofline.py; None: by device)
    compile: bool = False           # also a torch.compile'd fast path (minutes of compile: off by default)


@dataclass(frozen=True)
class TrainingStepSettings:
    """Phase 3: benchmarks.training, ours vs the authors' way, in the same run."""
    sizes: tuple[str, ...] = ("256x256", "512x512")
    batches: tuple[int, ...] = (1, 8)
    precisions: tuple[str, ...] = ("bf16", "fp32")
    iters: int = 6
    warmup: int = 3
    lr_max_width: int = 1024
    ndf: int = 64
    perceptual: str = "hed-vgg16"
    peak_n: int | None = None       # the matmul peak's square side (benchmarks/roofline.py; None: by device)
    channels_last: tuple[str, ...] = ("bf16",)  # precisions whose rows also time ours with the perceptual
                                    # network channels-last (train.perceptual_channels_last): tensor cores' layout
    profile_iters: int = 2          # ours' eager step under torch.profiler: where its time goes (0: off)
    profile_reserve_s: float = 15.0  # of the phase's time, kept for the profiles (last, in a child process)
    profile_sizes: tuple[str, ...] = ("256x256",)   # phase 4's size
    profile_precisions: tuple[str, ...] = ("bf16",)  # phase 4's precision


@dataclass(frozen=True)
class QualitySettings:
    """Phase 4: equal wall-clock training of ASAP-Net, pix2pixHD and SPADE, then the test translations."""
    budget_s: float = 100.0         # training seconds per generator (train.time_budget_s)
    min_budget_s: float = 30.0      # below this per generator, phase 4 is skipped (and says so)
    overhead_s: float = 20.0        # per generator beside the budget: data, build, final checkpoint, translate
    generators: tuple[str, ...] = ("asapnet", "pix2pixhd", "spade")
    model: dict = field(default_factory=lambda: {"lr_max_width": 1024})           # params.yaml model over
    baselines: dict = field(default_factory=lambda: {"pix2pixhd": {"arch": "pix2pixhd", "width_mult": 1.0},
                                                     "spade": {"arch": "spade", "width_mult": 1.0}})
    train: dict = field(default_factory=lambda: {"ndf": 64, "batch_size": 1, "mixed_precision": True,
                                                 "log_every": 250})               # params.yaml train over
    loss: dict = field(default_factory=lambda: {"perceptual": "hed-vgg16"})
    translate_batch: int = 8
    timing_warmup: int = 10         # batch-1 latency of each trained generator at the training size
    timing_iters: int = 40


@dataclass(frozen=True)
class CampaignSettings:
    smoke: bool
    deadline_s: float               # the whole command; the device call's limit is 600 s
    caps: dict                      # phase -> seconds it may take at most (phase 4: what is left)
    correctness: CorrectnessSettings
    inference: InferenceSettings
    training: TrainingStepSettings
    quality: QualitySettings
    caps_alone: dict = field(default_factory=dict)  # caps for a run without phase 4 (a first call)

    def __post_init__(self):
        require(self.deadline_s > 0, f"deadline must be > 0 seconds, got {self.deadline_s!r}")
        q = self.quality
        require(q.budget_s > 0 and q.min_budget_s > 0,
                f"budget must be > 0 seconds, got budget {q.budget_s!r}, minimum {q.min_budget_s!r}")

    def cap(self, phase: int, phases: tuple[int, ...]) -> float:
        """Seconds ``phase`` may take at most in a run of ``phases``: ``caps_alone`` when phase 4 is
        not among them (it then needs no reserve, and gets its own device call)."""
        return self.caps[phase] if 4 in phases else self.caps_alone.get(phase, self.caps[phase])

    def phase4_reserve(self) -> float:
        """Seconds phases 1-3 must leave: phase 4 at its minimum budget."""
        q = self.quality
        return len(q.generators) * (q.min_budget_s + q.overhead_s)

    def to_dict(self) -> dict:
        return asdict(self)


def real_settings(budget_s: float = 100.0, deadline_s: float = 540.0, compile: bool = False) -> CampaignSettings:
    return CampaignSettings(
        smoke=False, deadline_s=deadline_s, caps={1: 100.0, 2: 120.0, 3: 60.0},
        # phase 3 times ours eagerly, as one CUDA graph and (bf16 rows) with the VGG channels-last, and
        # the authors' way: 60 s ran 8 rows of two ways with no room left
        caps_alone={3: 130.0},
        correctness=CorrectnessSettings(), inference=InferenceSettings(compile=compile),
        training=TrainingStepSettings(), quality=QualitySettings(budget_s=budget_s))


# Smoke: the same code paths at toy sizes, so a CPU runs all four phases in well under a minute.
# S = 16 keeps the tile count, and so the Triton interpreter's program count, small.
SMOKE_ASAPNET = {"lr_width": 8, "lr_max_width": 16, "lr_depth": 1, "mlp_width": 16, "downsampling": 16}


def smoke_settings(budget_s: float = 2.0, deadline_s: float = 240.0) -> CampaignSettings:
    tiny_baselines = {"pix2pixhd": {"arch": "pix2pixhd", "width_mult": 0.0625},
                      "spade": {"arch": "spade", "width_mult": 0.0625}}
    return CampaignSettings(
        smoke=True, deadline_s=deadline_s, caps={1: 60.0, 2: 60.0, 3: 70.0},
        correctness=CorrectnessSettings(pytest_timeout_s=60.0, pytest_workers=2, cases=()),
        inference=InferenceSettings(sizes=("32x64",), num_classes={"32x64": 5}, lr_max_width=16, downsampling=16, batch=2,
                                    warmup=0, iters=1, batch_warmup=0, batch_iters=1, split_iters=1,
                                    baseline_warmup=0, baseline_iters=1,
                                    baselines={**tiny_baselines, "spade-slim": {"arch": "spade", "width_mult": 0.03125}},
                                    profile_iters=1, profile_reserve_s=20.0, copy_mib=4, copy_iters=2,
                                    peak_n=256),
        training=TrainingStepSettings(sizes=("32x32",), batches=(2,), precisions=("bf16", "fp32"), iters=1, warmup=0,
                                      lr_max_width=16, ndf=8, peak_n=256, profile_iters=1, profile_sizes=("32x32",),
                                      profile_reserve_s=20.0),
        quality=QualitySettings(budget_s=budget_s, min_budget_s=min(1.0, budget_s), overhead_s=5.0,
                                model=SMOKE_ASAPNET, baselines=tiny_baselines,
                                train={"ndf": 8, "d_layers": 2, "batch_size": 1, "log_every": 5},
                                translate_batch=16, timing_warmup=0, timing_iters=1))


def parse_phases(text: str) -> tuple[int, ...]:
    """"1,2,3,4" -> (1, 2, 3, 4): the phases to run, in that order."""
    try:
        phases = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"--phases must be comma-separated phase numbers from 1..4, got {text!r}") from None
    bad = [p for p in phases if p not in (1, 2, 3, 4)]
    require(bool(phases) and not bad and len(set(phases)) == len(phases),
            f"--phases must list distinct phases from 1 (correctness), 2 (inference), 3 (training), "
            f"4 (quality), got {text!r}")
    return phases
