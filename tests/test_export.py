"""`asap export`: the trained models/asapnet/generator.pt and models/spade/generator.pt exported to
ONNX (and ASAP-Net to a torch.export pt2), run on real facades test label maps (all 60 for ASAP-Net's
ONNX file, the first 20 otherwise) in a separate Python that cannot import this project, and compared
with the PyTorch generator run here through the project's own reader, encoding and forward.

The subprocess reads the label PNGs with PIL itself and runs `python -I` from a folder outside the
repository with ``sys.modules["asap"] = None``, so any import of the project there fails. Bad input
(label values, sizes, files that are not generators, existing outputs) must give one clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from asap.cli import main as cli_main
from asap.export import TOLERANCE, ExportError, export
from asap.infer import read_label_map
from asap.models.asapnet import asapnet
from asap.models.baselines import Pix2PixHDConfig, Pix2PixHDGenerator
from asap.models.checkpoint import load_generator, save_generator
from asap.models.inputs import instance_edges

from project_helpers import TRAINED

pytestmark = pytest.mark.usefixtures("trained256")  # TRAINED's files (tests/conftest.py)


def checkpoint(name: str) -> Path:
    return TRAINED.generator(name)


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(["export", *map(str, argv)])
        except SystemExit as exit_:  # argparse's own errors
            rc = exit_.code
    return rc, out.getvalue(), err.getvalue()


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the errors under test are raised; no need to log them too
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def real_labels() -> np.ndarray:
    """(60, 256, 256) int64: the facades test maps through the project's reader."""
    files = sorted(TRAINED.labels.glob("*.png"))
    assert len(files) == 60
    return np.stack([read_label_map(f) for f in files])


@torch.no_grad()
def pytorch_images(name: str, labels: np.ndarray) -> np.ndarray:
    """The generator as the project runs it: load_generator, then forward on class indices."""
    model, _ = load_generator(checkpoint(name))
    return np.concatenate([model(torch.from_numpy(labels[i:i + 10])).numpy() for i in range(0, len(labels), 10)])


@pytest.fixture(scope="module")
def reference(real_labels):
    """name -> (PyTorch images of the first n test maps, of two 256x512 maps made of maps 0-3), once."""
    cache = {}

    def images(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in cache or len(cache[name][0]) < n:
            wide = np.concatenate([real_labels[:2], real_labels[2:4]], axis=2)
            cache[name] = pytorch_images(name, real_labels[:n]), pytorch_images(name, wide)
        return cache[name][0][:n], cache[name][1]
    return images


# ----------------------------------------------------------------------------------------------
# Running an exported file without the project
# ----------------------------------------------------------------------------------------------

WITHOUT_ASAP = """
import sys
sys.modules["asap"] = None  # from here on, importing the project fails
try:
    import asap
except ImportError:
    pass
else:
    raise SystemExit("asap is importable")
"""

RUN_ONNX = WITHOUT_ASAP + """
import json
from pathlib import Path
import numpy as np
import onnxruntime as ort
from PIL import Image

model, labels_dir, count, out = sys.argv[1:]
files = sorted(Path(labels_dir).glob("*.png"))[:int(count)]
labels = np.stack([np.asarray(Image.open(f)).astype(np.int64) for f in files])
wide = np.concatenate([labels[:2], labels[2:4]], axis=2)  # (2, 256, 512): another accepted size
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
images = np.concatenate([s.run(["image"], {"labels": labels[i:i + 10]})[0] for i in range(0, len(labels), 10)])
np.savez(out, images=images, wide=s.run(["image"], {"labels": wide})[0])
Path(out + ".json").write_text(json.dumps({
    "meta": s.get_modelmeta().custom_metadata_map,
    "inputs": [(i.name, i.type, i.shape) for i in s.get_inputs()],
    "project_modules": sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "asap" and v is not None)}))
"""

RUN_PT2 = WITHOUT_ASAP + """
import json
from pathlib import Path
import numpy as np
import torch
from PIL import Image

model, labels_dir, count, out = sys.argv[1:]
files = sorted(Path(labels_dir).glob("*.png"))[:int(count)]
labels = np.stack([np.asarray(Image.open(f)).astype(np.int64) for f in files])
wide = np.concatenate([labels[:2], labels[2:4]], axis=2)
extra = {"asap_export.json": ""}
module = torch.export.load(model, extra_files=extra).module()
with torch.no_grad():
    images = torch.cat([module(torch.from_numpy(labels[i:i + 10])) for i in range(0, len(labels), 10)])
    np.savez(out, images=images.numpy(), wide=module(torch.from_numpy(wide)).numpy())
Path(out + ".json").write_text(json.dumps({
    "meta": json.loads(extra["asap_export.json"]),
    "project_modules": sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "asap" and v is not None)}))
"""


def run_outside(script: str, model: Path, count: int, tmp: Path) -> tuple[dict, dict]:
    """Run ``script`` on the first ``count`` test maps with `python -I` in ``tmp`` (outside the
    repository); returns (arrays, report)."""
    out = tmp / "outputs.npz"
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(model), str(TRAINED.labels), str(count), str(out)], cwd=tmp,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(Path(str(out) + ".json").read_text())
    assert report["project_modules"] == []
    with np.load(out) as data:
        return dict(data), report


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """{name: (path, the CLI's stdout)} for ASAP-Net and SPADE to ONNX and ASAP-Net to pt2."""
    folder = tmp_path_factory.mktemp("exported")
    files = {}
    for name, arch, fmt in (("asapnet.onnx", "asapnet", "onnx"), ("spade.onnx", "spade", "onnx"),
                            ("asapnet.pt2", "asapnet", "pt2")):
        rc, out, err = cli(checkpoint(arch), "--format", fmt, "--out", folder / name)
        assert rc == 0, err
        files[name] = (folder / name, out)
    return files


