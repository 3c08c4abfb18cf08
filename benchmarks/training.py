"""Training-throughput benchmark: images/s of the in-process GAN step (asap.engine), ours vs the same
step written the authors' way, measured in the same run.

    python -m benchmarks.training --out metrics/training-cpu.json                        # CPU, 256x256
    python -m benchmarks.training --device cuda --sizes 512x512,1024x1024 --out metrics/training-h100.json

"The authors' way" (github.com/tamarott/ASAPNet, described, not copied): the label map enters as a
full-resolution one-hot tensor, the positional encoding is concatenated at full resolution, and the
MLP cuts tiles with ``unfold`` + ``permute`` and folds them back with ``permute`` + ``view``. Ours takes
class indices, builds the encoding for one tile only and broadcasts it, and splits tiles with one
``rearrange``. Both run the same GAN objective (hinge + feature matching + perceptual) with the same
weights. Imports only torch and asap: runs on the GPU machine without Ray, DVC or MLflow.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from asap.engine import GANTrainer, TrainConfig
from asap.losses import GANLossConfig, build_perceptual_loss
from asap.models.asapnet import ASAPNetGenerator, asapnet
from asap.models.discriminator import DiscriminatorConfig, MultiscaleDiscriminator
from asap.models.pixelwise import LEAKY_SLOPE, mlp_layout, positional_encoding


def authors_style_mlp(x: torch.Tensor, params: torch.Tensor, channels: list[int], S: int) -> torch.Tensor:
    """Pixelwise MLP as the authors' code does it: full-resolution encoding, unfold into tiles."""
    B, _, H, W = x.shape
    h, w = H // S, W // S
    enc = positional_encoding(H, W, S, device=x.device, dtype=x.dtype).expand(B, -1, -1, -1)
    x = torch.cat([x, enc], 1)                                      # (B, C + E, H, W) at full resolution
    tiles = x.unfold(2, S, S).unfold(3, S, S)                       # (B, C, h, w, S, S)
    out = tiles.permute(0, 2, 3, 4, 5, 1).reshape(B, h, w, S * S, x.shape[1])
    layers = mlp_layout(channels)
    for i, layer in enumerate(layers):
        wgt = params[:, layer.weight].permute(0, 2, 3, 1).reshape(B, h, w, layer.nci, layer.nco)
        bias = params[:, layer.bias].permute(0, 2, 3, 1).reshape(B, h, w, 1, layer.nco)
        out = torch.matmul(out, wgt) + bias
        out = F.leaky_relu(out, LEAKY_SLOPE) if i < len(layers) - 1 else torch.tanh(out)
    out = out.reshape(B, h, w, S, S, channels[-1]).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(B, channels[-1], H, W)


class AuthorsStyleGenerator(ASAPNetGenerator):
    """Same weights and maths; the input path and MLP layout of the authors' code."""

    def forward(self, x, edges=None):
        c = self.config
        x = self.encode(x, edges)                                   # one-hot (B, C, H, W)
        params = self.tile_params(x)
        if params.shape[2:] == (1, 1):
            params = params.expand(-1, -1, x.shape[2] // c.downsampling, x.shape[3] // c.downsampling)
        return authors_style_mlp(x[:, :c.hr_in_channels], params, c.mlp_channels, c.downsampling)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(generator, size, args, device) -> list[float]:
    torch.manual_seed(0)
    h, w = size
    d = MultiscaleDiscriminator(DiscriminatorConfig.for_inputs(generator.config.in_channels, ndf=args.ndf))
    loss = GANLossConfig(perceptual=args.perceptual)
    trainer = GANTrainer(generator, d, TrainConfig(steps=args.warmup + args.iters, batch_size=args.batch),
                         loss, build_perceptual_loss(loss), device)
    batch = {"label": torch.randint(1, 13, (args.batch, h, w)), "image": torch.rand(args.batch, 3, h, w) * 2 - 1}
    times = []
    for i in range(args.warmup + args.iters):
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_step(batch)
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="256x256")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr-max-width", type=int, default=256, help="paper: 1024")
    ap.add_argument("--ndf", type=int, default=32, help="paper: 64")
    ap.add_argument("--perceptual", default="auto", help="auto | vgg19 | hed-vgg16 | off")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for size_text in args.sizes.split(","):
        size = tuple(int(v) for v in size_text.split("x"))
        torch.manual_seed(0)
        ours = asapnet(13, *size, lr_max_width=args.lr_max_width)
        theirs = AuthorsStyleGenerator(ours.config)
        theirs.load_state_dict(ours.state_dict())
        with torch.no_grad():  # the two generators compute the same function
            lbl = torch.randint(1, 13, (1, *size))
            max_diff = (ours(lbl) - theirs(lbl)).abs().max().item()
        result = {}
        for name, gen in (("ours", ours), ("authors_way", theirs)):
            t = step_times(gen.to(device), size, args, device)
            med = statistics.median(t)
            result[name] = {"step_s_median": med, "step_s_all": t, "images_per_s": args.batch / med}
            print(f"[bench-train] {size_text} {name:12s} {args.batch / med:7.3f} img/s "
                  f"(median step {med * 1000:.0f} ms over {len(t)})", flush=True)
        rows.append({"size": size_text, "batch": args.batch, "max_abs_output_diff": max_diff, **result,
                     "speedup": result["ours"]["images_per_s"] / result["authors_way"]["images_per_s"]})
    report = {"benchmark": "training-step", "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"[bench-train] wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
