"""Classify your own images with the chosen model: ``python -m recipe.predict IMAGE... [--views NAME]``.

The model is select's bundle (``outputs/select/model.pt`` by default: the chosen checkpoint or
ensemble, its TTA views and decision threshold), a stage's checkpoint (``outputs/resize/model.pt``:
one model, no views), both loaded with ``weights_only=True``, or an MLflow model URI
(``runs:/<id>/model``, ``models:/<name>/<version>``) logged by ``evaluate``. Each image is
prepared the way the pipeline prepares its own: decoded to 8-bit grayscale or RGB (EXIF rotation
applied), shorter side resized to the model's size, centre-cropped, scaled to [0, 1].
:func:`prepare` does exactly that for callers of ``mlflow.pyfunc.load_model(uri).predict(...)``.

One line per image: path, the class the model decides on (its threshold applied), the
probability of that class (``--top`` more classes after it, by probability). An image that
cannot be read is reported on stderr and skipped; the exit code is then 1.
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
from recipe.ensemble import Ensemble, decide, load_bundle
from recipe.errors import ConfigError, DataError, RecipeError
from recipe.schema import Seed
from recipe.tta import VIEW_SETS, Views, tta_views

DEFAULT_MODEL = "outputs/select/model.pt"


def prepare(paths: list[str | Path], size: int, channels: int) -> np.ndarray:
    """float32 ``(N, channels, size, size)`` in [0, 1], as the pipeline prepares its images."""
    out = []
    for p in paths:
        im = load_image(Path(p))
        im = im.convert("L" if channels == 1 else "RGB")
        a = np.asarray(fit_square(im, size), dtype=np.float32) / 255.0
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out) if out else np.zeros((0, channels, size, size), np.float32)


class _Served(nn.Module):
    """An MLflow pyfunc model logged by evaluate (a DataFrame of class probabilities and
    ``predicted`` out) as a module giving log-probabilities, so the softmax the ensemble applies
    returns its probabilities unchanged; its threshold travels in the metadata."""

    def __init__(self, pyfunc, classes: list[str]):
        super().__init__()
        self.pyfunc = pyfunc
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pyfunc.predict(x.detach().cpu().numpy().astype(np.float32))
        probs = torch.from_numpy(np.array(out[self.classes], dtype=np.float64))
        return probs.clamp_min(1e-30).log().to(x.device)


def load(source: str) -> Ensemble:
    """The model as an :class:`~recipe.ensemble.Ensemble` (probabilities out, ``decide`` for
    classes) from a bundle, a checkpoint file or an MLflow model URI."""
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
        served = _Served(pyfunc, list(meta["classes"]))
        return Ensemble([(served, meta["size"])], classes=meta["classes"], channels=meta["channels"],
                        threshold=meta.get("threshold"), names=list(meta.get("members", ["served"]))).eval()
    return load_bundle(Path(source))[0]


def _views_from_params(name: str) -> Views:
    """The view set ``name`` with the project's ``select.tta`` settings (params.yaml, validated):
    every setting comes from conf/ through params.yaml; none is assumed."""
    from recipe.augment import Augment
    from recipe.config import load_section, read_params
    from recipe.schema import AugmentConfig, SelectConfig

    if not Path(PARAMS_FILE).is_file():
        raise ConfigError(f"--views reads select.tta from the project's {PARAMS_FILE}, which is not here; "
                          "run from the project root")
    params = read_params()
    tta = load_section("select", SelectConfig, params).tta
    augment = Augment(**load_section("augment", AugmentConfig, params).model_dump()) if name == "augment" else None
    return tta_views(name, scales=tta.scales, crop=tta.crop, n=tta.n, beta=tta.beta, augment=augment,
                     seed=load_section("seed", Seed, params))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipe.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path, help="image files (any format Pillow reads)")
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"bundle, checkpoint or MLflow model URI (default {DEFAULT_MODEL}: the chosen model)")
    ap.add_argument("--views", choices=list(VIEW_SETS),
                    help="another TTA view set than the model's (settings: select.tta of params.yaml)")
    ap.add_argument("--top", type=int, default=1, help="classes printed per image (default 1)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    try:
        model = load(args.model)
        if args.views:
            model.views = _views_from_params(args.views)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    ok: list[Path] = []
    arrays: list[np.ndarray] = []
    for path in args.images:
        try:
            arrays.append(prepare([path], model.size, model.channels)[0])
            ok.append(path)
        except (OSError, DataError, ValueError, ImageRefused) as exc:
            print(f"error: {path}: cannot read as an image ({exc}); skipped", file=sys.stderr)
            failed += 1
    if ok:
        x = torch.from_numpy(np.stack(arrays))
        with torch.no_grad():
            probs = torch.cat([model(x[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)])
        decided = decide(probs.numpy(), model.threshold)
        k = max(1, min(args.top, len(model.classes)))
        for path, p, d in zip(ok, probs, decided):
            rest = [i for i in torch.argsort(p, descending=True, stable=True).tolist() if i != d][:k - 1]
            print("\t".join([str(path), *[f"{model.classes[i]}\t{p[i]:.4f}" for i in [int(d), *rest]]]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