# ASAP-Net on all 60 test maps; SPADE (4x slower on the CPU) and the pt2 file on the first 20
@pytest.mark.parametrize("name, arch, count", [("asapnet.onnx", "asapnet", 60), ("spade.onnx", "spade", 20)])
def test_onnx_runtime_matches_pytorch_on_real_facades_without_the_project(exported, reference, tmp_path,
                                                                            name, arch, count):
    path, stdout = exported[name]
    assert "ONNX Runtime (CPU) vs PyTorch, max abs error" in stdout
    arrays, report = run_outside(RUN_ONNX, path, count, tmp_path)
    expected, wide = reference(arch, count)
    error = float(np.abs(arrays["images"] - expected).max())
    error_wide = float(np.abs(arrays["wide"] - wide).max())
    print(f"{arch}: ONNX Runtime vs PyTorch on {count} facades test maps, max abs error {error:.2g} "
          f"(256x512: {error_wide:.2g})")
    assert arrays["images"].shape == (count, 3, 256, 256) and arrays["wide"].shape == (2, 3, 256, 512)
    assert error <= TOLERANCE and error_wide <= TOLERANCE
    assert np.abs(expected).max() > 100 * TOLERANCE  # a signal far above the tolerance: not a blank that passes trivially

    meta = report["meta"]
    assert report["inputs"] == [["labels", "tensor(int64)", ["batch", f"{meta['size_multiple']}*h",
                                                             f"{meta['size_multiple']}*w"]]]
    assert meta["arch"] == arch and meta["num_classes"] == "13" and meta["label_values"] == "0..12"
    assert meta["size_multiple"] == ("16" if arch == "asapnet" else "32")
    assert meta["trained_size"] == "256x256" and meta["value_range"] == "[-1, 1]"
    assert meta["source_sha1"] == hashlib.sha1(checkpoint(arch).read_bytes()).hexdigest()
    assert float(meta["tolerance"]) == TOLERANCE


