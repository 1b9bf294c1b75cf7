"""Classify your own images with a trained model: ``python -m recipe.predict IMAGE... [--tta]``.

The model is a checkpoint written by a stage (``outputs/resize/model.pt`` by default; loaded with
``weights_only=True``) or an MLflow model URI (``runs:/<id>/model``, ``models:/<name>/<version>``)
logged by ``evaluate``. Each image is prepared the way the pipeline prepares its own: decoded to
8-bit grayscale or RGB (EXIF rotation applied), shorter side resized to the model's size,
centre-cropped, scaled to [0, 1]. :func:`prepare` does exactly that for callers of
``mlflow.pyfunc.load_model(uri).predict(...)``.

One line per image: path, class, probability of that class (``--top`` more classes after it).
An image that cannot be read is reported on stderr and skipped; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recipe.data.images import ImageRefused, load_image
from recipe.data.loader import fit_square
from recipe.config import PARAMS_FILE
from recipe.errors import ConfigError, DataError, RecipeError
from recipe.schema import Seed
from recipe.tta import VIEW_SETS, Views, plain_views, predict, tta_views

DEFAULT_MODEL = "outputs/resize/model.pt"


class Predictor(nn.Module):
    """The classifier as a user calls it: float32 images ``(N, C, size, size)`` in [0, 1] →
    class probabilities ``(N, classes)``. Carries its class names, size and channel count."""

    def __init__(self, model: nn.Module, classes: list[str], size: int, channels: int):
        super().__init__()
        self.model = model
        self.classes = list(classes)
        self.size = int(size)
        self.channels = int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float().softmax(1)


def prepare(paths: list[str | Path], size: int, channels: int) -> np.ndarray:
    """float32 ``(N, channels, size, size)`` in [0, 1], as the pipeline prepares its images."""
    out = []
    for p in paths:
        im = load_image(Path(p))
        im = im.convert("L" if channels == 1 else "RGB")
        a = np.asarray(fit_square(im, size), dtype=np.float32) / 255.0
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out) if out else np.zeros((0, channels, size, size), np.float32)


class _Pyfunc(nn.Module):
    """An MLflow pyfunc model (probabilities out) as a module giving log-probabilities, so the
    softmax that TTA applies to every view returns its probabilities unchanged."""

    def __init__(self, pyfunc):
        super().__init__()
        self.pyfunc = pyfunc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = np.asarray(self.pyfunc.predict(x.detach().cpu().numpy().astype(np.float32)), dtype=np.float64)
        return torch.from_numpy(probs).clamp_min(1e-30).log().to(x.device)


def load(source: str) -> Predictor:
    """A :class:`Predictor` from a checkpoint file or an MLflow model URI."""
    if "://" in source or source.startswith(("runs:/", "models:/")):
        import mlflow.pyfunc

        from recipe.tracking import configure

        configure()
        try:
            pyfunc = mlflow.pyfunc.load_model(source)
        except Exception as exc:  # MLflow's errors are long; the first line says what is wrong
            raise ConfigError(f"{source}: cannot load this MLflow model ({str(exc).splitlines()[0]})") from None
        meta = pyfunc.metadata.metadata or {}
        if not {"classes", "size", "channels"} <= set(meta):
            raise ConfigError(f"{source}: not a model logged by finetune-recipe's evaluate stage (no classes/size)")
        return Predictor(_Pyfunc(pyfunc), meta["classes"], meta["size"], meta["channels"]).eval()
    from recipe.session import load_checkpoint

    model, meta = load_checkpoint(Path(source))
    return Predictor(model, meta["classes"], meta["size"], meta.get("channels", 3)).eval()


def _views_from_params(name: str | None) -> Views:
    """TTA views: the project's ``evaluate.tta`` (params.yaml, validated), its view set replaced
    by ``name`` when given. Every setting comes from conf/ through params.yaml; none is assumed."""
    from recipe.augment import Augment
    from recipe.config import load_section, read_params
    from recipe.schema import AugmentConfig, EvaluateConfig

    if not Path(PARAMS_FILE).is_file():
        raise ConfigError(f"--tta reads evaluate.tta from the project's {PARAMS_FILE}, which is not here; "
                          "run from the project root")
    params = read_params()
    tta = load_section("evaluate", EvaluateConfig, params).tta
    name = name or tta.views
    augment = Augment(**load_section("augment", AugmentConfig, params).model_dump()) if name == "augment" else None
    return tta_views(name, scales=tta.scales, crop=tta.crop, n=tta.n, beta=tta.beta, augment=augment,
                     seed=load_section("seed", Seed, params))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipe.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path, help="image files (any format Pillow reads)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint or MLflow model URI (default {DEFAULT_MODEL})")
    ap.add_argument("--tta", action="store_true", help="average the probabilities of test-time views")
    ap.add_argument("--views", choices=list(VIEW_SETS), help="TTA view set (default: evaluate.tta.views of params.yaml)")
    ap.add_argument("--top", type=int, default=1, help="classes printed per image (default 1)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    try:
        predictor = load(args.model)
        views = _views_from_params(args.views) if args.tta else plain_views()
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    ok: list[Path] = []
    arrays: list[np.ndarray] = []
    for path in args.images:
        try:
            arrays.append(prepare([path], predictor.size, predictor.channels)[0])
            ok.append(path)
        except (OSError, DataError, ValueError, ImageRefused) as exc:
            print(f"error: {path}: cannot read as an image ({exc}); skipped", file=sys.stderr)
            failed += 1
    if ok:
        x = torch.from_numpy(np.stack(arrays))
        batches = [(x[i:i + args.batch_size], torch.zeros(len(x[i:i + args.batch_size]), dtype=torch.long))
                   for i in range(0, len(x), args.batch_size)]
        probs = predict(predictor.model, batches, views)["tta"]
        k = max(1, min(args.top, len(predictor.classes)))
        for path, p in zip(ok, probs):
            order = torch.argsort(p, descending=True, stable=True)[:k]
            print("\t".join([str(path), *[f"{predictor.classes[i]}\t{p[i]:.4f}" for i in order.tolist()]]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
