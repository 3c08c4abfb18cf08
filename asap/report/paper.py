"""The numbers the paper states in its text: the only hand-entered numbers of the report.

Rott Shaham, Gharbi, Zhang, Shechtman, Michaeli, "Spatially-Adaptive Pixelwise Networks for Fast Image
Translation", CVPR 2021 (../shared/paper/asapnet-cvpr2021.md). Every figure and table that shows one of
these labels it "paper" and names the paper's GPU beside our device; our own results always come
from the pipeline's files. The paper's other numbers (Fig. 1, 4, 6, 8, 11) are only drawn in its
plots, not stated, so they are not reproduced here.
"""

from __future__ import annotations

# Sec. 4.1 "Speed": "We benchmark the inference time of all models on an Nvidia GeForce 2080ti GPU."
PAPER_DEVICE = "NVIDIA GeForce RTX 2080 Ti"

# Sec. 1 and Fig. 2 caption: ASAP-Net translates 512x1024 and 1024x1024 label maps "in only 29 and
# 35 ms" (batch 1, on the device above). size -> ms.
PAPER_ASAPNET_MS = {"512x1024": 29.0, "1024x1024": 35.0}

# Fig. 9 caption (ablations, 512x512 facades): larger S 12.1 ms, the default S 14.2 ms, smaller S
# 28.1 ms ("2x longer runtime"). The default is S = 512 / 16 = 32 (Sec. 3.2); the caption does not
# state the larger and smaller S values. role -> ms.
PAPER_S_ABLATION_SIZE = "512x512"
PAPER_S_ABLATION_DEFAULT_S = 32
PAPER_S_ABLATION_MS = {"larger S": 12.1, "default S": 14.2, "smaller S": 28.1}

# Sec. 4.1 "Speed": "up to a 6x speedup compared to pix2pixHD, 10x speedup compared to SPADE ... and
# 18x speedup compared to CC-FPSE, depending on resolution" (the introduction says "over 4.5x" for
# pix2pixHD at 512x1024 / 1024x1024). Baseline -> the largest speed-up of ASAP-Net over it.
PAPER_MAX_SPEEDUP = {"pix2pixhd": 6.0, "spade": 10.0, "cc-fpse": 18.0}

# Fig. 11 caption: ASAP-Net's per-class IoU degrades "for objects that are smaller than 3% of the
# image area" (Cityscapes 256x512).
PAPER_SMALL_CLASS_SHARE = 0.03

CITATION = ("Rott Shaham et al., Spatially-Adaptive Pixelwise Networks for Fast Image Translation, "
            "CVPR 2021")
