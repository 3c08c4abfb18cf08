"""CMP Facade Database, base set (Tyleček & Šára, "Spatial Pattern Templates for Recognition of Objects
with Regular Structure", GCPR 2013): 378 rectified facade photos with pixel labels 1..12.

Read straight from the official archive ``CMP_facade_DB_base.zip`` (``base/cmp_bNNNN.{jpg,png}``;
labels are palette PNGs whose indices are the classes of ``base/label_names.txt``). Values 1..12 are
kept as-is and index 0 stays unused, so num_classes = 13, as in the ASAP-Net authors' code
(label_nc = 13): the pixelwise MLP's first layer then has 13 + 4 log2(S) inputs.

Where the archive comes from (``resolve_archive``): the params key ``prepare.facades.archive`` when set,
else the environment variable ``ASAP_FACADES_ARCHIVE`` when set, else a download from ``URL``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from asap.config import ConfigError, require, require_choice
from asap.data.common import (FITS, DataError, check_sizes, PairSource, PrepareOptions, RawPair,
                              DatasetSpec, index_array, open_image, prepare, rgb_array)

URL = "https://cmp.felk.cvut.cz/~tylecr1/facade/CMP_facade_DB_base.zip"
ARCHIVE_ENV = "ASAP_FACADES_ARCHIVE"
ARCHIVE_NAME = "CMP_facade_DB_base.zip"
CITATION = ("Radim Tyleček and Radim Šára, Spatial Pattern Templates for Recognition of Objects with "
            "Regular Structure, GCPR 2013")
NUM_CLASSES = 13          # authors' label_nc: values 1..12, index 0 unused
LABELS = tuple(range(1, 13))
# base/label_names.txt by label id; the archive's own file is read when present
LABEL_NAMES = ("unused", "background", "facade", "window", "door", "cornice", "sill", "balcony",
               "blind", "deco", "molding", "pillar", "shop")
AUTHORS_TEST = range(1, 61)  # authors' split: test cmp_b0001..cmp_b0060, train cmp_b0061..cmp_b0378
MEMBER_RE = re.compile(r"^base/(cmp_b\d{4})\.(jpg|png)$")


@dataclass(frozen=True)
class FacadesConfig:
    """params.yaml ``prepare.facades``."""
    sizes: tuple[str, ...] = ("256x256",)  # HxW to prepare; paper: 512x512 and 1024x1024 (Sec. 4)
    archive: str | None = None          # local CMP_facade_DB_base.zip; None: $ASAP_FACADES_ARCHIVE or URL
    url: str = URL                      # the official address
    split: str = "authors"              # "authors" (test cmp_b0001..0060) or "random" (seeded)
    test_count: int = 60                # random split: pairs in the test split
    seed: int = 0                       # random split: the permutation's seed
    fit: str = "stretch"                # "stretch" to HxW, or "crop" the centre to H:W first

    def __post_init__(self):
        object.__setattr__(self, "sizes", check_sizes("prepare.facades.sizes", self.sizes))
        require_choice("prepare.facades.split", self.split, {"authors", "random"})
        require_choice("prepare.facades.fit", self.fit, set(FITS))
        require(isinstance(self.test_count, int) and self.test_count >= 1,
                f"prepare.facades.test_count must be a positive integer, got {self.test_count!r}")
        require(isinstance(self.seed, int), f"prepare.facades.seed must be an integer, got {self.seed!r}")


# -- getting the archive ----------------------------------------------------------------------------

def resolve_archive(setting: str | None) -> str | None:
    """The local archive to use: the params setting, else $ASAP_FACADES_ARCHIVE, else None (download)."""
    if setting:
        return str(setting)
    return os.environ.get(ARCHIVE_ENV) or None


def fetch_archive(dest: str | Path, archive: str | None, url: str = URL,
                  log: Callable[[str], None] = print) -> Path:
    """Copy the local ``archive`` (or download ``url`` when None) to ``dest`` and check it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        if archive:
            src = Path(archive).expanduser()
            if not src.is_file():
                raise DataError(f"facades archive {src} not found (from prepare.facades.archive or "
                                f"${ARCHIVE_ENV}): point it at a copy of {ARCHIVE_NAME}, or unset both "
                                f"to download {url}")
            check_archive(src)
            log(f"copying {src} -> {dest}")
            shutil.copyfile(src, tmp)
        else:
            log(f"downloading {url} -> {dest}")
            _download(url, tmp, log)
            check_archive(tmp, origin=url)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _download(url: str, path: Path, log) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            done, last = 0, time.monotonic()
            while chunk := response.read(1 << 20):
                f.write(chunk)
                done += len(chunk)
                if time.monotonic() - last > 5:
                    last = time.monotonic()
                    log(f"  {done >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""))
    except OSError as err:
        raise DataError(f"could not download {url} ({err}). Offline? Put a copy of {ARCHIVE_NAME} on disk "
                        f"and set {ARCHIVE_ENV}=/path/to/{ARCHIVE_NAME} (or prepare.facades.archive in "
                        "params.yaml)") from None


def check_archive(path: str | Path, origin: str | None = None) -> list[str]:
    """The archive's member names; a DataError when it is missing, not a zip, or holds no facades."""
    path = Path(path)
    where = f"{path}" + (f" (downloaded from {origin})" if origin else "")
    if not path.is_file():
        raise DataError(f"facades archive {where} not found: run the fetch-facades stage "
                        f"(`dvc repro fetch-facades`) or pass a copy of {ARCHIVE_NAME}")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"facades archive {where} is not a readable zip file ({err}); expected "
                        f"{ARCHIVE_NAME} from {URL}") from None
    if not any(MEMBER_RE.match(n) and n.endswith(".jpg") for n in names):
        raise DataError(f"facades archive {where} holds no base/cmp_bNNNN.jpg photos (found "
                        f"{len(names)} entries, e.g. {names[:3]}); expected {ARCHIVE_NAME} from {URL}")
    return names


