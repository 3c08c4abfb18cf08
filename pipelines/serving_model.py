"""The served generator's MLflow model code ("models from code": MLflow runs this file when it loads
the model, so nothing is unpickled). Logged by ``pipelines.serving.log_generator_model`` with the
generator checkpoint as the artifact ``generator`` and ``asap/`` as code; it imports nothing else
of this project, so a served model needs neither the project nor its install.

Requests go to ``asap.serving.GeneratorService``: a bad one (wrong label values, size, dtype) is an
MlflowException with the service's one-line message, which `mlflow models serve` answers as HTTP 400
``{"error_code": "INVALID_PARAMETER_VALUE", "message": "..."}``, no traceback, and keeps serving.
``model_config`` (logged: device auto, precision fp32) can be overridden when loading, e.g.
``mlflow.pyfunc.load_model(uri, model_config={"device": "cuda", "precision": "bf16"})``.
"""

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel


class GeneratorModel(PythonModel):
    """Label maps (N, H, W) int64 in, images (N, H, W, 3) uint8 out (see asap/serving.py)."""

    def load_context(self, context):
        from asap.serving import GeneratorService

        config = context.model_config or {}
        self.service = GeneratorService(context.artifacts["generator"], device=config.get("device", "auto"),
                                        precision=config.get("precision", "fp32"))

    # model_input: one array, or a dict of them for named inputs (instance-edge generators). MLflow
    # infers no schema from an np.ndarray hint (the logged signature states the inputs) and, with it,
    # stops warning at every load that predict has no type hint.
    def predict(self, context, model_input: np.ndarray, params=None):
        try:
            return self.service.translate(model_input)
        except ValueError as err:  # TranslateError and the models' own size checks: the request's fault
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception as err:  # noqa: BLE001 - one line for the client, not MLflow's stack trace
            raise MlflowException(f"the generator failed on this request: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}", error_code=INTERNAL_ERROR) from None


mlflow.models.set_model(GeneratorModel())
