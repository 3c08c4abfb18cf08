"""Scoring a generator as the paper does (Sec. 4.1): FID against the real test photos, and the pixel
accuracy / mIoU of a segmentation network run on the generated test images; the same segmenter on the
real test photos gives the ceiling those scores can reach.

    result = evaluate_generator(generator, "data/prepared/facades-256x256", segmenter,
                                batch_size=8, device="cpu", real_stats_cache="data/cache")
    result["fid"], result["kid_mean"], result["pixel_acc"], result["miou"], result["per_class"]

Everything streams over the test split one batch at a time: a generated batch goes through Inception
(pytorch-fid preprocessing, asap/metrics/fid.py) and through the segmenter, and only its 2048-d
features and the confusion matrix are kept. Inception at 299x299 is the cost on a CPU (about 0.3 s per
image on 2 cores), so images are batched and the real photos' features are cached per prepared
dataset. KID is reported beside FID: the facades test split has 60 images and FID is biased at that size.

Also here: the scoring segmenter's training recipe (``SegmenterTrainConfig``, ``train_scoring_segmenter``:
the paper trains its own DRN-D-22 on each dataset's real photos) and ``generate_test_images`` (PNGs of
generated test images, or label | generated | real rows for qualitative figures).
Pure PyTorch: no MLflow, Ray or DVC (pipelines/evaluate.py and pipelines/segmenter.py log and write).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from asap.config import ConfigError, require
from asap.data.prepared import DatasetInfo, PreparedDataset
from asap.metrics import fid
from asap.metrics.segmentation import ConfusionMatrix
from asap.devices import resolve_device
from asap.images import colour_labels, to_rgb
from asap.models.inputs import DONTCARE_VALUE

# A translation turns one collated test batch (dict of "label"/"edge"/"input"/"image"/"name", see
# asap.data.prepared.PreparedDataset) into generated images (B, 3, H, W) in [-1, 1].
Translate = Callable[[dict], torch.Tensor]
Progress = Callable[[int, int], None]  # (images done, images in all)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalConfig:
    """The `evaluate` section of params.yaml (also what the sweep scores each trial with)."""
    batch_size: int = 8                  # images per generator / Inception / segmenter forward
    device: str = "auto"                 # auto: cuda when available, else cpu
    fid_cache: str = "data/cache"        # real-photo Inception features, one .npz per prepared dataset
    kid_subsets: int = 100               # KID: random subsets averaged (Binkowski et al. 2018)
    kid_subset_size: int = 1000          # capped at the test set size (60 for facades: the full set)
    max_images: int | None = None        # score only the first N test pairs (null: all)
    num_samples: int = 8                 # label | generated | real rows written for the report
    runtime_iters: int = 5               # batch-1 generation timing iterations (0: not timed)
    runtime_threads: int | None = None   # CPU threads while timing (null: every core); the sweep uses it too

    def __post_init__(self):
        for name in ("batch_size", "kid_subsets", "kid_subset_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"evaluate.{name} must be a positive integer, got {value!r}")
        require(self.max_images is None or (isinstance(self.max_images, int) and self.max_images >= 2),
                f"evaluate.max_images must be null (all test pairs) or an integer >= 2 (FID needs two "
                f"images), got {self.max_images!r}")
        for name in ("num_samples", "runtime_iters"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"evaluate.{name} must be an integer >= 0, got {value!r}")
        require(str(self.device) == "auto" or str(self.device).split(":")[0] in ("cpu", "cuda"),
                f"evaluate.device must be auto, cpu or cuda[:N], got {self.device!r}")
        require(self.runtime_threads is None or (isinstance(self.runtime_threads, int)
                                                 and not isinstance(self.runtime_threads, bool)
                                                 and self.runtime_threads >= 1),
                f"evaluate.runtime_threads must be null (every core) or an integer >= 1, got {self.runtime_threads!r}")


@dataclass(frozen=True)
class SegmenterTrainConfig:
    """The `segmenter` section of params.yaml: how the scoring segmenter is trained on real photos."""
    width_mult: float = 0.25             # x DRN-D-22 channels; paper: 1.0 (DRN-D-22, Sec. 4.1)
    steps: int = 700                     # Adam steps (facades 256x256: mIoU flat beyond ~700)
    batch_size: int = 8
    crop: int | None = 128               # random square crops for training (null: whole images); the
                                         # network is fully convolutional, so it scores whole images
    lr: float = 0.002                    # Adam, poly decay (asap.models.segmenter.train_segmenter)
    hflip: bool = True                   # facades are left-right symmetric
    seed: int = 0
    device: str = "auto"
    log_every: int = 25

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"segmenter.{name} must be a positive integer, got {value!r}")
        require(self.crop is None or (isinstance(self.crop, int) and self.crop >= 8),
                f"segmenter.crop must be null (whole images) or an integer >= 8 pixels, got {self.crop!r}")
        require(isinstance(self.lr, (int, float)) and 0 < self.lr < 1,
                f"segmenter.lr must be in (0, 1), got {self.lr!r}")
        require(str(self.device) == "auto" or str(self.device).split(":")[0] in ("cpu", "cuda"),
                f"segmenter.device must be auto, cpu or cuda[:N], got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Test split access
# ----------------------------------------------------------------------------------------------

def _count(dataset: PreparedDataset, max_images: int | None) -> int:
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    return len(dataset) if max_images is None else min(max_images, len(dataset))


def _batches(dataset: PreparedDataset, n: int, batch_size: int):
    """Collated dicts of pairs 0..n-1 in order: tensors stacked, names as a list."""
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        yield {k: (torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else [it[k] for it in items])
               for k in items[0]}


def generator_translate(generator: nn.Module, device: torch.device) -> Translate:
    """Batch -> generator output, for label-map generators (label [+ edge]) and image-input ones."""
    def translate(batch: dict) -> torch.Tensor:
        if "input" in batch:
            return generator(batch["input"].to(device))
        edge = batch.get("edge")
        return generator(batch["label"].to(device), edge.to(device) if edge is not None else None)
    return translate


def _segmentation_setup(info: DatasetInfo, segmenter: nn.Module | None, where: str):
    if segmenter is None:
        return None
    if info.input_kind != "labels":
        raise ValueError(f"{info.name} has image inputs ({where}): there are no label maps to score a "
                         "segmenter against; pass segmenter=None")
    k = getattr(getattr(segmenter, "config", None), "num_classes", None)
    if k is not None and k != info.num_classes:
        raise ValueError(f"the segmenter predicts {k} classes but {info.name} has {info.num_classes}: "
                         "train the segmenter on this dataset (the `segmenter` stage)")
    # Don't-care pixels (label 255) count for nothing (Cityscapes' void, as the usual evaluation).
    return ConfusionMatrix(info.num_classes, ignore_index=DONTCARE_VALUE if info.dontcare else None)


@torch.inference_mode()
def _segment(segmenter: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return segmenter(images.to(device).float()).argmax(1).cpu()  # (B, K, H, W) logits -> (B, H, W)


def _scores(matrix: ConfusionMatrix, info: DatasetInfo) -> dict:
    names = list(info.label_names) if len(info.label_names) == info.num_classes else None
    return matrix.scores(names)


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------

def real_statistics(data_root: str | Path, n: int | None = None, *, split: str = "test",
                    cache_dir: str | Path | None = None, batch_size: int = 8,
                    device: str | torch.device = "cpu") -> dict:
    """Inception features of the real photos of the first ``n`` pairs of a split (all when None), cached.

    The pairs are taken in PreparedDataset's order (the manifest's sorted stems), so a subset is
    exactly the pairs a generator is scored on. The cache file is
    ``<cache_dir>/<dataset>-<H>x<W>.fid-<split>.npz`` (``-first<n>`` added for a subset), keyed by the
    files' bytes (asap.metrics.fid.real_stats_from_files): a re-prepared dataset recomputes it.
    Without ``cache_dir`` it lies beside the prepared folder, never inside it.
    """
    root = Path(data_root)
    stems = PreparedDataset(root, split, in_memory=False).stems
    subset = n is not None and n < len(stems)
    stems = stems[:n] if subset else stems
    files = [root / split / "images" / f"{stem}.png" for stem in stems]
    name = f"{root.name}.fid-{split}{f'-first{n}' if subset else ''}.npz"
    cache_path = (Path(cache_dir) if cache_dir is not None else root.parent) / name
    return fid.real_stats_from_files(files, cache_path, batch_size=batch_size, device=device)


def score_translation(translate: Translate, data_root: str | Path, segmenter: nn.Module | None = None, *,
                      batch_size: int = 8, device: str | torch.device = "cpu",
                      real_stats_cache: str | Path | None = None, kid_subsets: int = 100,
                      kid_subset_size: int | None = None, max_images: int | None = None,
                      split: str = "test", inception: fid.InceptionFeatures | None = None,
                      progress: Progress | None = None) -> dict:
    """Score the images ``translate`` makes from the test pairs (see ``evaluate_generator``)."""
    device = resolve_device(device)
    dataset = PreparedDataset(data_root, split)
    info = dataset.info
    n = _count(dataset, max_images)
    if n < 2:
        raise ValueError(f"FID needs at least 2 images; {info.name} {split} has {len(dataset)} "
                         f"(max_images={max_images})")
    matrix = _segmentation_setup(info, segmenter, f"{split} split")
    if segmenter is not None:
        segmenter.to(device).eval()
    t0 = time.perf_counter()
    real = real_statistics(data_root, n, split=split, cache_dir=real_stats_cache, batch_size=batch_size,
                           device=device)
    timing = {"real_stats_s": time.perf_counter() - t0, "generate_s": 0.0, "inception_s": 0.0, "segment_s": 0.0}
    extractor = (inception or fid.InceptionFeatures()).to(device)

    fake_features, done = [], 0
    for batch in _batches(dataset, n, batch_size):
        t = time.perf_counter()
        with torch.inference_mode():
            fake = translate(batch).float()
        if fake.shape != batch["image"].shape:
            raise ValueError(f"the generator made {tuple(fake.shape)} from a batch whose real images are "
                             f"{tuple(batch['image'].shape)}: it does not fit {info.name}")
        if not torch.isfinite(fake).all():
            raise FloatingPointError(f"the generator made non-finite pixels on {batch['name'][:3]}...")
        timing["generate_s"] += time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode():
            fake_features.append(extractor(fake.to(device)).double().cpu())
        timing["inception_s"] += time.perf_counter() - t
        if matrix is not None:
            t = time.perf_counter()
            matrix.update(_segment(segmenter, fake, device), batch["label"])
            timing["segment_s"] += time.perf_counter() - t
        done += fake.shape[0]
        if progress is not None:
            progress(done, n)

    fake_features = torch.cat(fake_features).numpy()
    kid_size = min(kid_subset_size or n, n)
    kid_mean, kid_std = fid.kid_from_features(real["features"], fake_features, subsets=kid_subsets,
                                              subset_size=kid_size)
    result = {
        "dataset": info.name, "split": split, "height": info.height, "width": info.width,
        "num_images": n, "fid": fid.fid_from_features(real["features"], fake_features),
        "kid_mean": kid_mean, "kid_std": kid_std, "kid_subset_size": kid_size, "kid_subsets": kid_subsets,
        "fid_real_cache": str(real["cache_path"]), "fid_real_cached": bool(real["cached"]),
        "pixel_acc": None, "miou": None, "per_class": [], "segmented_pixels": 0,
    }
    if matrix is not None:
        scores = _scores(matrix, info)
        result.update(pixel_acc=scores["pixel_acc"], miou=scores["miou"], per_class=scores["per_class"],
                      segmented_pixels=scores["pixels"])
    result["timing"] = {k: round(v, 3) for k, v in timing.items()}
    result["generate_ms_per_image"] = round(1000 * timing["generate_s"] / n, 3)
    return result


def evaluate_generator(generator: nn.Module, data_root: str | Path, segmenter: nn.Module | None = None, *,
                       batch_size: int = 8, device: str | torch.device = "cpu",
                       real_stats_cache: str | Path | None = None, kid_subset_size: int | None = None,
                       max_images: int | None = None, kid_subsets: int = 100, split: str = "test",
                       inception: fid.InceptionFeatures | None = None,
                       progress: Progress | None = None) -> dict:
    """FID, KID and (with a segmenter) pixel accuracy, mIoU and per-class IoU of a generator's images.

    Scores the first ``max_images`` pairs (all when None) of the prepared dataset's ``split``; the real
    reference set for FID/KID is the same pairs' photos. Returns::

        {"fid", "kid_mean", "kid_std", "pixel_acc", "miou",
         "per_class": [{"class", "name", "iou", "pixel_share"}], "num_images", "dataset", "split",
         "height", "width", "kid_subset_size", "kid_subsets", "fid_real_cache", "fid_real_cached",
         "segmented_pixels", "timing": {...}, "generate_ms_per_image"}

    ``pixel_acc``/``miou`` are None and ``per_class`` empty without a segmenter. IoU of a class that is
    in neither labels nor predictions is None. Pass ``inception`` to reuse one loaded Inception net
    across calls (a sweep scoring many trials). The generator's train/eval mode is restored after.
    """
    device = resolve_device(device)
    was_training = generator.training
    generator.to(device).eval()
    try:
        return score_translation(generator_translate(generator, device), data_root, segmenter,
                                 batch_size=batch_size, device=device, real_stats_cache=real_stats_cache,
                                 kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                                 max_images=max_images, split=split, inception=inception, progress=progress)
    finally:
        generator.train(was_training)


def real_vs_real_floor(data_root: str | Path, n: int | None = None, *, cache_dir: str | Path | None = None,
                       batch_size: int = 8, device: str | torch.device = "cpu", kid_subsets: int = 100,
                       kid_subset_size: int | None = None) -> dict:
    """FID / KID of held-out real photos against the real test photos, with the protocol generated
    images get (the same test photos, the same number of images): the best score a generator could
    reach on this test set. On small sets FID is strongly biased (facades 256x256, 60 vs 60 images:
    ~124, ../shared/DESIGN.md), so a generated FID means something only beside this floor.

    The held-out photos are the first ``n`` training photos (the generators saw them in training,
    but they are real photos of the same distribution, not the test photos). Features are cached
    like the test photos'. Returns {"fid", "kid_mean", "kid_std", "num_images", "reference_split"}.
    """
    device = resolve_device(device)
    test = PreparedDataset(data_root, "test", in_memory=False)
    train = PreparedDataset(data_root, "train", in_memory=False)
    n = min(len(test) if n is None else n, len(test), len(train))
    if n < 2:
        raise ValueError(f"the real-versus-real floor needs at least 2 test and 2 train photos, got {n}")
    real = real_statistics(data_root, n, split="test", cache_dir=cache_dir, batch_size=batch_size, device=device)
    held_out = real_statistics(data_root, n, split="train", cache_dir=cache_dir, batch_size=batch_size, device=device)
    kid_size = min(kid_subset_size or n, n)
    kid_mean, kid_std = fid.kid_from_features(real["features"], held_out["features"], subsets=kid_subsets,
                                              subset_size=kid_size)
    return {"fid": fid.fid_from_features(real["features"], held_out["features"]), "kid_mean": kid_mean,
            "kid_std": kid_std, "num_images": n, "reference_split": "train"}


def score_real_photos(data_root: str | Path, segmenter: nn.Module, *, batch_size: int = 8,
                      device: str | torch.device = "cpu", max_images: int | None = None,
                      split: str = "test") -> dict:
    """The segmenter on the real photos of ``split``: the ceiling of the generated images' scores.

    Returns {"pixel_acc", "miou", "per_class", "segmented_pixels", "num_images", "dataset", "split"}.
    """
    device = resolve_device(device)
    dataset = PreparedDataset(data_root, split)
    info = dataset.info
    n = _count(dataset, max_images)
    matrix = _segmentation_setup(info, segmenter, f"{split} split")
    if matrix is None:
        raise ValueError("score_real_photos needs a segmenter")
    segmenter.to(device).eval()
    for batch in _batches(dataset, n, batch_size):
        matrix.update(_segment(segmenter, batch["image"], device), batch["label"])
    scores = _scores(matrix, info)
    return {"dataset": info.name, "split": split, "num_images": n, "pixel_acc": scores["pixel_acc"],
            "miou": scores["miou"], "per_class": scores["per_class"], "segmented_pixels": scores["pixels"]}


def batch1_runtime(generator: nn.Module, data_root: str | Path, *, device: str | torch.device = "cpu",
                   iters: int = 5, warmup: int = 2, split: str = "test", threads: int | None = None) -> dict:
    """Batch-1 generation time on the first pair of ``split`` (the paper's runtime: one image at a
    time, Sec. 4.1): asap.metrics.runtime.time_module's {"median_ms", "p10_ms", "p90_ms", ...}."""
    from asap.metrics.runtime import time_module

    device = resolve_device(device)
    batch = next(_batches(PreparedDataset(data_root, split), 1, 1))
    translate = generator_translate(generator.to(device).eval(), device)
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    return time_module(lambda: translate(batch), warmup=warmup, iters=iters, device=device, threads=threads)


