"""The simplest model that could work: logistic regression on the raw pixels, as a checkpoint.

Contract: :func:`fit_pixels` shrinks every train image to ``side`` x ``side`` (the model's own
:class:`~recipe.train.models.PixelBody`, so training and serving see the same pixels),
standardises each feature by the train images' mean and spread, fits scikit-learn's
``LogisticRegression`` (L2, lbfgs) once per strength in ``C`` on the train split, keeps the one
with the lowest valid log loss (several labels per image: one regression per label, one-vs-rest,
judged by the mean binary log loss), and writes it as an ordinary checkpoint (model ``pixels_<side>``):
select scores it beside the networks, and predict, the export and the MLflow model carry it like
any other. A network that cannot beat it on valid is not shipped.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from recipe.train.learner import Common
from recipe.train.models import PIXELS, build_model
from recipe.train.session import Data, features, save_checkpoint


def _features(model, images, common: Common, device) -> np.ndarray:
    return features(model, common.batches(images, device, train=False)).double().numpy()


def fit_pixels(common: Common, data: Data, device: torch.device, *, side: int, strengths: list[float],
               out: Path, size: int) -> dict:
    """Fit, choose the strength on valid, save to ``out``; the numbers (valid accuracy and log loss,
    the strength, the time)."""

    t0 = time.perf_counter()
    config = {"name": f"{PIXELS}{side}", "weights": None, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
              "head": {"pool": "avg", "dropout": 0.0, "init": "kaiming", "init_gain": 1.0, "prior_bias": False}}
    h = config["head"]
    model = build_model(name=config["name"], weights=None, mean=config["mean"], std=config["std"],
                        classes=len(data.classes), pool=h["pool"], dropout=h["dropout"], init=h["init"],
                        init_gain=h["init_gain"]).to(device).eval()
    x_train = _features(model, data.train, common, device)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train = (x_train - mu) / sd
    x_valid = (_features(model, data.valid, common, device) - mu) / sd
    y_train, y_valid = data.train.labels.numpy(), data.valid.labels.numpy()
    best = None
    fit_one = _fit_labels if data.multi_label else _fit_classes
    for c in strengths:
        loss, accuracy, fitted = fit_one(x_train, y_train, x_valid, y_valid, c, len(data.classes))
        if best is None or loss < best[0]:
            best = (loss, accuracy, c, fitted)
    loss, accuracy, c, lr = best
    _set_weights(model, lr, mu, sd, len(data.classes))
    save_checkpoint(out, model.cpu(), classes=data.classes, size=size, model_config=config, stage="pixels", epoch=0,
                    channels=int(data.train.images.shape[1]), multi_label=data.multi_label)
    return {"pixels_accuracy": accuracy, "pixels_valid_loss": loss, "pixels_C": c, "pixels_side": side,
            "pixels_time_s": round(time.perf_counter() - t0, 1)}


def _fit_classes(x_train, y_train, x_valid, y_valid, c: float, classes: int):
    """One regression over the classes at strength ``c``: its valid log loss, accuracy, the fit."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
    p = np.full((len(y_valid), classes), 1e-15)
    p[:, lr.classes_] = lr.predict_proba(x_valid)
    loss = float(-np.log(np.clip(p[np.arange(len(y_valid)), y_valid], 1e-15, 1)).mean())
    return loss, float((p.argmax(1) == y_valid).mean()), lr


def _fit_labels(x_train, y_train, x_valid, y_valid, c: float, classes: int):
    """Several labels per image: one regression per label at strength ``c``; the mean binary log
    loss and the accuracy of every yes/no answer at 0.5 on valid, the fits."""
    fits = [_one_label(x_train, y_train[:, k], c) for k in range(classes)]
    p = np.clip(np.stack([f.predict_proba(x_valid)[:, 1] for f in fits], 1), 1e-15, 1 - 1e-15)
    loss = float(-(y_valid * np.log(p) + (1 - y_valid) * np.log(1 - p)).mean())
    return loss, float(((p > 0.5) == (y_valid > 0.5)).mean()), fits


class _Constant:
    """A label every train image holds, or none does: its probability, whatever the pixels."""

    def __init__(self, value: float, features: int):
        self.value, self.coef_ = value, np.zeros((1, features))
        self.intercept_ = np.array([30.0 if value else -30.0])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile([1 - self.value, self.value], (len(x), 1))


def _one_label(x: np.ndarray, y: np.ndarray, c: float):
    """One label's logistic regression (one-vs-rest), or its constant when train holds one answer."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return _Constant(float(y[0]), x.shape[1])
    return LogisticRegression(C=c, max_iter=2000).fit(x, y)


def _set_weights(model, lr, mu: np.ndarray, sd: np.ndarray, classes: int) -> None:
    """scikit-learn's coefficients into the head (two classes: one row, split as ±w/2 so the
    softmax of the two logits is its sigmoid); a class the train split lacks gets a logit of -30.
    With several labels per image ``lr`` is one fit per label, its row the label's logit."""
    if isinstance(lr, list):
        coef, bias = np.vstack([f.coef_ for f in lr]), np.concatenate([f.intercept_ for f in lr])
        _copy_weights(model, coef, bias, mu, sd)
        return
    coef, bias = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:
        coef, bias = np.vstack([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    w = np.zeros((classes, coef.shape[1]))
    b = np.full(classes, -30.0)
    w[lr.classes_], b[lr.classes_] = coef, bias
    _copy_weights(model, w, b, mu, sd)


def _copy_weights(model, w: np.ndarray, b: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> None:
    with torch.no_grad():
        model.body.mu.copy_(torch.as_tensor(mu, dtype=torch.float32))
        model.body.sd.copy_(torch.as_tensor(sd, dtype=torch.float32))
        model.head.fc.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        model.head.fc.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
