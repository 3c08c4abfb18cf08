"""Serve a page where a person paints a label map and watches the generator translate it live.

    asap demo models/asapnet/generator.pt                      # then open http://127.0.0.1:7860/
    asap demo models/spade/generator.pt --data data/prepared/facades-256x256 --port 8000 --device cuda

The page (``asap/demo_page.html``, plain HTML + JS, nothing fetched from elsewhere) paints with the
dataset's classes in ``asap.images.label_palette`` colours: class picker with names, brush size, flood
fill, undo, a test-split label map to start from, or an uploaded one. While the person paints it posts
the map (debounced, never two requests at once) and shows the returned image and the generation time.

The HTTP API, usable without the page (``H x W`` = the prepared dataset's size, e.g. 256x256):

    GET  /                        the page
    GET  /api/info                model, dataset, size, classes (index, name, colour)
    GET  /api/examples            the test split's label-map names
    GET  /api/examples/{name}     {"name", "height", "width", "labels": base64 of H*W uint8 class indices}
    POST /api/labels              a label-map PNG -> the same JSON, checked (the page's upload)
    POST /api/generate            a label map -> image/png; headers X-Generation-Ms (the model's forward)
                                  and X-Server-Ms (decode + check + forward + PNG encode)

A label map is sent as ``application/octet-stream`` (H*W bytes of class indices, row-major) or as
``image/png`` (single-channel: mode P, L or 16-bit, values = class indices, as ``asap translate``
reads them). It must be exactly H x W: other sizes are refused (400), not resized, so what is generated
is what was painted; resize with nearest-neighbour first. Values outside 0..C-1, other modes,
non-PNG bodies and bodies over 16 MiB are refused with a one-line message (400/413/415); the server
keeps serving. It listens on 127.0.0.1 unless told otherwise: the page has no authentication.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (Request),
# and fastapi is imported inside create_app so that `asap` works where it is not installed.
import argparse
import base64
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from asap.config import ConfigError
from asap.data.prepared import DatasetInfo
from asap.devices import resolve_device
from asap.images import label_palette, to_rgb
from asap.infer import LABEL_MODES, TranslateError, check_label_values
from asap.models.asapnet import ASAPNetGenerator
from asap.models.checkpoint import load_generator
from asap.models.fast import FastGenerator

PAGE = Path(__file__).with_name("demo_page.html")
DEFAULT_DATA = "data/prepared/facades-256x256"
MAX_BODY = 16 * 2**20  # bytes; a 2048x2048 uint8 map is 4 MiB
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BodyTooLarge(TranslateError):
    """A request body over MAX_BODY (HTTP 413)."""


class UnsupportedType(TranslateError):
    """A request body in a format the API does not read (HTTP 415)."""


# ----------------------------------------------------------------------------------------------
# The model side: load, check against the dataset, run one label map
# ----------------------------------------------------------------------------------------------

class DemoGenerator:
    """One label map (H, W) of class indices -> (RGB uint8 (H, W, 3), forward milliseconds).

    ASAP-Net runs through FastGenerator (fused kernel + CUDA graph on CUDA, the reference path on the
    CPU), the baselines as they are. One request at a time: a lock serialises the forward passes.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu"):
        self.device = resolve_device(device)
        self.config = model.config
        if getattr(self.config, "input_kind", "labels") != "labels":
            raise TranslateError(f"this generator translates images (input_kind={self.config.input_kind!r}); "
                                 "the demo paints label maps only")
        if getattr(self.config, "instance_edge", False):
            raise TranslateError("this generator also needs an instance-edge map (instance_edge=True, e.g. "
                                 "Cityscapes); the demo paints class labels only")
        model = model.to(self.device).eval()
        self.model = FastGenerator(model) if isinstance(model, ASAPNetGenerator) else model
        self._lock = threading.Lock()

    @torch.inference_mode()
    def __call__(self, labels: np.ndarray) -> tuple[np.ndarray, float]:
        x = torch.from_numpy(labels.astype(np.int64))[None].to(self.device)  # (1, H, W)
        with self._lock:
            self._sync()
            start = time.perf_counter()
            image = self.model(x)  # (1, C, H, W) in [-1, 1]
            self._sync()
            ms = (time.perf_counter() - start) * 1e3
        return to_rgb(image[0].float()), ms

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def check_pairing(config, meta: dict, info: DatasetInfo) -> None:
    """The generator must take this dataset's label maps: same classes, a size it accepts."""
    if info.input_kind != "labels":
        raise ConfigError(f"dataset {info.name} has {info.input_kind} inputs; the demo paints label maps "
                          "(use a dataset whose dataset.json says input_kind 'labels')")
    if config.num_classes != info.num_classes or bool(getattr(config, "dontcare", False)) != info.dontcare:
        trained = f" (trained on {meta['dataset']})" if meta.get("dataset") else ""
        raise ConfigError(f"the generator takes {config.num_classes} classes{trained} but dataset {info.name} "
                          f"has {info.num_classes}; pass the generator's dataset with --data")
    if hasattr(config, "check_size"):
        config.check_size(info.height, info.width)


