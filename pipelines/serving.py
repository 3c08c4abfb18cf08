"""A trained generator as an MLflow model that `mlflow models serve` serves: label map in, image out.

    log_generator_model("models/asapnet/generator.pt", register=True)   # as asapnet-facades-256x256

logs (inside the active run) a pyfunc model whose code is ``pipelines/serving_model.py`` plus the
``asap/`` package and whose one artifact is the generator checkpoint (read with weights_only, never
unpickled); its signature says what it takes and gives, e.g. for the facades generators

    inputs:  Tensor int64 (-1, 256, 256)       class indices 0..12
    outputs: Tensor uint8 (-1, 256, 256, 3)    RGB

and registers it in the Model Registry as ``<generator>-<dataset>`` (``registered_name``: one
registered model per generator and prepared dataset, a new version per training run). Serve it with

    mlflow models serve -m models:/asapnet-facades-256x256/latest --env-manager local --host 127.0.0.1 --port 5001

and POST ``{"inputs": [<H x W nested list of class indices>]}`` to /invocations; the answer is
``{"predictions": [<H x W x 3 nested list of 0..255>]}``, or HTTP 400 with one line saying what was wrong.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from asap.models.checkpoint import CheckpointError
from asap.serving import GeneratorService, TensorField

MODEL_CODE = Path(__file__).with_name("serving_model.py")
ASAP_PACKAGE = Path(__file__).resolve().parent.parent / "asap"
# what asap.serving imports beyond the standard library (mlflow adds itself); unused with --env-manager local
REQUIREMENTS = ("torch", "numpy", "pillow", "einops", "pyyaml")


def registered_name(meta: dict) -> str:
    """Model Registry name of a generator checkpoint: ``<generator>-<dataset>``, e.g.
    asapnet-facades-256x256, pix2pixhd-facades-256x256 (the meta every trained checkpoint carries)."""
    missing = [k for k in ("name", "dataset") if not meta.get(k)]
    if missing:
        raise CheckpointError(f"the checkpoint's meta lacks {missing}: pass registered_model_name explicitly")
    return f"{meta['name']}-{meta['dataset']}"


def _spec(field: TensorField):
    from mlflow.types.schema import TensorSpec

    return TensorSpec(np.dtype(field.dtype), field.shape, field.name)


def signature(service: GeneratorService):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema

    return ModelSignature(inputs=Schema([_spec(f) for f in service.inputs]), outputs=Schema([_spec(service.output)]))


def requirements() -> list[str]:
    pins = []
    for dist in REQUIREMENTS:
        try:
            pins.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


@dataclass(frozen=True)
class LoggedModel:
    """What ``log_generator_model`` logged: MLflow's ModelInfo and, when registered, the registry entry."""
    info: object                       # mlflow.models.model.ModelInfo
    registered_name: str | None = None
    version: int | None = None

    @property
    def registry_uri(self) -> str | None:
        return f"models:/{self.registered_name}/{self.version}" if self.version else None


def log_generator_model(generator_path: str | Path, name: str = "generator", register: bool | str = False,
                        await_registration_s: int = 300) -> LoggedModel:
    """Log the served form of a generator checkpoint into the active MLflow run. ``register``: True
    registers it as ``registered_name(meta)``, a string under that name. The checkpoint is loaded and
    run on the example first: a file that is not a generator is a CheckpointError naming it, before
    anything is logged."""
    import mlflow

    service = GeneratorService(generator_path, device="cpu")
    registered_model_name = registered_name(service.meta) if register is True else (register or None)
    example = service.example()
    service.translate(example)  # a generator that cannot translate its own example is not served
    description = (f"{service.arch} ({service.meta.get('name', '?')}) trained on {service.meta.get('dataset', '?')}: "
                   f"in {' + '.join(f.doc for f in service.inputs)}; out {service.output.doc}")
    # MLflow validates the input example too, by loading the logged model (its own code and artifact)
    # and predicting on it: a check that the model works without this checkout
    with quiet_mlflow():
        info = _log(mlflow, name, generator_path, service, example, description, registered_model_name,
                    await_registration_s)
    version = info.registered_model_version if registered_model_name else None
    if version:
        mlflow.MlflowClient().update_model_version(registered_model_name, str(version), description=description)
    return LoggedModel(info, registered_model_name, version)


# What MLflow prints while it logs and registers a model: progress, not news (the stage says what it did)
MLFLOW_CHATTER = ("Successfully registered model", "Created version", "Downloading artifacts",
                  "Registered model", "Waiting up to")


@contextlib.contextmanager
def quiet_mlflow():
    """MLflow's INFO lines, its artifact progress bar and its registration prints off the console while
    a model is logged; anything else it writes to stderr (a real warning) is passed on."""
    import logging
    import os

    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
        for line in captured.getvalue().splitlines():
            if line.strip() and not line.lstrip().startswith(MLFLOW_CHATTER):
                print(line, file=sys.stderr)


def _log(mlflow, name, generator_path, service, example, description, registered_model_name, await_registration_s):
    return mlflow.pyfunc.log_model(
        name=name, python_model=str(MODEL_CODE), artifacts={"generator": str(generator_path)},
        code_paths=[str(ASAP_PACKAGE)], signature=signature(service), input_example=example,
        pip_requirements=requirements(), model_config={"device": "auto", "precision": "fp32"},
        metadata={"generator": service.meta.get("name", ""), "arch": service.arch,
                  "dataset": service.meta.get("dataset", ""), "height": service.height, "width": service.width,
                  "steps": service.meta.get("steps", ""), "description": description},
        registered_model_name=registered_model_name, await_registration_for=await_registration_s)
