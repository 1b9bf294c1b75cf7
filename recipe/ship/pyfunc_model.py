"""The MLflow model evaluate logs, as MLflow's "models from code": this file is the model's code,
the bundle (recipe.decide.ensemble) its one artifact, so nothing is pickled.

Input: a DataFrame with one column, ``image``: the bytes of an image file (PNG, JPEG, TIFF, BMP,
WEBP or GIF, the only decoders that see them: ``recipe.data.images.FORMATS``; base64 in a JSON
request to ``mlflow models serve``, which decodes it by the signature's ``binary`` type). A request
holds at most ``max_rows`` images and each at most ``max_pixels`` pixels (``evaluate.model`` in
conf/, the logged model's ``model_config``), so one request cannot take the server's memory.
Each is prepared as the pipeline prepares its own images
(``recipe.ship.predict.prepare``). Output: a DataFrame with one probability column per class and
``predicted``, the class the chosen model decides on (its decision threshold applied when it has
one; several labels per image: each label's sigmoid, and the labels decided at their thresholds,
joined by a space). Every member, view and the threshold of the bundle are applied: the logged model is exactly
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
from PIL import Image

COLUMN = "image"


class RecipeModel(PythonModel):
    # What a model logged without a model_config (or called directly) accepts.
    max_pixels: int = Image.MAX_IMAGE_PIXELS
    max_rows: int | None = None

    def load_context(self, context):
        from recipe.decide.ensemble import load_bundle

        self.model, self.meta = load_bundle(context.artifacts["bundle"])
        config = context.model_config or {}
        self.max_pixels = int(config.get("max_pixels", self.max_pixels))
        self.max_rows = config.get("max_rows", self.max_rows)

    def predict(self, context, model_input, params=None):
        from recipe.ship.predict import prepare

        m = self.model
        if not isinstance(model_input, pd.DataFrame) or COLUMN not in model_input.columns:
            raise MlflowException(f"expected a DataFrame with an {COLUMN!r} column of image file bytes",
                                  error_code=INVALID_PARAMETER_VALUE)
        if self.max_rows is not None and len(model_input) > self.max_rows:
            raise MlflowException(f"{len(model_input)} images in one request; this model takes at most "
                                  f"{self.max_rows} (evaluate.model.max_rows)", error_code=INVALID_PARAMETER_VALUE)
        arrays = []
        for i, data in enumerate(model_input[COLUMN]):
            try:
                if not isinstance(data, (bytes, bytearray)):
                    raise ValueError(f"{type(data).__name__}, not bytes (send the file's bytes; base64 in JSON)")
                arrays.append(prepare([data], m.size, m.channels, self.max_pixels)[0])
            except Exception as exc:  # Pillow's errors and ImageRefused: say which row, not a traceback
                raise MlflowException(f"{COLUMN} {i}: cannot read as an image ({exc})",
                                      error_code=INVALID_PARAMETER_VALUE) from None
        x = np.stack(arrays) if arrays else np.zeros((0, m.channels, m.size, m.size), np.float32)
        with torch.no_grad():
            p = m(torch.from_numpy(x)).numpy()
        out = pd.DataFrame(p, columns=m.classes)
        from recipe.ship.predict import decided_names

        out["predicted"] = decided_names(m, m.decide(p))
        return out


set_model(RecipeModel())
