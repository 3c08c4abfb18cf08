"""Phase 4: equal-time quality. ASAP-Net, pix2pixHD and SPADE each train for the same wall-clock
budget with the in-process trainer (asap.training.train: one recipe, one discriminator, one loss for
every generator) on the carried facades data, then translate the test label maps; the images come
back as one ``images-<name>.npz`` per generator, and ``python -m benchmarks.gpu_campaign score``
scores them on the CPU (FID, KID, pixel accuracy, mIoU, the real-versus-real floor).

The run configs start from params.yaml's model / train / loss sections and override what the GPU
campaign decides (the paper's widths, the budget, no intermediate checkpoints); each generator's
resolved config is recorded in the phase file. Training folders live in a scratch folder (RAM-backed
/dev/shm when it has room: the final training state of pix2pixHD alone is ~2 GB) and are deleted
after each generator; only images and numbers leave the machine.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from asap.files import file_sha1
from asap.images import to_uint8
from asap.metrics.runtime import precision_mode
from benchmarks.campaign.common import REPO, RESULT_FILE_LIMIT, images_file, log
from benchmarks.campaign.settings import QualitySettings

NO_CHECKPOINTS = 10**9  # checkpoint/sample cadence beyond any budget: only the final step's are written


def campaign_params(settings: QualitySettings, budget_s: float, params_path: Path | None = None,
                    cuda_graph: bool = False) -> dict:
    """params.yaml's model / train / loss sections with the campaign's overrides, and its generators;
    ``cuda_graph``: every generator trains with its step replayed as one CUDA graph."""
    path = params_path or REPO / "params.yaml"
    base = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    train = {**(base.get("train") or {}), **settings.train,
             "name": "asapnet", "time_budget_s": float(budget_s), "steps": NO_CHECKPOINTS, "num_workers": 1,
             "checkpoint_every": NO_CHECKPOINTS, "checkpoint_every_s": None, "sample_every": NO_CHECKPOINTS,
             "keep_checkpoints": 1, "cuda_graph": bool(cuda_graph)}
    return {"model": {**(base.get("model") or {}), **settings.model}, "train": train,
            "loss": {**(base.get("loss") or {}), **settings.loss}, "baselines": dict(settings.baselines)}


def test_labels(data_root: Path) -> tuple[list[str], np.ndarray]:
    """The test label maps, sorted by stem: (stems, (N, H, W) uint8 class indices)."""
    info = json.loads((data_root / "dataset.json").read_text())
    files = sorted((data_root / "test" / "labels").glob("*.png"))
    expected = info["splits"]["test"]
    if len(files) != expected:
        raise FileNotFoundError(f"{data_root}/test/labels holds {len(files)} label maps, dataset.json says "
                                f"{expected}: re-run `python -m benchmarks.gpu_campaign pack`")
    labels = np.stack([np.asarray(Image.open(f)) for f in files])
    if labels.shape[1:] != (info["height"], info["width"]):
        raise ValueError(f"{data_root}: label maps are {labels.shape[1:]}, dataset.json says "
                         f"{info['height']}x{info['width']}")
    return [f.stem for f in files], labels


def scratch_folder() -> Path:
    """RAM-backed /dev/shm when it has 20 GB free (training states are GBs), else the temp folder."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and shutil.disk_usage(shm).free > 20e9:
            return Path(tempfile.mkdtemp(prefix="asap-campaign-", dir=shm))
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="asap-campaign-"))


@torch.inference_mode()
def translate(generator: torch.nn.Module, labels: np.ndarray, batch: int, device: torch.device) -> np.ndarray:
    """(N, H, W) class indices -> (N, H, W, 3) uint8 images (fp32, TF32 off)."""
    out = []
    with precision_mode("fp32", device):
        for start in range(0, len(labels), batch):
            x = torch.from_numpy(labels[start:start + batch]).long().to(device)
            out.append(to_uint8(generator(x)))
    return np.concatenate(out)


MAX_FAST_LEVEL_DIFF = 32  # 8-bit levels a fast path may differ from the reference images and still be timed


def latency(generator, arch: str, labels: np.ndarray, settings: QualitySettings, device: torch.device,
            reference_images: np.ndarray) -> dict:
    """Batch-1 latency of the trained generator at the training size: reference fp32 and bf16
    autocast, and for ASAP-Net the fast path in both precisions (with its largest pixel difference
    from the reference images, in 8-bit levels)."""
    from asap.metrics.runtime import time_module

    x = torch.from_numpy(labels[:1]).long().to(device)
    timing = dict(warmup=settings.timing_warmup, iters=settings.timing_iters, device=device)
    out = {}
    for precision in ("fp32", "bf16"):
        with precision_mode(precision, device):
            out[f"reference_{precision}_ms"] = time_module(generator, x, **timing)["median_ms"]
    if arch == "asapnet":
        from asap.models.fast import FastGenerator

        for precision in ("fp32", "bf16"):
            fast = FastGenerator(generator, precision)
            with precision_mode("fp32", device):
                out[f"fast_{precision}_ms"] = time_module(fast, x, **timing)["median_ms"]
                img = to_uint8(fast(x))
            out[f"fast_{precision}_max_level_diff"] = int(np.abs(img.astype(int) - reference_images[:1]).max())
            out["fast_fused_kernel"] = fast.fused
            out["fast_fused_norm"] = fast.fused_norm
            del fast
    # a fast path counts for the speed target only where it drew the reference's image: a broken kernel
    # must not make ASAP-Net look fast (bf16 moves a trained generator's pixels by a few 8-bit levels)
    agree = {k: v for k, v in out.items() if k.endswith("_ms") and
             out.get(k.replace("_ms", "_max_level_diff"), 0) <= MAX_FAST_LEVEL_DIFF}
    out["best_ms"] = min(agree.values())
    out["best"] = min(agree, key=agree.get).removesuffix("_ms")
    return out