# ----------------------------------------------------------------------------------------------
# Generated images on disk
# ----------------------------------------------------------------------------------------------

def _input_panel(batch: dict, i: int) -> np.ndarray:
    """What the generator saw, as RGB: the label map in the shared palette, or the input image."""
    return to_rgb(batch["input"][i]) if "input" in batch else colour_labels(batch["label"][i])


def generate_test_images(generator: nn.Module, data_root: str | Path, out_dir: str | Path, *,
                         batch_size: int = 8, device: str | torch.device = "cpu",
                         max_images: int | None = None, split: str = "test",
                         triptych: bool = False) -> list[Path]:
    """Write ``<out_dir>/<stem>.png`` for the first ``max_images`` pairs of ``split`` (all when None).

    ``triptych``: each file is one row label | generated | real photo (the paper's qualitative
    figures) instead of the generated image alone. Returns the files written, in test order.
    """
    device = resolve_device(device)
    dataset = PreparedDataset(data_root, split)
    n = _count(dataset, max_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = generator.training
    generator.to(device).eval()
    translate = generator_translate(generator, device)
    written = []
    try:
        for batch in _batches(dataset, n, batch_size):
            with torch.inference_mode():
                fake = translate(batch).float().cpu()
            for i, stem in enumerate(batch["name"]):
                panel = to_rgb(fake[i])
                if triptych:
                    panel = np.concatenate([_input_panel(batch, i), panel, to_rgb(batch["image"][i])], axis=1)
                path = out_dir / f"{stem}.png"
                Image.fromarray(panel).save(path)
                written.append(path)
    finally:
        generator.train(was_training)
    return written


# ----------------------------------------------------------------------------------------------
# The scoring segmenter's training recipe
# ----------------------------------------------------------------------------------------------

class CroppedPairs(torch.utils.data.Dataset):
    """(photo, label) pairs of a prepared split, randomly cropped to ``crop`` x ``crop`` (torch's RNG).

    Crops make a CPU step several times cheaper than whole images and see the same scale the
    segmenter scores at (crops, unlike downscaling, keep object sizes in pixels).
    """

    def __init__(self, dataset: PreparedDataset, crop: int | None):
        self.dataset, self.crop = dataset, crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        image, label = item["image"], item["label"]  # (3, H, W), (H, W)
        h, w = label.shape
        if self.crop is not None and (self.crop < h or self.crop < w):
            ch, cw = min(self.crop, h), min(self.crop, w)
            y = int(torch.randint(0, h - ch + 1, ()))
            x = int(torch.randint(0, w - cw + 1, ()))
            image, label = image[:, y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
        return image, label


def train_scoring_segmenter(data_root: str | Path, config: SegmenterTrainConfig,
                            callback: Callable[[int, float], None] | None = None):
    """Train a DRN-D-22-shaped segmenter on the real training photos and labels of a prepared
    dataset (Sec. 4.1: the paper's DRN-D-22 trained per dataset). Returns (model, loss history)."""
    from asap.models.segmenter import Segmenter, SegmenterConfig, train_segmenter

    dataset = PreparedDataset(data_root, "train")
    info = dataset.info
    if info.input_kind != "labels":
        raise ConfigError(f"{info.name} has image inputs (input_kind={info.input_kind!r}), no label maps: "
                          "a segmenter cannot be trained or scored on it; set `dataset` to a label dataset")
    torch.manual_seed(config.seed)  # initial weights and crops
    model = Segmenter(SegmenterConfig(num_classes=info.num_classes, width_mult=config.width_mult))
    history = train_segmenter(model, CroppedPairs(dataset, config.crop), steps=config.steps, lr=config.lr,
                              batch_size=config.batch_size, device=resolve_device(config.device),
                              log_every=config.log_every, callback=callback, hflip=config.hflip,
                              seed=config.seed,
                              ignore_index=DONTCARE_VALUE if info.dontcare else -100)
    return model, history

