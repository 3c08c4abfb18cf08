"""The in-process trainer: any generator (ASAP-Net, pix2pixHD, SPADE, slim variants) trained with one
discriminator and one loss recipe, with checkpoints, exact resume and an optional wall-clock budget.

    run = TrainingRun.from_params(load_params("params.yaml"), "data/prepared/facades-256x256", "spade")
    summary = train(run, Path("runs/spade"), device="cuda")     # or: asap train DATA --generator spade

One recipe for every architecture (paper Sec. 3.4, SPADE's): hinge GAN loss, discriminator feature
matching, perceptual loss, the multi-scale PatchGAN, Adam with TTUR. pix2pixHD's own paper used LSGAN;
training every generator with the same objective, discriminator and budget makes the comparison one
of generators, not of recipes (docs/baselines.md).

This module knows no Ray, MLflow or DVC: metrics go to ``<run_dir>/metrics.jsonl`` and to a callback.
The Ray Train stage (pipelines/train.py) uses ``build_trainer`` and ``asap.engine.train_loop`` inside
its workers and keeps only the Ray glue; the GPU campaign and the tests call ``train`` directly.

Run folder layout (``train``)::

    <run_dir>/run.json                    the resolved config that runs (refused if it differs)
    <run_dir>/checkpoints/step_NNNNNNN/state.pt   the newest ``keep_checkpoints`` training states
    <run_dir>/metrics.jsonl               one line per log interval (trimmed to the resumed step)
    <run_dir>/samples/step_NNNNNNN.png    label | generated | real rows every ``sample_every`` steps
    <run_dir>/generator.pt                the final generator (asap.models.checkpoint format)
    <run_dir>/summary.json                steps reached, seconds spent, what stopped training
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from asap.config import ConfigError, from_dict, require
from asap.data.prepared import DatasetInfo
from asap.engine import GANTrainer, TrainConfig, describe_graph, host_matmul_tflops, train_loop
from asap.files import exclusive
from asap.losses import GANLossConfig, build_perceptual_loss
from asap.models.checkpoint import ARCHS, arch_classes, build_generator, save_generator

STATE_FILE = "state.pt"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

# Keys of params.yaml's `train` section that say how a run is executed, not what it computes
# (RunnerConfig); the rest is TrainConfig.
CADENCE_KEYS = ("log_every", "checkpoint_every", "checkpoint_every_s", "sample_every")
EXECUTION_KEYS = ("cuda_graph", "perceptual_channels_last")  # how a step runs, not what it computes: not part of a run's identity


@dataclass(frozen=True)
class RunnerConfig:
    """How a training run is executed: the `train` section's keys beside TrainConfig's."""
    name: str = "asapnet"            # models/<name>/generator.pt of the ASAP-Net run
    num_workers: int = 1             # data-parallel workers (Ray Train); the global batch is batch_size x this
    use_gpu: str | bool = "auto"     # auto: GPUs when the Ray cluster has them
    cpus_per_worker: float = 1.0
    max_failures: int = 2            # worker failures survived (restart from the last checkpoint)
    keep_checkpoints: int = 2
    startup_timeout_s: float = 600.0  # on a cluster: how long to wait for the workers' resources

    def __post_init__(self):
        require(isinstance(self.name, str) and bool(NAME_PATTERN.match(self.name)),
                f"train.name must be a folder-safe name (letters, digits, _ . -), got {self.name!r}")
        for key in ("num_workers", "keep_checkpoints"):
            v = getattr(self, key)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                    f"train.{key} must be a positive integer, got {v!r}")
        require(isinstance(self.max_failures, int) and self.max_failures >= -1,
                f"train.max_failures must be an integer >= -1 (-1: retry forever), got {self.max_failures!r}")
        require(isinstance(self.cpus_per_worker, (int, float)) and self.cpus_per_worker > 0,
                f"train.cpus_per_worker must be a number > 0, got {self.cpus_per_worker!r}")
        require(self.use_gpu in ("auto", True, False),
                f"train.use_gpu must be auto, true or false, got {self.use_gpu!r}")
        require(isinstance(self.startup_timeout_s, (int, float)) and not isinstance(self.startup_timeout_s, bool)
                and self.startup_timeout_s >= 0,
                f"train.startup_timeout_s must be a number of seconds >= 0, got {self.startup_timeout_s!r}")


def split_train_section(section: dict | None) -> tuple[TrainConfig, RunnerConfig]:
    """params.yaml `train` -> (what shapes the weights and the cadence, how the run is executed)."""
    section = dict(section or {})
    runner_keys = {f for f in RunnerConfig.__dataclass_fields__}
    runner = from_dict(RunnerConfig, {k: section.pop(k) for k in list(section) if k in runner_keys},
                       "params.yaml train")
    tcfg = from_dict(TrainConfig, section, "params.yaml train")
    if tcfg.cuda_graph and runner.num_workers > 1:
        raise ConfigError(f"params.yaml train.cuda_graph captures the step of one process, but train.num_workers "
                          f"is {runner.num_workers} (DDP, whose gradient all-reduce a graph cannot hold): set "
                          "cuda_graph false, or num_workers 1")
    return tcfg, runner


# ----------------------------------------------------------------------------------------------
# Generators by architecture name
# ----------------------------------------------------------------------------------------------

def resolve_generator(arch: str, options: dict | None, info: DatasetInfo, where: str) -> dict:
    """Architecture name + options + what the dataset decides (classes, input kind, ...) -> the
    validated config dict of a generator that fits ``info``'s image size. Errors name ``where``
    (the params.yaml key) and the value."""
    from asap.models.asapnet import default_downsampling

    if arch not in ARCHS:
        raise ConfigError(f"{where}.arch: unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
    options = dict(options or {})
    clash = sorted(set(options) & set(info.model_kwargs()))
    if clash:
        raise ConfigError(f"{where}: {clash} come from the dataset ({info.name}), not from params; remove them")
    if arch == "asapnet" and options.get("downsampling") is None:
        options["downsampling"] = default_downsampling(info.height, info.width)
    config_type, _ = arch_classes(arch)
    try:
        config = from_dict(config_type, {**options, **info.model_kwargs()}, where)
    except TypeError as err:  # a required field missing, e.g. a typo'd name
        raise ConfigError(f"{where}: {err}") from None
    except ConfigError as err:
        raise ConfigError(err if where in str(err) else f"{where}: {err}") from None
    check_fits(arch, config, info.height, info.width, where)
    return config.to_dict()


def check_fits(arch: str, config, height: int, width: int, where: str) -> None:
    """Does a generator of this config take ``height`` x ``width`` images? A ConfigError if not."""
    if arch == "asapnet":
        try:
            config.check_size(height, width)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        return
    d = config.size_divisor
    if height % d or width % d:
        raise ConfigError(f"{where}: {arch} needs image sides divisible by {d}, but the dataset is {height}x{width}")
    if arch == "pix2pixhd" and min(height, width) < 2 * d:
        raise ConfigError(f"{where}: pix2pixhd needs both sides >= {2 * d} (its bottleneck is 1/{d}); "
                          f"the dataset is {height}x{width}: lower n_downsampling")
    if arch == "spade" and (height // d) * (width // d) < 2:
        raise ConfigError(f"{where}: spade's 1/{d} grid of a {height}x{width} image has one cell; "
                          "InstanceNorm needs two: use a larger dataset size")


def generator_options(p: dict, name: str) -> tuple[str, dict, str]:
    """(arch, options, params key) of generator ``name``: train.name (ASAP-Net, the `model` section)
    or a key of the `baselines` section ({arch: ..., plus the arch config's fields})."""
    _, runner = split_train_section(p.get("train"))
    baselines = p.get("baselines") or {}
    if not isinstance(baselines, dict):
        raise ConfigError(f"params.yaml baselines must be a mapping of name: {{arch: ..., ...}}, got {baselines!r}")
    if name == runner.name:
        if name in baselines:
            raise ConfigError(f"params.yaml baselines.{name} has the name of the ASAP-Net run (train.name); rename it")
        return "asapnet", dict(p.get("model") or {}), "params.yaml model"
    if name not in baselines:
        raise ConfigError(f"generator {name!r} is neither train.name ({runner.name!r}) nor a key of params.yaml "
                          f"baselines (known: {sorted(baselines)})")
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"params.yaml baselines: {name!r} is not a folder-safe name (letters, digits, _ . -)")
    entry = dict(baselines[name] or {})
    if "repeat" in entry:  # another seed of a generator: its arch and options, checked in repeat_of
        target, _ = repeat_of(p, name)
        return generator_options(p, target)
    if "arch" not in entry:
        raise ConfigError(f"params.yaml baselines.{name} needs an `arch` ({', '.join(a for a in ARCHS if a != 'asapnet')})")
    return entry.pop("arch"), entry, f"params.yaml baselines.{name}"


def repeat_of(p: dict, name: str) -> tuple[str | None, int | None]:
    """(generator, seed) when baselines.<name> is ``{repeat: <generator>, seed: N}``: that generator's
    config trained again with ``train.seed`` N, which measures the run-to-run noise every figure marks.
    (None, None) for any other generator."""
    entry = (p.get("baselines") or {}).get(name)
    if not isinstance(entry, dict) or "repeat" not in entry:
        return None, None
    where = f"params.yaml baselines.{name}"
    extra = sorted(set(entry) - {"repeat", "seed"})
    if extra:
        raise ConfigError(f"{where}: a repeat takes only `repeat` and `seed`, got {extra} too (a changed config is "
                          f"a baseline of its own: give it an `arch`)")
    target, seed = entry["repeat"], entry.get("seed")
    tcfg, runner = split_train_section(p.get("train"))
    others = p.get("baselines") or {}
    if target != runner.name and (target not in others or "repeat" in (others[target] or {})):
        raise ConfigError(f"{where}.repeat: {target!r} is neither train.name ({runner.name!r}) nor a baseline "
                          f"with an arch (known: {sorted(k for k, v in others.items() if 'repeat' not in (v or {}))})")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{where}.seed must be a non-negative integer, got {seed!r}")
    if seed == tcfg.seed:
        raise ConfigError(f"{where}.seed is {seed}, the seed {target!r} trains with (train.seed): it would repeat "
                          f"the same run, not measure the noise; pick another seed")
    return target, seed


# ----------------------------------------------------------------------------------------------
# One training run
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingRun:
    """Everything that decides what a training run computes, resolved and validated."""
    name: str                        # models/<name>/, and the run's name
    arch: str                        # asapnet | pix2pixhd | spade (asap.models.checkpoint.ARCHS)
    generator: dict                  # the architecture's config (to_dict), dataset fields included
    train: TrainConfig
    loss: GANLossConfig
    dataset: str                     # prepared dataset name, <dataset>-<H>x<W>
    data_root: str                   # its folder (absolute)
    world_size: int = 1              # data-parallel workers: the global batch is train.batch_size x this

    @classmethod
    def from_params(cls, p: dict, data_root: str | Path, name: str | None = None,
                    world_size: int | None = None) -> "TrainingRun":
        """Resolve generator ``name`` (default: train.name) of params.yaml ``p`` on a prepared dataset."""
        tcfg, runner = split_train_section(p.get("train"))
        name = name or runner.name
        arch, options, where = generator_options(p, name)
        _, seed = repeat_of(p, name)
        if seed is not None:
            tcfg = replace(tcfg, seed=seed)
        info = DatasetInfo.load(data_root)
        return cls(name=name, arch=arch, generator=resolve_generator(arch, options, info, where), train=tcfg,
                   loss=from_dict(GANLossConfig, p.get("loss") or {}, "params.yaml loss"),
                   dataset=info.name, data_root=str(Path(data_root).resolve()),
                   world_size=runner.num_workers if world_size is None else world_size)

    def identity(self) -> dict:
        """What shapes the weights: the run's checkpoints are valid for exactly this (cadence aside)."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in CADENCE_KEYS + EXECUTION_KEYS}
        return {"dataset": self.dataset, "arch": self.arch, "generator": self.generator, "train": train,
                "loss": self.loss.to_dict(), "world_size": self.world_size}

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]

    def run_name(self, prefix: str = "train") -> str:
        return f"{prefix}-{self.name}-{self.dataset}-{self.digest()}"

    def to_dict(self) -> dict:
        return {"name": self.name, "arch": self.arch, "generator": self.generator, "train": self.train.to_dict(),
                "loss": self.loss.to_dict(), "dataset": self.dataset, "data_root": self.data_root,
                "world_size": self.world_size}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingRun":
        return cls(name=d["name"], arch=d["arch"], generator=dict(d["generator"]), train=TrainConfig(**d["train"]),
                   loss=GANLossConfig(**d["loss"]), dataset=d["dataset"], data_root=d["data_root"],
                   world_size=int(d.get("world_size", 1)))

    def flat_params(self) -> dict[str, str]:
        """The config that runs, flat, for a tracking store: arch, model.*, train.*, loss.*."""
        out = {"arch": self.arch, "dataset": self.dataset, "train.world_size": self.world_size,
               "train.global_batch": self.train.batch_size * self.world_size}
        out.update({f"model.{k}": v for k, v in self.generator.items()})
        out.update({f"train.{k}": v for k, v in self.train.to_dict().items()})
        out.update({f"loss.{k}": v for k, v in self.loss.to_dict().items()})
        return {k: str(v) for k, v in out.items()}


def build_trainer(run: TrainingRun, device: str | torch.device = "cpu",
                  wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                  trainer_class: type[GANTrainer] = GANTrainer) -> GANTrainer:
    """G (by architecture), the multi-scale discriminator on concat(input, image), the perceptual
    network and both optimisers. Seeded, so every data-parallel rank starts from the same weights.
    ``trainer_class``: a GANTrainer with another step (benchmarks/training.py times the authors')."""
    from asap.models.discriminator import DiscriminatorConfig, MultiscaleDiscriminator

    torch.manual_seed(run.train.seed)
    generator = build_generator(run.arch, run.generator)
    c = run.train
    discriminator = MultiscaleDiscriminator(DiscriminatorConfig.for_inputs(
        generator.config.in_channels, ndf=c.ndf, n_layers=c.d_layers, num_scales=c.d_scales))
    return trainer_class(generator, discriminator, c, run.loss, build_perceptual_loss(run.loss), device, wrap=wrap)


def generator_meta(run: TrainingRun, step: int, elapsed_s: float, **extra) -> dict:
    """The meta stored with a trained generator checkpoint: what it is, and the budget it got."""
    info = DatasetInfo.load(run.data_root)
    return {"name": run.name, "arch": run.arch, "dataset": run.dataset, "height": info.height, "width": info.width,
            "steps": step, "train_seconds": round(elapsed_s, 1), "time_budget_s": run.train.time_budget_s,
            "stopped_by": "steps" if step >= run.train.steps else "time_budget",
            "global_batch": run.train.batch_size * run.world_size, **extra}


# ----------------------------------------------------------------------------------------------
# Checkpoints of the in-process trainer
# ----------------------------------------------------------------------------------------------

def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoint folders (``step_NNNNNNN``), newest first; half-written ``.tmp`` ones left by
    a kill are not checkpoints."""
    folder = Path(run_dir) / "checkpoints"
    found = [d for d in folder.glob("step_*") if re.fullmatch(r"step_\d+", d.name)] if folder.is_dir() else []
    return sorted(found, reverse=True)


def write_checkpoint(trainer: GANTrainer, folder: Path, **meta) -> None:
    """``state.pt`` plus ``meta.json`` with the step, seconds spent and the state file's SHA-256, so a
    damaged file is recognised before it is loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save(folder / STATE_FILE)
    digest = hashlib.sha256((folder / STATE_FILE).read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps({"step": trainer.step, "elapsed_s": trainer.elapsed_s,
                                                   "sha256": digest, **meta}))


def load_checkpoint(trainer: GANTrainer, folder: Path) -> None:
    """Load ``folder``'s state into ``trainer`` after checking it against the recorded SHA-256."""
    path = Path(folder) / STATE_FILE
    meta_path = Path(folder) / "meta.json"
    if meta_path.is_file():
        expected = json.loads(meta_path.read_text()).get("sha256")
        if expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise OSError("its bytes do not match the SHA-256 recorded when it was written")
    trainer.load(path)


def load_newest_good(trainer: GANTrainer, folders: list[Path], printer=print) -> Path | None:
    """Load the first of ``folders`` (newest first) that loads; each bad one (truncated, corrupt,
    missing) is named in one line and skipped. Returns the folder loaded, or None."""
    for folder in folders:
        try:
            load_checkpoint(trainer, folder)
            return Path(folder)
        except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:
            printer(f"[train] warning: checkpoint {Path(folder) / STATE_FILE} does not load ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:200]}); trying the one before it", flush=True)
    return None


def save_checkpoint(trainer: GANTrainer, run_dir: Path, keep: int) -> Path:
    """A new checkpoint folder (written under a temporary name, then renamed: a kill never leaves a
    half-written folder), then the oldest beyond ``keep`` removed."""
    folder = Path(run_dir) / "checkpoints" / f"step_{trainer.step:07d}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_checkpoint(trainer, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in checkpoint_dirs(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint a resume starts from)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _claim_run_dir(run: TrainingRun, run_dir: Path) -> None:
    """Write run.json, or check that an existing one describes this run (never mix two runs' files)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("identity") != json.loads(json.dumps(run.identity())):
            raise ConfigError(f"{run_dir} holds another training run (its run.json differs from this config); "
                              "give another run folder, or remove that one to start afresh")
    path.write_text(json.dumps({"run": run.to_dict(), "identity": run.identity(), "digest": run.digest()},
                               indent=2, sort_keys=True) + "\n")


def train(run: TrainingRun, run_dir: str | Path, *, device: str | torch.device = "cpu",
          keep_checkpoints: int = 2, out: str | Path | None = None,
          on_log: Callable[[int, dict], None] | None = None,
          on_sample: Callable[[int, dict], None] | None = None,
          printer=print, meta: dict | None = None) -> dict:
    """Train ``run`` in this process, resuming from the newest good checkpoint in ``run_dir``.
    Writes the final generator to ``out`` (default ``run_dir/generator.pt``) and returns the summary
    (also ``run_dir/summary.json``). One process at a time: a second gets a clear error.
    ``keep_checkpoints=0`` writes no training checkpoints at all (nothing to resume from; for one-shot
    runs such as the GPU campaign, where a full-width state is gigabytes)."""
    run_dir = Path(run_dir)
    require(run.world_size == 1, f"the in-process trainer runs one worker; this run has world_size "
                                 f"{run.world_size} (use the Ray Train stage, or train.num_workers: 1)")
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(run_dir / "lock", f"training into {run_dir}"):
        return _train_locked(run, run_dir, device=device, keep_checkpoints=keep_checkpoints, out=out,
                             on_log=on_log, on_sample=on_sample, printer=printer, meta=meta)


def _train_locked(run: TrainingRun, run_dir: Path, *, device, keep_checkpoints, out, on_log, on_sample, printer,
                  meta) -> dict:
    from asap.data.prepared import PreparedDataset

    _claim_run_dir(run, run_dir)
    device = torch.device(device)
    dataset = PreparedDataset(run.data_root, "train")
    trainer = build_trainer(run, device)
    metrics_file = run_dir / "metrics.jsonl"
    for leftover in (run_dir / "checkpoints").glob("step_*.tmp"):  # half-written when a kill came
        shutil.rmtree(leftover, ignore_errors=True)
    candidates = checkpoint_dirs(run_dir)
    resumed = load_newest_good(trainer, candidates, printer)
    if candidates and resumed is None:
        raise ConfigError(f"no checkpoint in {run_dir / 'checkpoints'} loads (each is named above); remove that "
                          "folder to start this run afresh")
    resumed_step = trainer.step
    if resumed is not None:
        printer(f"[train] resuming {run.name} from step {trainer.step} ({trainer.elapsed_s:.0f} s spent) "
                f"of {resumed}", flush=True)
        note = trainer.describe_code_change(run_dir)
        if note:
            printer(f"[train] note: {note}", flush=True)
    _trim_metrics(metrics_file, trainer.step)
    budget = (f"{run.train.time_budget_s:g} s (at most {run.train.steps} steps)"
              if run.train.time_budget_s is not None else f"{run.train.steps} steps")
    printer(f"[train] {run.name} ({run.arch}) on {run.dataset}, {device}: {budget}; run folder {run_dir}", flush=True)

    last: dict = {}

    def log(step: int, losses: dict) -> None:
        last.update(losses)
        with open(metrics_file, "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in losses.items()}}) + "\n")
        if on_log:
            on_log(step, losses)

    def sample(step: int, batch: dict) -> None:
        from PIL import Image

        from asap.engine import sample_grid

        (run_dir / "samples").mkdir(exist_ok=True)
        Image.fromarray(sample_grid(trainer.generator, batch)).save(run_dir / "samples" / f"step_{step:07d}.png")

    t0 = time.perf_counter()
    if not trainer.done():
        train_loop(trainer, dataset, on_log=log, on_sample=on_sample or sample, printer=printer,
                   on_checkpoint=(lambda step: save_checkpoint(trainer, run_dir, keep_checkpoints))
                   if keep_checkpoints > 0 else None)
    out = Path(out) if out is not None else run_dir / "generator.pt"
    from asap.metrics.runtime import device_info, device_slug

    host_rate = host_matmul_tflops(trainer.host_history, trainer.step)
    save_generator(out, trainer.generator, meta=generator_meta(run, trainer.step, trainer.elapsed_s,
                                                               run_name=run.run_name(),
                                                               train_device=device_slug(device_info(device)),
                                                               cuda_graph=describe_graph(trainer.graph_status()),
                                                               code_history=trainer.code_record(),
                                                               host_history=trainer.host_history,
                                                               host_matmul_tflops=host_rate,
                                                               **(meta or {})))
    summary = {"name": run.name, "arch": run.arch, "steps": trainer.step, "train_seconds": round(trainer.elapsed_s, 2),
               "time_budget_s": run.train.time_budget_s, "stopped_by": trainer.stopped_by(),
               "this_session_s": round(time.perf_counter() - t0, 2), "resumed_from_step": resumed_step,
               "generator": str(out), "cuda_graph": trainer.graph_status(), "code_history": trainer.code_record(),
               "host_history": trainer.host_history, "host_matmul_tflops": host_rate,
               **{f"final_{k}": v for k, v in last.items()}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    printer(f"[train] {run.name}: {trainer.step} steps in {trainer.elapsed_s:.1f} s (stopped by "
            f"{summary['stopped_by'].replace('_', ' ')}); wrote {out}", flush=True)
    return summary

