"""Where the fused MLP kernel's fp32 backward and tf32 forward go wrong on a GPU: one short device call.

The H200 runs of issue 13 found the fp32 backward off by 2e-3 to 7e-3 (relative to the largest
gradient; mean 1e-5) at the training sizes, and off by O(1) where a block holds 16 pixels
(grad_tiny_tile_S2, grad_split_tile_S16), while the bf16 / fp16 backward (TF32-form dots) matched its
float64 emulation, and the tf32 forward had twice its mean bound. This script tells the candidate
causes apart, each check in its own subprocess (an illegal memory access loses that process's CUDA
context only):

- the oracle: every gradient is compared with autograd through the reference in float64 as well as
  in fp32, so an fp32 reference that is itself off shows;
- where the error sits: per layer (bias / weight), and for layer 1 per input row (one-hot rows vs
  encoding rows), and how many tiles hold it;
- the launch: 16 vs 32 vs 64 pixels per block, 4 vs 8 warps, fp32 vs bf16 parameters at the same
  launch (tf32x3 dots vs TF32-form ones), "ieee" fp32 dots instead of "tf32x3";
- tf32: the kernel's error against torch's own TF32 matmuls on the same case.

    python -m benchmarks.diag_fused_bwd --out DIR [--checks a,b,...]

Writes DIR/diag-fused-bwd.json (rewritten after every check). Imports torch, triton, einops and asap
only (the GPU machine has no Ray / DVC / MLflow).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> case. kind "grad": B, S, H, W, C, input ("index" / "onehot"), dtype, launch options.
CHECKS = {
    "train256_fp32": dict(kind="grad", B=1, S=16, H=256, W=256, C=13, input="onehot", dtype="fp32"),
    "train256_fp32_bp64_w4": dict(kind="grad", B=1, S=16, H=256, W=256, C=13, input="onehot", dtype="fp32",
                                  bwd_block_p=64, bwd_num_warps=4),
    "train256_fp32_w4": dict(kind="grad", B=1, S=16, H=256, W=256, C=13, input="onehot", dtype="fp32",
                             bwd_num_warps=4),
    "s8_fp32_bp16": dict(kind="grad", B=2, S=8, H=16, W=16, C=5, input="index", dtype="fp32", bwd_block_p=16),
    "tiny_S2_fp32_w4": dict(kind="grad", B=1, S=2, H=8, W=4, C=3, input="index", dtype="fp32", bwd_num_warps=4),
    "tiny_S2_bf16": dict(kind="grad", B=1, S=2, H=8, W=4, C=3, input="index", dtype="bf16"),
    "split_S16_bf16": dict(kind="grad", B=1, S=16, H=16, W=32, C=4, input="onehot", dtype="bf16",
                           bwd_block_p=16, bwd_sub_blocks=3),
    "split_S16_fp32_w4": dict(kind="grad", B=1, S=16, H=16, W=32, C=4, input="onehot", dtype="fp32",
                              bwd_block_p=16, bwd_sub_blocks=3, bwd_num_warps=4),
    "tiny_S2_fp32": dict(kind="grad", B=1, S=2, H=8, W=4, C=3, input="index", dtype="fp32"),
    "tf32_fwd_S16": dict(kind="tf32", B=2, S=16, H=64, W=128, C=12),
    "train256_fp32_ieee": dict(kind="grad", B=1, S=16, H=256, W=256, C=13, input="onehot", dtype="fp32",
                               ieee=True),
}


def _no_tf32(torch):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


def _make(case, torch, device):
    from asap.models.pixelwise import mlp_channels

    B, S, H, W, C = case["B"], case["S"], case["H"], case["W"], case["C"]
    from benchmarks.campaign.correctness import load_test_module

    gen = torch.Generator().manual_seed(1234 + S * 7 + C)
    channels = mlp_channels(C + 4 * int(math.log2(S)), 64, 5, 3)
    params = load_test_module().make_params(B, channels, H // S, W // S, gen)  # the test cases' O(1) MLPs
    labels = torch.randint(0, C, (B, H, W), generator=gen)
    onehot = torch.nn.functional.one_hot(labels, C).permute(0, 3, 1, 2).float()
    grad_out = torch.randn(B, 3, H, W, generator=gen)
    return channels, params.to(device), labels.to(device), onehot.to(device), grad_out.to(device)


def _rel(a, ref):
    e = (a.double() - ref).abs()
    return {"max": e.max().item() / ref.abs().max().item(), "mean": e.mean().item() / ref.abs().mean().item()}


def check_grad(case, torch):
    from asap.models import pixelwise_fused as pf
    from asap.models.pixelwise import mlp_layout, pixelwise_mlp

    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: TRITON_INTERPRET=1 (a smoke run)
    _no_tf32(torch)
    channels, params, labels, onehot, grad_out = _make(case, torch, device)
    S = case["S"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[case["dtype"]]

    def grad_of(fn, p):
        p = p.detach().clone().requires_grad_()
        (fn(p).double() * grad_out.double()).sum().backward()
        return p.grad.double()

    ref64 = grad_of(lambda p: pixelwise_mlp(onehot.double(), p, channels, S), params.double())
    ref32 = grad_of(lambda p: pixelwise_mlp(onehot, p, channels, S), params.float())
    if case.get("ieee"):  # fp32 dots as "ieee" in the backward too (not tf32x3): a slow build
        orig = pf.backward_constants

        def ieee_constants(*a, **k):
            c = orig(*a, **k)
            if c["INPUT_PRECISION"] == "tf32x3":
                c["INPUT_PRECISION"] = "ieee"
            return c
        pf.backward_constants = ieee_constants
    x = labels if case["input"] == "index" else onehot
    opts = {k: case[k] for k in ("bwd_block_p", "bwd_sub_blocks", "bwd_num_warps") if k in case}
    t0 = time.time()
    got = grad_of(lambda p: pf.fused_pixelwise_mlp(x, p, channels, S, **opts), params.to(dtype))
    if got.is_cuda:
        torch.cuda.synchronize()
    seconds = time.time() - t0
    out = {"kernel_vs_f64": _rel(got, ref64), "ref32_vs_f64": _rel(ref32, ref64), "seconds_first_call": seconds}
    if dtype != torch.float32:
        low = grad_of(lambda p: pixelwise_mlp(onehot.to(dtype), p, channels, S), params.to(dtype))
        out["torch_low_vs_f64"] = _rel(low, ref64)
    # where the error sits
    err = (got - ref64).abs() / ref64.abs().max()  # (B, P, h, w)
    per_layer = []
    for i, l in enumerate(mlp_layout(channels)):
        per_layer.append({"layer": i, "bias_max": err[:, l.bias].max().item(), "weight_max": err[:, l.weight].max().item()})
    out["per_layer"] = per_layer
    l1 = mlp_layout(channels)[0]
    w1 = err[:, l1.weight].reshape(err.shape[0], l1.nci, l1.nco, *err.shape[2:])
    out["layer1_rows_max"] = [float("%.3g" % v) for v in w1.amax(dim=(0, 2, 3, 4)).tolist()]
    out["layer1_input_rows"] = case["C"]
    tile_err = err.amax(dim=1).flatten()
    out["tiles"] = tile_err.numel()
    out["tiles_over_1e-4"] = int((tile_err > 1e-4).sum())
    out["worst_tiles"] = [(int(i), float("%.3g" % tile_err[i].item())) for i in tile_err.argsort(descending=True)[:6]]
    out["entries_over_1e-4"] = int((err > 1e-4).sum())
    out["entries"] = err.numel()
    return out


def check_tf32(case, torch):
    from asap.models.pixelwise import pixelwise_mlp
    from asap.models.pixelwise_fused import fused_pixelwise_mlp

    channels, params, labels, onehot, _ = _make(case, torch, "cuda" if torch.cuda.is_available() else "cpu")
    S = case["S"]
    _no_tf32(torch)
    ref64 = pixelwise_mlp(onehot.double(), params.double(), channels, S)
    ref32 = pixelwise_mlp(onehot, params, channels, S)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch_tf32 = pixelwise_mlp(onehot, params, channels, S)
    got = fused_pixelwise_mlp(labels, params, channels, S, input_precision="tf32")

    def abs_err(a):
        e = (a.double() - ref64).abs()
        return {"max": e.max().item(), "mean": e.mean().item()}
    return {"kernel_tf32": abs_err(got), "torch_tf32": abs_err(torch_tf32), "ref32": abs_err(ref32)}


def child(name: str) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    case = CHECKS[name]
    fn = check_tf32 if case["kind"] == "tf32" else check_grad
    print(json.dumps(fn(case, torch)))


def environment() -> dict:
    """Device, versions and commit (git, else the packed .carry/commit.json), for the result file."""
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                        check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        packed = ROOT / ".carry" / "commit.json"
        info["commit"] = json.loads(packed.read_text()).get("commit") if packed.is_file() else None
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checks", default=",".join(CHECKS))
    ap.add_argument("--timeout-s", type=float, default=90.0, help="per check")
    ap.add_argument("--deadline-s", type=float, default=250.0, help="start no check after this")
    ap.add_argument("--jobs", type=int, default=4, help="checks at once")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "diag-fused-bwd.json"
    results, start = {}, time.time()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    header = {"schema": "asap-diag-fused-bwd/1", "command": " ".join(sys.argv), "environment": environment()}

    def run_one(name):
        left = args.deadline_s - (time.time() - start)
        if left < 10:
            return name, {"error": "not run: out of time"}
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.diag_fused_bwd", "--out", str(args.out),
                                   "--child", name], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=min(args.timeout_s, left))
            lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
            res = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
                {"error": f"rc {proc.returncode}: {proc.stderr[-800:]}"}
        except subprocess.TimeoutExpired:
            res = {"error": "timed out"}
        res["wall_s"] = round(time.time() - t0, 1)
        res["case"] = CHECKS[name]
        return name, res

    # checks run side by side (each compiles its own kernels; the GPU machine has 16 cores)
    with ThreadPoolExecutor(args.jobs) as pool:
        for done in as_completed([pool.submit(run_one, name) for name in args.checks.split(",")]):
            name, res = done.result()
            results[name] = res
            print(f"[diag] {name}: {json.dumps(res)}", flush=True)
            path.write_text(json.dumps({**header, "checks": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