def pack_images(path: Path, images: np.ndarray, stems: list[str], meta: dict) -> dict:
    """One compressed .npz of uint8 images (N, H, W, 3), their stems and a JSON meta string."""
    np.savez_compressed(path, images=images, stems=np.array(stems), meta=np.array(json.dumps(meta)))
    size = path.stat().st_size
    if size > RESULT_FILE_LIMIT:
        raise RuntimeError(f"{path.name} is {size / 1e6:.1f} MB, over the {RESULT_FILE_LIMIT / 1e6:.0f} MB a result "
                           "file may have: translate fewer or smaller images")
    return {"file": path.name, "bytes": size, "sha1": file_sha1(path), "count": int(images.shape[0]),
            "shape": list(images.shape[1:]), "dtype": str(images.dtype)}


def warm_up(device: torch.device) -> None:
    """CUDA context and cuDNN handles before the first budget starts, so no generator pays for them."""
    if device.type == "cuda":
        x = torch.randn(1, 8, 64, 64, device=device)
        torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3, device=device), padding=1).sum().item()


def run_phase(settings: QualitySettings, budget_s: float, data_root: Path, out_dir: Path, device: torch.device,
              commit: dict, on_progress=None, cuda_graph: bool = False) -> dict:
    from asap.models.checkpoint import load_generator
    from asap.training import TrainingRun, train

    data_root = Path(data_root)
    params = campaign_params(settings, budget_s, cuda_graph=cuda_graph)
    stems, labels = test_labels(data_root)
    info = json.loads((data_root / "dataset.json").read_text())
    scratch = scratch_folder()
    saved_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"  # the same for every generator
    warm_up(device)
    result = {"dataset": info["name"], "data_root": str(data_root), "budget_s": budget_s, "scratch": str(scratch),
              "test_images": len(stems), "cudnn_benchmark": torch.backends.cudnn.benchmark,
              "params": params, "generators": {}}
    try:
        for name in settings.generators:
            log(f"[phase 4] {name}: training for {budget_s:.0f} s on {info['name']}")
            t0 = time.perf_counter()
            entry: dict = {}
            result["generators"][name] = entry
            try:
                run = TrainingRun.from_params(params, data_root, name)
                entry.update(arch=run.arch, config=run.to_dict())
                summary = train(run, scratch / name, device=device, keep_checkpoints=0,
                                printer=lambda *a, **k: print("[phase 4]", *a, flush=True),
                                meta={"campaign_commit": commit.get("commit")})
                entry["summary"] = {k: v for k, v in summary.items() if k != "generator"}
                entry["train_call_s"] = round(time.perf_counter() - t0, 2)
                generator, meta = load_generator(scratch / name / "generator.pt")
                generator = generator.to(device).eval()
                entry["params"] = sum(p.numel() for p in generator.parameters())
                t1 = time.perf_counter()
                images = translate(generator, labels, settings.translate_batch, device)
                entry["translate_s"] = round(time.perf_counter() - t1, 2)
                entry["image_mean"], entry["image_std"] = float(images.mean()), float(images.std())
                entry["latency_train_size"] = latency(generator, run.arch, labels, settings, device, images)
                entry["images"] = pack_images(out_dir / images_file(name), images, stems, {
                    "name": name, "arch": run.arch, "dataset": info["name"], "steps": summary["steps"],
                    "train_seconds": summary["train_seconds"], "budget_s": budget_s,
                    "commit": commit.get("commit")})
                del generator
            except Exception as err:  # one generator failing leaves the others' results
                import traceback
                entry["error"] = f"{type(err).__name__}: {str(err)[:500]}"
                entry["traceback"] = traceback.format_exc()[-2000:]
                log(f"[phase 4] {name}: ERROR {entry['error']}")
            shutil.rmtree(scratch / name, ignore_errors=True)  # GBs of training state: never kept
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            entry["wall_s"] = round(time.perf_counter() - t0, 2)
            entry["overhead_s"] = round(entry["wall_s"] - (entry.get("summary", {}).get("train_seconds") or 0.0), 2)
            s = entry.get("summary", {})
            log(f"[phase 4] {name}: {s.get('steps')} steps in {s.get('train_seconds')} s "
                f"({entry['wall_s']} s in all)")
            if on_progress:
                on_progress(result)
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
        shutil.rmtree(scratch, ignore_errors=True)
    done = [g for g in result["generators"].values() if "images" in g]
    result["ok"] = len(done) == len(settings.generators)
    return result
