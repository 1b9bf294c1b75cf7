"""The MLflow model evaluate logs, as MLflow's "models from code": this file is the model's code,
the bundle (recipe.ensemble) its one artifact, so nothing is pickled.

Input: float32 images ``(N, C, size, size)`` in [0, 1] (``recipe.predict.prepare`` makes them
from image files; ``size`` and ``channels`` are in the model's metadata). Output: a DataFrame
with one probability column per class and ``predicted``, the class the chosen model decides on
(its decision threshold applied when it has one). Every member, view and the threshold of the
bundle are applied: the logged model is exactly what select chose.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class RecipeModel(PythonModel):
    def load_context(self, context):
        from recipe.ensemble import load_bundle

        self.model, self.meta = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input, dtype=np.float32)
        m = self.model
        if x.ndim != 4 or x.shape[1] != m.channels or x.shape[2:] != (m.size, m.size):
            raise ValueError(f"expected float32 images of shape (N, {m.channels}, {m.size}, {m.size}) in [0, 1], "
                             f"got {x.shape}")
        with torch.no_grad():
            p = m(torch.from_numpy(x)).numpy()
        out = pd.DataFrame(p, columns=m.classes)
        out["predicted"] = [m.classes[i] for i in m.decide(p)]
        return out


set_model(RecipeModel())
