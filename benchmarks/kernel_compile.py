"""Compile the fused Triton kernels for a GPU architecture on a machine without a GPU.

    python -m benchmarks.kernel_compile                      # sm_90 (H100/H200), the campaign's variants
    python -m benchmarks.kernel_compile --arch 80 --out kernel-compile-sm80.json

Triton compiles a kernel the first time it is launched, on the GPU machine, where a kernel that does
not compile for that architecture (or that spills registers, or asks for more shared memory than the
chip has) is found only with the device's minutes running. This compiles the same variants ahead of
time with the installed triton and its bundled ptxas (``triton.compile`` with a ``GPUTarget``; no
driver, no GPU), so a kernel change is known to build for Hopper before a device is lent, on our
pinned triton and, run with the GPU machine's triton (3.6), on that one too.

The variants are those the GPU campaign launches: the pixelwise MLP (class indices or dense input;
fp32 / bf16 / fp16 parameters; tf32; S = 2..64; 3-36 classes; with and without the positional
encoding; several pixel blocks per program), its backward (``mlp-grad``: the training generator's
fp32 one-hot with bf16 or fp32 parameters, and the test file's gradient cases), the low-res stream's
InstanceNorm + ReLU kernels (``norm-stats`` / ``norm-apply``, asap/models/lowres_fused.py) and the tent
one-hot downsampling (factors 1-8; factor 8
with 35 classes is a 2048-pixel Cityscapes side, beyond the campaign's sizes: with every tap unrolled
it was a 5 MB PTX that ptxas had not finished after 10 minutes, now ~6 s). For each
it records the compile time, registers per thread, spilled registers and shared memory; ``--out``
writes them as JSON. The constexpr values come from the launchers' own ``mlp_constants`` /
``tent_constants`` (asap/models/pixelwise_fused.py); a kernel whose constexpr parameters no longer
match them makes this fail with the names that differ, not compile something else.

Imports torch, triton and asap only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asap.files import write_text_atomic

POINTER = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


@dataclass(frozen=True)
class Variant:
    name: str
    kernel: str                # "mlp", "mlp-grad" (its backward), "tent", "norm-stats" or "norm-apply"
    signature: dict            # argument -> triton type ("*fp32", "i32", "constexpr")
    constants: dict            # constexpr argument -> value
    num_warps: int = 4


def _kernels():
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("error: TRITON_INTERPRET=1 turns the kernels into interpreted functions, which do not "
                         "compile; unset it for this script")
    from asap.models import pixelwise_fused as pf

    if pf.triton is None:
        raise SystemExit("error: triton is not installed; the fused kernels need it")
    return pf


def _signature(fn, pointers: dict, constants: dict) -> dict:
    """Every argument of ``fn``: the given pointer types, constexpr for the constants, i32 for the rest.
    The constants must be exactly the kernel's constexpr parameters."""
    declared = {p.name for p in fn.params if p.is_constexpr}
    if declared != set(constants):
        raise SystemExit(f"error: {fn.__name__}'s constexpr parameters changed: the kernel declares "
                         f"{sorted(declared - set(constants))} that its launch constants do not set, which set "
                         f"{sorted(set(constants) - declared)} that the kernel lacks; update mlp_constants / "
                         "tent_constants in asap/models/pixelwise_fused.py")
    return {name: pointers.get(name, "constexpr" if name in constants else "i32") for name in fn.arg_names}


def mlp(classes: int, tile: int, precision: str, *, dense: bool = False, positional: bool = True,
        input_precision: str = "ieee", hidden: int = 64, depth: int = 5, block_p: int | None = None,
        sub_blocks: int | None = None, grad: bool = False, x_precision: str | None = None,
        stash: bool = False, dot16: str | None = None, atomic: bool | None = None) -> Variant:
    """``_pixelwise_mlp_fwd`` as ``fused_pixelwise_mlp`` launches it on a GPU, or with ``grad`` the
    backward ``_pixelwise_mlp_bwd``. ``x_precision``: a dense input's dtype when it differs from the
    parameters' (the trainer's fp32 one-hot with bf16 parameters under autocast); ``stash``: the
    backward that keeps activations in a scratch buffer; ``dot16`` / ``atomic``: the launcher's
    (default: its defaults)."""
    import torch

    from asap.models.pixelwise import mlp_channels

    pf = _kernels()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    n_enc = 4 * int(math.log2(tile)) if positional else 0
    channels = mlp_channels(classes + n_enc, hidden, depth, 3)
    constants = pf.mlp_constants(channels, tile, classes, is_index=not dense, positional=positional,
                                 input_precision=pf.kernel_precision(dtype, input_precision, dot16),
                                 block_p=block_p, sub_blocks=sub_blocks)
    x_type = POINTER[x_precision or precision] if dense else "*i64"
    atomic = pf.BWD_ATOMIC if atomic is None else atomic
    if grad:
        constants = pf.backward_constants(constants, channels, sub_blocks, block_p=block_p,
                                          fp32_params=precision == "fp32", stash=stash, atomic=atomic)
        scratch = {torch.bfloat16: "*bf16", torch.float32: "*fp32"}[pf.stash_dtype(dtype, "cuda")]
        pointers = {"x_ptr": x_type, "params_ptr": POINTER[precision], "dy_ptr": POINTER[precision],
                    "grad_ptr": "*fp32", "stash_ptr": scratch}
        fn = pf._pixelwise_mlp_bwd
    else:
        pointers = {"x_ptr": x_type, "params_ptr": POINTER[precision], "out_ptr": POINTER[precision]}
        fn = pf._pixelwise_mlp_fwd
    name = (f"mlp{'-grad' if grad else ''}{'-stash' if stash else ''} {'dense' if dense else 'index'}"
            f"{f' x {x_precision}' if dense and x_precision and x_precision != precision else ''} "
            f"{precision}{' tf32' if input_precision == 'tf32' else ''}{f' dot16 {dot16}' if dot16 else ''} "
            f"C{classes} S{tile}{'' if positional else ' no-encoding'}"
            f"{f' hidden {hidden}' if hidden != 64 else ''}{f' {sub_blocks} sub-blocks' if sub_blocks else ''}"
            f"{'' if atomic or not grad else ' read-add-write'}")
    return Variant(name, "mlp-grad" if grad else "mlp", _signature(fn, pointers, constants), constants,
                   num_warps=pf.backward_warps(constants["BLOCK_P"]) if grad else 4)