# -- listing and loading pairs ------------------------------------------------------------------------

def list_pairs(archive: str | Path, cfg: FacadesConfig):
    """(pairs, pairing errors, label names) of the archive, with the split of ``cfg``."""
    archive = Path(archive)
    names = check_archive(archive)
    found: dict[str, dict[str, str]] = {}
    for n in names:
        m = MEMBER_RE.match(n)
        if m:
            found.setdefault(m.group(1), {})[m.group(2)] = n
    tag = archive.name
    errors, stems = [], []
    for stem in sorted(found):
        kinds = found[stem]
        if "jpg" not in kinds:
            errors.append((stem, f"{tag}:{kinds['png']}: label map without its photo base/{stem}.jpg"))
        elif "png" not in kinds:
            errors.append((stem, f"{tag}:{kinds['jpg']}: photo without its label map base/{stem}.png"))
        else:
            stems.append(stem)
    test = _test_stems(stems, cfg)
    pairs = [PairSource(stem=s, split="test" if s in test else "train",
                        files=(("image", f"{tag}:base/{s}.jpg"), ("label", f"{tag}:base/{s}.png")),
                        ref=(str(archive.resolve()), f"base/{s}.jpg", f"base/{s}.png"))
             for s in stems]
    return pairs, errors, _label_names(archive, names)


def _test_stems(stems: list[str], cfg: FacadesConfig) -> set[str]:
    if cfg.split == "authors":
        return {s for s in stems if int(s[len("cmp_b"):]) in AUTHORS_TEST}
    if not 1 <= cfg.test_count < len(stems):
        raise ConfigError(f"prepare.facades.test_count must be between 1 and {len(stems) - 1} "
                          f"(the archive holds {len(stems)} pairs), got {cfg.test_count}")
    order = np.random.default_rng(cfg.seed).permutation(len(stems))
    return {stems[i] for i in order[:cfg.test_count]}


def _label_names(archive: Path, names: list[str]) -> tuple[str, ...]:
    """Class names by label id from base/label_names.txt ("<id> <name> <z-order>" per line)."""
    if "base/label_names.txt" not in names:
        return LABEL_NAMES
    with zipfile.ZipFile(archive) as z:
        text = z.read("base/label_names.txt").decode("utf-8", "replace")
    table = dict(enumerate(LABEL_NAMES))
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and 1 <= int(parts[0]) < NUM_CLASSES:
            table[int(parts[0])] = parts[1]
    return tuple(table[k] for k in range(NUM_CLASSES))


_ZIPS: dict[tuple[int, str], zipfile.ZipFile] = {}


def _zip(path: str) -> zipfile.ZipFile:
    """One open ZipFile per (process, archive): worker processes must not share a file handle."""
    key = (os.getpid(), path)
    if key not in _ZIPS:
        _ZIPS[key] = zipfile.ZipFile(path)
    return _ZIPS[key]


def load_pair(src: PairSource) -> RawPair:
    archive, jpg, png = src.ref
    z = _zip(archive)
    # read whole members: PIL seeks, and seeking back in a compressed zip stream re-inflates it
    image = rgb_array(open_image(io.BytesIO(z.read(jpg)), src.file("image")))
    label = index_array(open_image(io.BytesIO(z.read(png)), src.file("label")), src.file("label"))
    return RawPair(image=image, label=label)


# -- the dataset ---------------------------------------------------------------------------------------

def spec(archive: str | Path, label_names: tuple[str, ...], cfg: FacadesConfig) -> DatasetSpec:
    return DatasetSpec(dataset="facades", input_kind="labels", num_classes=NUM_CLASSES,
                       label_names=label_names, allowed_labels=LABELS,
                       source={"path": str(archive), "url": cfg.url, "split": cfg.split,
                               "seed": cfg.seed if cfg.split == "random" else None,
                               "citation": CITATION})


def prepare_facades(archive: str | Path, out_dir: str | Path, cfg: FacadesConfig, opts: PrepareOptions,
                    log: Callable[[str], None] | None = None) -> dict:
    """Prepare the archive at opts.height x opts.width into ``out_dir``; returns dataset.json."""
    pairs, errors, names = list_pairs(archive, cfg)
    return prepare(spec(archive, names, cfg), pairs, load_pair, out_dir, opts,
                   pairing_errors=errors, log=log)