def test_pt2_matches_pytorch_on_real_facades_without_the_project(exported, reference, tmp_path):
    path, stdout = exported["asapnet.pt2"]
    assert "torch.export.load vs PyTorch" in stdout
    arrays, report = run_outside(RUN_PT2, path, 20, tmp_path)
    expected, wide = reference("asapnet", 20)
    error = float(np.abs(arrays["images"] - expected).max())
    error_wide = float(np.abs(arrays["wide"] - wide).max())
    print(f"asapnet: torch.export.load vs PyTorch on 20 facades test maps, max abs error {error:.2g} "
          f"(256x512: {error_wide:.2g})")
    assert error <= TOLERANCE and error_wide <= TOLERANCE
    meta = report["meta"]
    assert meta["arch"] == "asapnet" and meta["accepted_sizes"] == "N >= 1; H and W multiples of 16, each >= 32"
    assert meta["source_sha1"] == hashlib.sha1(checkpoint("asapnet").read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# What an exported file refuses, and what it accepts
# ----------------------------------------------------------------------------------------------

def test_onnx_refuses_bad_label_values_and_sizes_by_rule(exported, real_labels):
    s = session(exported["asapnet.onnx"][0])
    good = real_labels[:1].copy()
    for value, idx in ((13, 13), (255, 255), (-1, -14)):
        bad = good.copy()
        bad[0, 100, 100] = value
        with pytest.raises(Exception, match=rf"Name:'label_values_must_be_0_to_12'.*idx={idx} "):
            s.run(None, {"labels": bad})
    for shape, rule, shown in (((1, 250, 256), "height_must_be_a_multiple_of_16", "1,250,256"),
                               ((1, 256, 250), "width_must_be_a_multiple_of_16", "250"),
                               ((1, 16, 256), "height_must_be_at_least_32", "1,16,256"),
                               ((1, 256, 16), "width_must_be_at_least_32", "1,256,16")):
        with pytest.raises(Exception, match=rf"Name:'{rule}'.*Input shape:\{{[^}}]*{shown}"):
            s.run(None, {"labels": np.zeros(shape, np.int64)})
    # accepted: any batch, H and W multiples of 16 (>= 32) other than the trained size
    labels = torch.from_numpy(np.ascontiguousarray(real_labels[3:6, :48, 16:96]))  # (3, 48, 80)
    model, _ = load_generator(checkpoint("asapnet"))
    with torch.no_grad():
        expected = model(labels).numpy()
    assert np.abs(s.run(None, {"labels": labels.numpy()})[0] - expected).max() <= TOLERANCE


def test_pt2_refuses_bad_label_values_and_sizes(exported, real_labels):
    module = torch.export.load(exported["asapnet.pt2"][0]).module()
    bad = torch.from_numpy(real_labels[:1].copy())
    bad[0, 5, 5] = 13
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"label values must be 0\.\.12"):
            module(bad)
        with pytest.raises(AssertionError, match=r"labels\.size\(\)\[1\] % 16 == 0"):
            module(torch.zeros(1, 250, 256, dtype=torch.long))
        with pytest.raises(AssertionError, match=r"labels\.size\(\)\[2\] >= 32"):
            module(torch.zeros(1, 256, 16, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# Other generators: the authors' layout with don't-care + instance edges, an image-input baseline
# ----------------------------------------------------------------------------------------------

def test_authors_state_dict_with_dontcare_and_instance_edges(tmp_path):
    """An authors'-layout state dict (S = 8 = tent 2 x learned 4, reflect padding) exported with the
    flags `asap convert-authors` takes; the edges are compared with the project's instance_edges."""
    torch.manual_seed(0)
    model = asapnet(5, 64, 64, downsampling=8, learned_downsampling=4, dontcare=True, instance_edge=True,
                    lr_width=8, lr_max_width=32, lr_depth=1, padding="reflect")
    model.reset_parameters(gain=1.0)  # O(1) images (mean |x| ~0.5) instead of the ~1e-3 of the init
    torch.nn.init.normal_(model.lowres_stream.model[-1].bias, 0.0, 0.2)
    torch.save(model.state_dict(), tmp_path / "latest_net_G.pth")
    out = tmp_path / "authors.onnx"
    rc, stdout, err = cli(tmp_path / "latest_net_G.pth", "--out", out, "--num-classes", "5", "--dontcare",
                          "--instance-edge")
    assert rc == 0, err
    assert "trained at unknown" in stdout  # the authors' files record no size
    s = session(out)
    assert [(i.name, i.type) for i in s.get_inputs()] == [("labels", "tensor(int64)"), ("instances", "tensor(int64)")]
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (2, 48, 72), generator=gen)
    labels[:, :10, :20] = 255
    instances = torch.randint(0, 3, (2, 12, 18), generator=gen).repeat_interleave(4, 1).repeat_interleave(4, 2)
    with torch.no_grad():
        expected = model(labels, instance_edges(instances)).numpy()
    got = s.run(None, {"labels": labels.numpy(), "instances": instances.numpy()})[0]
    assert np.abs(got - expected).max() <= TOLERANCE and np.abs(expected).mean() > 0.3
    assert np.abs(got - model(labels, torch.zeros(2, 1, 48, 72)).detach().numpy()).max() > 0.5  # edges matter
    with pytest.raises(Exception, match=r"label_values_must_be_0_to_4_or_255.*idx=5 "):  # 5 = C: not don't-care
        s.run(None, {"labels": np.full((1, 16, 16), 5, np.int64), "instances": np.zeros((1, 16, 16), np.int64)})
    with pytest.raises(Exception, match=r"Name:'instances_must_have_the_shape_of_labels'"):
        s.run(None, {"labels": np.zeros((1, 16, 16), np.int64), "instances": np.zeros((1, 16, 8), np.int64)})


def test_image_input_generator_and_a_failing_check(tmp_path):
    """An image-to-image pix2pixHD (input float32 (N, C, H, W)); with a tolerance no float32 export can
    meet, the check fails and nothing is written."""
    torch.manual_seed(0)
    model = Pix2PixHDGenerator(Pix2PixHDConfig(num_classes=3, input_kind="image", out_channels=1, ngf=4,
                                               n_downsampling=2, n_blocks=1)).eval()
    save_generator(tmp_path / "g.pt", model, meta={"height": 32, "width": 48})
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to .* \(tolerance 1e-15\); nothing written"):
        export(tmp_path / "g.pt", tmp_path / "g.onnx", tolerance=1e-15)
    assert not (tmp_path / "g.onnx").exists() and list(tmp_path.iterdir()) == [tmp_path / "g.pt"]

    path, error = export(tmp_path / "g.pt", tmp_path / "g.onnx")
    assert 0 < error <= TOLERANCE
    s = session(path)
    assert [(i.name, i.type) for i in s.get_inputs()] == [("input", "tensor(float)")]
    x = torch.rand(2, 3, 40, 24) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(s.run(None, {"input": x.numpy()})[0] - expected).max() <= TOLERANCE
    assert np.abs(expected).mean() > 0.05
    with pytest.raises(Exception, match=r"Name:'width_must_be_a_multiple_of_4'"):
        s.run(None, {"input": np.zeros((1, 3, 40, 26), np.float32)})


# ----------------------------------------------------------------------------------------------
# Bad files and options: one line, no traceback, nothing written
# ----------------------------------------------------------------------------------------------

def one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith(("error:", "asap export: error:")), err
    for needle in needles:
        assert needle in lines[-1], err


def test_cli_refuses_non_generators_existing_outputs_and_unknown_formats(tmp_path):
    out = tmp_path / "g.onnx"
    rc, _, err = cli(TRAINED.segmenter, "--out", out)
    one_line_error(rc, err, str(TRAINED.segmenter), "is not a generator checkpoint")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rc, _, err = cli(tmp_path / "random.pt", "--out", out)
    one_line_error(rc, err, str(tmp_path / "random.pt"))
    rc, _, err = cli(tmp_path / "missing.pt", "--out", out)
    one_line_error(rc, err, "missing.pt", "does not exist")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["random.pt"]

    out.write_text("keep me")
    rc, _, err = cli(checkpoint("asapnet"), "--out", out)
    one_line_error(rc, err, str(out), "already exists", "--overwrite")
    assert out.read_text() == "keep me"
    rc, _, err = cli(checkpoint("asapnet"), "--format", "tflite")
    one_line_error(rc, err, "invalid choice: 'tflite'")
    rc, _, err = cli(checkpoint("asapnet"), "--out", tmp_path / "g.pt2")
    one_line_error(rc, err, "g.pt2 ends in .pt2", "--format pt2")
    rc, _, err = cli(checkpoint("asapnet"), "--out", tmp_path / "x.onnx", "--tolerance", "0")
    one_line_error(rc, err, "tolerance must be a number > 0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "random.pt"]