def tent(classes: int, factor: int, precision: str, block: int = 64) -> Variant:
    """``_tent_onehot_fwd`` as ``tent_onehot`` launches it on a GPU."""
    pf = _kernels()
    constants = pf.tent_constants(classes, factor, block)
    pointers = {"lab_ptr": "*i64", "taps_ptr": "*fp32", "out_ptr": POINTER[precision]}
    return Variant(f"tent {precision} C{classes} f{factor}", "tent",
                   _signature(pf._tent_onehot_fwd, pointers, constants), constants)


def norm(channels: int, hw: int, precision: str, apply: bool, relu: bool = True) -> Variant:
    """``_in_stats`` (or with ``apply`` ``_in_apply``) of the low-res stream's InstanceNorm + ReLU, as
    ``instance_norm_act`` launches it for ``channels`` channels and ``hw`` pixels."""
    _kernels()
    from asap.models import lowres_fused as lf

    plan = lf.launch_plan(1, hw, channels)
    if apply:
        fn, constants = lf._in_apply, lf.apply_constants(plan, relu)
        pointers = {"x_ptr": POINTER[precision], "out_ptr": POINTER[precision], "mean_ptr": "*fp32",
                    "m2_ptr": "*fp32", "w_ptr": POINTER[precision], "b_ptr": POINTER[precision], "eps": "fp32"}
    else:
        fn, constants = lf._in_stats, lf.stats_constants(plan)
        pointers = {"x_ptr": POINTER[precision], "mean_ptr": "*fp32", "m2_ptr": "*fp32"}
    name = (f"norm-{'apply' if apply else 'stats'} {precision} C{channels} HW{hw}"
            f"{'' if relu or not apply else ' no-relu'}")
    return Variant(name, "norm-apply" if apply else "norm-stats", _signature(fn, pointers, constants), constants)


