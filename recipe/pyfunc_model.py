"""The MLflow model evaluate logs, as MLflow's "models from code": this file is the model's code,
the bundle (recipe.ensemble) its one artifact, so nothing is pickled.

Input: a DataFrame with one column, ``image``: the bytes of an image file (PNG, JPEG, TIFF, any
format Pillow reads; base64 in a JSON request to ``mlflow models serve``, which decodes it by the
signature's ``binary`` type). Each is prepared as the pipeline prepares its own images
(``recipe.predict.prepare``). Output: a DataFrame with one probability column per class and
``predicted``, the class the chosen model decides on (its decision threshold applied when it has
one). Every member, view and the threshold of the bundle are applied: the logged model is exactly
what select chose. An image that cannot be read is refused with an MLflow
``INVALID_PARAMETER_VALUE`` error naming its row (HTTP 400 from the server, no traceback).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

COLUMN = "image"


class RecipeModel(PythonModel):
    def load_context(self, context):
        from recipe.ensemble import load_bundle

        self.model, self.meta = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        from recipe.predict import prepare

        m = self.model
        if not isinstance(model_input, pd.DataFrame) or COLUMN not in model_input.columns:
            raise MlflowException(f"expected a DataFrame with an {COLUMN!r} column of image file bytes",
                                  error_code=INVALID_PARAMETER_VALUE)
        arrays = []
        for i, data in enumerate(model_input[COLUMN]):
            try:
                if not isinstance(data, (bytes, bytearray)):
                    raise ValueError(f"{type(data).__name__}, not bytes (send the file's bytes; base64 in JSON)")
                arrays.append(prepare([data], m.size, m.channels)[0])
            except Exception as exc:  # Pillow's errors and ImageRefused: say which row, not a traceback
                raise MlflowException(f"{COLUMN} {i}: cannot read as an image ({exc})",
                                      error_code=INVALID_PARAMETER_VALUE) from None
        x = np.stack(arrays) if arrays else np.zeros((0, m.channels, m.size, m.size), np.float32)
        with torch.no_grad():
            p = m(torch.from_numpy(x)).numpy()
        out = pd.DataFrame(p, columns=m.classes)
        out["predicted"] = [m.classes[i] for i in m.decide(p)]
        return out


set_model(RecipeModel())