# ----------------------------------------------------------------------------------------------
# Label maps from requests
# ----------------------------------------------------------------------------------------------

def decode_labels(body: bytes, content_type: str, height: int, width: int, what: str = "label map") -> np.ndarray:
    """A request body -> (height, width) int64 class indices, or a TranslateError saying what was wrong."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/octet-stream":
        if len(body) != height * width:
            raise TranslateError(f"{what}: {len(body)} bytes, expected {height * width} "
                                 f"({height}x{width} class indices, one byte each, row by row)")
        return np.frombuffer(body, dtype=np.uint8).reshape(height, width).astype(np.int64)
    if kind != "image/png":
        raise UnsupportedType(f"{what}: content type {content_type or 'missing'!r}; send image/png (a label-map "
                             f"PNG) or application/octet-stream ({height * width} bytes of class indices)")
    if not body.startswith(PNG_SIGNATURE):
        raise TranslateError(f"{what} is not a PNG (it starts with {body[:8]!r}); send a single-channel "
                             "label-map PNG whose values are class indices")
    try:
        with Image.open(io.BytesIO(body), formats=["PNG"]) as img:
            if img.mode not in LABEL_MODES:
                raise TranslateError(
                    f"{what} is a {img.mode} PNG; a label map is single-channel with class indices as values "
                    f"(modes {', '.join(LABEL_MODES)}); colour-coded maps must be converted to indices first")
            if img.size != (width, height):
                raise TranslateError(
                    f"{what} is {img.height}x{img.width}; this demo paints {height}x{width} maps (the dataset's "
                    "size): resize it with nearest-neighbour first (other sizes are refused, not resized)")
            return np.asarray(img).astype(np.int64)  # mode P: the palette indices, not the colours
    except TranslateError:
        raise
    except Exception as err:  # truncated or corrupt PNG: PIL raises OSError, SyntaxError, ValueError...
        raise TranslateError(f"{what} is not a readable PNG ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None


def labels_json(name: str, labels: np.ndarray) -> dict:
    return {"name": name, "height": int(labels.shape[0]), "width": int(labels.shape[1]),
            "labels": base64.b64encode(labels.astype(np.uint8).tobytes()).decode("ascii")}


def example_maps(root: Path) -> dict[str, Path]:
    """Stem -> label-map PNG of the test split (the maps the page offers to start from)."""
    folder = root / "test" / "labels"
    return {p.stem: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------

def create_app(generator: torch.nn.Module, meta: dict, dataset_info: DatasetInfo, *,
               data_root: str | Path | None = None, device: str | torch.device = "cpu"):
    """The FastAPI app serving the page and the API for one generator on one prepared dataset.

    ``data_root``: the prepared dataset's folder, for the test-split examples (none when omitted).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    check_pairing(generator.config, meta, dataset_info)
    run_model = DemoGenerator(generator, device)
    H, W, C = dataset_info.height, dataset_info.width, dataset_info.num_classes
    dontcare = dataset_info.dontcare
    examples = example_maps(Path(data_root)) if data_root is not None else {}
    palette = label_palette(C)[:C]
    names = list(dataset_info.label_names[:C]) + [f"class {i}" for i in range(len(dataset_info.label_names), C)]
    info = {
        "model": meta.get("name") or meta.get("arch") or type(generator).__name__,
        "arch": meta.get("arch", type(generator).__name__),
        "trained_on": meta.get("dataset"),
        "dataset": dataset_info.name,
        "height": H, "width": W, "num_classes": C,
        "classes": [{"index": i, "name": names[i], "colour": "#%02x%02x%02x" % tuple(palette[i])} for i in range(C)],
        "device": str(run_model.device),
        "max_body_bytes": MAX_BODY,
    }
    page = PAGE.read_text(encoding="utf-8")

    app = FastAPI(title="asap demo", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(TranslateError)
    async def bad_input(request: Request, err: TranslateError):
        status = 413 if isinstance(err, BodyTooLarge) else 415 if isinstance(err, UnsupportedType) else 400
        return JSONResponse({"error": str(err)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):  # unknown paths, wrong methods
        return JSONResponse({"error": f"{request.method} {request.url.path}: {err.detail}; the API is GET /api/info, "
                                      "/api/examples, /api/examples/NAME, POST /api/labels, /api/generate"},
                            status_code=err.status_code)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception):  # a bug, not bad input: say so, keep serving
        first = str(err).splitlines()[0][:300] if str(err) else ""
        return JSONResponse({"error": f"{request.url.path} failed: {type(err).__name__}: {first}"}, status_code=500)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY:
            raise BodyTooLarge(f"request body of {int(declared)} bytes is over the {MAX_BODY}-byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise BodyTooLarge(f"request body is over the {MAX_BODY}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def checked(labels: np.ndarray, what: str) -> np.ndarray:
        check_label_values(labels, what, C, dontcare)
        return labels

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/info")
    def api_info():
        return info

    @app.get("/api/examples")
    def api_examples():
        return {"examples": list(examples)}

    @app.get("/api/examples/{name}")
    def api_example(name: str):
        if name not in examples:  # only names we listed: nothing else on disk is reachable
            shown = ", ".join(list(examples)[:3]) + (" ..." if len(examples) > 3 else "")
            return JSONResponse({"error": f"no test label map named {name!r}; "
                                          f"GET /api/examples lists them ({shown or 'none here'})"}, status_code=404)
        path = examples[name]
        labels = decode_labels(path.read_bytes(), "image/png", H, W, what=str(path))
        return labels_json(name, checked(labels, str(path)))

    @app.post("/api/labels")
    async def api_labels(request: Request):
        body = await read_body(request)
        labels = decode_labels(body, request.headers.get("content-type", ""), H, W, "uploaded label map")
        return labels_json("upload", checked(labels, "uploaded label map"))

    @app.post("/api/generate")
    async def api_generate(request: Request):
        start = time.perf_counter()
        body = await read_body(request)

        def work():
            labels = decode_labels(body, request.headers.get("content-type", ""), H, W)
            image, ms = run_model(checked(labels, "label map"))
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="PNG", compress_level=1)
            return out.getvalue(), ms

        png, ms = await run_in_threadpool(work)
        server_ms = (time.perf_counter() - start) * 1e3
        return Response(png, media_type="image/png",
                        headers={"X-Generation-Ms": f"{ms:.2f}", "X-Server-Ms": f"{server_ms:.2f}",
                                 "Cache-Control": "no-store"})

    app.state.generator = run_model
    app.state.info = info
    return app


def load_demo(checkpoint: str | Path, data: str | Path = DEFAULT_DATA, device: str = "auto"):
    """(app, info): the generator and dataset loaded and checked against each other; the model warmed up
    with one generation (its time is info["first_ms"])."""
    dataset_info = DatasetInfo.load(data)
    model, meta = load_generator(checkpoint)
    app = create_app(model, meta, dataset_info, data_root=data, device=device)
    blank = np.full((dataset_info.height, dataset_info.width), min(1, dataset_info.num_classes - 1), np.int64)
    try:
        _, ms = app.state.generator(blank)  # the first call pays for allocation (and a CUDA graph capture)
    except RuntimeError as err:  # e.g. a size the baselines' strided convs do not divide
        raise ConfigError(f"{checkpoint} does not run on the {dataset_info.height}x{dataset_info.width} maps of "
                          f"{dataset_info.name}: {str(err).splitlines()[0][:300]}") from None
    return app, dict(app.state.info, first_ms=ms)


def listen(host: str, port: int) -> socket.socket:
    """A bound listening socket, or an OSError naming the address and what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another --port "
                      "(0 = any free port) or --host") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="generator checkpoint (ours, or an authors' latest_net_G.pth)")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help=f"prepared dataset whose classes, palette and test label maps the page uses ({DEFAULT_DATA})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (0 = any free port; the URL is printed)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")


def run(args) -> int:
    import uvicorn

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port number (0..65535; 0 = any free port)")
    app, info = load_demo(args.checkpoint, args.data, args.device)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"asap demo: {info['model']} on {info['dataset']} ({info['num_classes']} classes, "
          f"{info['height']}x{info['width']}), device {info['device']}, first generation {info['first_ms']:.0f} ms",
          flush=True)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: listening on {host}: anyone who can reach this machine can use the page (no login)",
              flush=True)
    print(f"serving http://{url_host}:{port}/ (Ctrl+C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0