def campaign_variants() -> list[Variant]:
    """What the campaign's phases launch: Cityscapes (35 classes) and facades (13) at the paper's S,
    the test file's cases, the smoke sizes, every precision; and the tent at factor 8 for 35 classes."""
    variants = []
    for precision in ("fp32", "bf16", "fp16"):
        for classes, tile in ((35, 16), (35, 32), (13, 32), (13, 64), (5, 8), (36, 16)):
            variants.append(mlp(classes, tile, precision))
        variants.append(mlp(36, 32, precision, dense=True))
        for factor in (1, 2, 4, 8):
            variants.append(tent(35, factor, precision))
    variants += [mlp(12, 16, "fp32", input_precision="tf32"), mlp(5, 8, "fp32", positional=False),
                 mlp(4, 16, "fp32", dense=True, block_p=16, sub_blocks=3), mlp(5, 16, "bf16", hidden=16),
                 mlp(3, 2, "bf16"), tent(13, 1, "fp32"), tent(3, 4, "bf16")]
    # training (the generator through the fused kernel, phases 3 and 4): the trainer's fp32 one-hot
    # with bf16 (autocast) or fp32 parameters at facades' S = 16 / 32, forward and backward; the test
    # file's gradient cases
    for tile in (16, 32):
        for precision in ("bf16", "fp32"):
            variants += [mlp(13, tile, precision, dense=True, x_precision="fp32"),
                         mlp(13, tile, precision, dense=True, x_precision="fp32", grad=True),
                         mlp(13, tile, precision, dense=True, x_precision="fp32", grad=True, stash=True)]
    variants += [mlp(5, 8, "fp32", grad=True), mlp(5, 8, "bf16", grad=True), mlp(5, 8, "fp16", grad=True),
                 mlp(6, 8, "fp32", dense=True, grad=True), mlp(5, 8, "fp32", positional=False, grad=True),
                 mlp(3, 2, "fp32", grad=True), mlp(4, 16, "fp32", dense=True, block_p=16, sub_blocks=3, grad=True),
                 mlp(35, 32, "bf16", grad=True), mlp(35, 64, "fp32", grad=True),
                 mlp(13, 16, "bf16", dense=True, grad=True), mlp(5, 8, "fp32", grad=True, stash=True),
                 mlp(4, 16, "fp32", dense=True, block_p=16, sub_blocks=3, grad=True, stash=True),
                 mlp(5, 8, "bf16", dense=True, x_precision="fp32", grad=True, stash=True)]
    # phase 1's diagnostic cases: 16-bit dots as such (they faulted on the H200 with triton 3.6) and the
    # read-add-write backward
    variants += [mlp(5, 8, "bf16", dot16="native"), mlp(36, 32, "fp16", dense=True, dot16="native"),
                 mlp(5, 8, "bf16", grad=True, dot16="native"),
                 mlp(4, 16, "fp32", dense=True, block_p=16, sub_blocks=3, grad=True, atomic=False),
                 mlp(3, 2, "fp32", grad=True, atomic=False)]
    # the fast path's InstanceNorm + ReLU kernels: the 1024-wide blocks on a 16 x 16 grid, the first
    # conv at 1024 x 1024 (64 channels, 256 x 256: 256 chunks) and the smoke widths, each precision
    for precision in ("fp32", "bf16", "fp16"):
        for channels, hw in ((1024, 256), (64, 65536), (8, 256)):
            variants += [norm(channels, hw, precision, apply=False), norm(channels, hw, precision, apply=True)]
    variants.append(norm(160, 64, "fp16", apply=True, relu=False))
    return variants


def compile_variant(variant: Variant, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pf = _kernels()
    from asap.models import lowres_fused as lf

    fn = {"mlp": pf._pixelwise_mlp_fwd, "mlp-grad": pf._pixelwise_mlp_bwd, "tent": pf._tent_onehot_fwd,
          "norm-stats": lf._in_stats, "norm-apply": lf._in_apply}[variant.kernel]
    t0 = time.perf_counter()
    try:
        kernel = triton.compile(ASTSource(fn, variant.signature, variant.constants),
                                target=GPUTarget("cuda", arch, 32), options={"num_warps": variant.num_warps})
    except Exception as err:  # the compiler's message is the result
        return {"name": variant.name, "ok": False, "seconds": round(time.perf_counter() - t0, 2),
                "error": f"{type(err).__name__}: {str(err)[:2000]}"}
    ptx = kernel.asm.get("ptx", "")
    target = next((line.split()[1] for line in ptx.splitlines() if line.startswith(".target")), None)
    row = {"name": variant.name, "ok": True, "seconds": round(time.perf_counter() - t0, 2), "ptx_target": target,
           "shared_bytes": kernel.metadata.shared, "cubin_bytes": len(kernel.asm.get("cubin", b""))}
    row.update(resource_usage(kernel.asm.get("cubin", b"")))
    return row


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and local memory (spilled registers) of a cubin, read with the cuobjdump
    that ships in triton's NVIDIA backend ({} where it is missing or says nothing)."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cubin or not tool.exists():
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        done = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, timeout=60)
    found = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)", done.stdout)
    if done.returncode or not found:
        return {}
    regs, stack, local = (int(v) for v in found.groups())
    return {"registers": regs, "stack_bytes": stack, "local_bytes": local}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10: 90 H100/H200 (default), 80 A100")
    ap.add_argument("--only", default=None, help="compile only the variants whose name contains this text")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    import triton

    variants = [v for v in campaign_variants() if args.only is None or args.only in v.name]
    if not variants:
        print(f"error: no variant's name contains {args.only!r}", file=sys.stderr)
        return 2
    print(f"compiling {len(variants)} kernel variants for sm_{args.arch} with triton {triton.__version__}", flush=True)
    rows, t0 = [], time.perf_counter()
    for variant in variants:
        row = compile_variant(variant, args.arch)
        rows.append(row)
        usage = (f", {row['registers']} registers, stack {row['stack_bytes']} B (spills)" if "registers" in row else "")
        detail = (f"{row['ptx_target']}, shared {row['shared_bytes']} B, cubin {row['cubin_bytes']} B{usage}"
                  if row["ok"] else row["error"].splitlines()[0][:200])
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {variant.name:45s} {row['seconds']:6.1f} s  {detail}", flush=True)
    failed = [r["name"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)} compiled, {len(failed)} failed, in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.out:
        import torch

        record = {"arch": f"sm_{args.arch}", "triton": triton.__version__, "torch": torch.__version__,
                  "rows": rows}
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
