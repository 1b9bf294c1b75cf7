"""Classify your own images with the chosen model: ``python -m recipe.ship.predict IMAGE... [--views NAME]``.

The model is select's bundle (``outputs/select/model.pt`` by default: the chosen checkpoint or
ensemble, its TTA views and decision threshold), a stage's checkpoint (``outputs/resize/model.pt``:
one model, no views), both loaded with ``weights_only=True``; the exported ONNX file
(``outputs/export/model.onnx``, run by ONNX Runtime: this path needs onnxruntime, numpy and Pillow,
not torch); or an MLflow model URI (``runs:/<id>/model``, ``models:/<name>/<version>``) logged by
``evaluate``, which is sent the files' bytes as ``mlflow models serve`` would be. Each image is
prepared the way the pipeline prepares its own: decoded to 8-bit grayscale or RGB (EXIF rotation
applied), shorter side resized to the model's size, centre-cropped, scaled to [0, 1]
(:func:`prepare`, from files or bytes).

One line per image: path, the class the model decides on (its threshold applied), the
probability of that class (``--top`` more classes after it, by probability); for a model of several
labels per image, each label decided (its own threshold applied) and its probability, or
``(none)``. With ``--csv OUT``, one CSV row per image instead: ``path``, ``prediction`` (several
labels: those decided, joined by a space), then one column per class holding its probability.
A folder argument means every image under it (by the file name's extension: the formats the
pipeline decodes), in sorted order. Images are read, predicted and written one batch
at a time (a large folder needs no more memory than a batch). An image that cannot be read is
reported on stderr and skipped; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from recipe.core.errors import ConfigError, DataError, RecipeError

# Only numpy, Pillow and the project's torch-free modules at the top: the ONNX path
# (--model model.onnx) runs without torch; the other paths import it when they load a model.
from recipe.data.images import FORMATS, ImageRefused, fit_square, load_image, open_checked, to_canonical

DEFAULT_MODEL = "outputs/select/model.pt"


def decode(source: str | Path | bytes, max_pixels: int = Image.MAX_IMAGE_PIXELS) -> Image.Image:
    """A file (path) or its bytes as the canonical 8-bit L or RGB image (EXIF rotation applied);
    :class:`ImageRefused` or ``OSError`` when it is not a usable image. Both are opened only by
    the decoders of :data:`recipe.data.images.FORMATS`, and refused above ``max_pixels`` (by
    default Pillow's limit, the audit's default ``max_pixels``) before any pixel is decoded."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        with open_checked(io.BytesIO(bytes(source)), max_pixels) as im:
            return to_canonical(im)
    return load_image(Path(source), max_pixels)


def prepare(sources: list[str | Path | bytes], size: int, channels: int,
            max_pixels: int = Image.MAX_IMAGE_PIXELS) -> np.ndarray:
    """float32 ``(N, channels, size, size)`` in [0, 1], as the pipeline prepares its images, from
    image files or their bytes (each at most ``max_pixels``, see :func:`decode`)."""
    out = []
    for src in sources:
        im = decode(src, max_pixels).convert("L" if channels == 1 else "RGB")
        a = np.asarray(fit_square(im, size), dtype=np.float32) / 255.0
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out) if out else np.zeros((0, channels, size, size), np.float32)


class ServedModel:
    """An MLflow model logged by evaluate (image bytes in; a DataFrame of class probabilities and
    ``predicted`` out), with the attributes :func:`main` reads of every model."""

    def __init__(self, pyfunc, meta: dict):
        self.pyfunc = pyfunc
        self.classes, self.size, self.channels = list(meta["classes"]), int(meta["size"]), int(meta["channels"])
        self.threshold = meta.get("threshold")
        self.names = list(meta.get("members", ["served"]))
        self.multi_label = bool(meta.get("multi_label"))

    def predict_files(self, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        import pandas as pd

        from recipe.decide.labels import hot

        out = self.pyfunc.predict(pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]}))
        if self.multi_label:  # the labels decided, joined by a space: back to 0/1 per label
            return np.asarray(out[self.classes], dtype=np.float64), hot(out["predicted"], self.classes)
        return (np.asarray(out[self.classes], dtype=np.float64),
                np.array([self.classes.index(c) for c in out["predicted"]], dtype=np.int64))


def decided_names(model, decided: np.ndarray) -> list[str]:
    """The decision for each image as written: the class's name, or with several labels per image
    (``model.multi_label``) the labels decided, joined by a space (empty: none)."""
    if getattr(model, "multi_label", False):
        from recipe.decide.labels import joined

        return joined(decided, model.classes)
    return [model.classes[int(d)] for d in decided]


def load(source: str):
    """The model from a bundle or checkpoint file (an :class:`~recipe.decide.ensemble.Ensemble`:
    probabilities out, ``decide`` for classes), an exported ONNX file
    (:class:`~recipe.ship.onnx_model.OnnxModel`) or an MLflow model URI (:class:`ServedModel`)."""
    if "://" in source or source.startswith(("runs:/", "models:/")):
        import mlflow.pyfunc

        from recipe.track.tracking import configure, mask_uri

        configure()
        try:
            pyfunc = mlflow.pyfunc.load_model(source)
        except Exception as exc:  # MLflow's errors are long; the first line says what is wrong
            raise ConfigError(mask_uri(f"{source}: cannot load this MLflow model ({str(exc).splitlines()[0]})")) from None
        meta = pyfunc.metadata.metadata or {}
        if not {"classes", "size", "channels"} <= set(meta):
            raise ConfigError(f"{source}: not a model logged by finetune-recipe's evaluate stage (no classes/size)")
        return ServedModel(pyfunc, meta)
    if Path(source).suffix == ".onnx":
        from recipe.ship.onnx_model import OnnxModel

        return OnnxModel(source)
    from recipe.decide.ensemble import load_bundle

    return load_bundle(Path(source))[0]


def probabilities(model, paths: list[Path], arrays: list[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities and decided class indices for the prepared images (``arrays``;
    a served model is sent the files' bytes)."""
    if isinstance(model, ServedModel):
        return model.predict_files(paths)
    x = np.stack(arrays)
    if hasattr(model, "run"):  # ONNX Runtime: the graph decides too
        parts = [model.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate([p for p, _ in parts]).astype(np.float64), np.concatenate([d for _, d in parts])
    import torch

    with torch.no_grad():
        probs = torch.cat([model(torch.from_numpy(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
    return probs.numpy(), model.decide(probs.numpy())


def _views_from_params(name: str):
    """The view set ``name`` with the project's ``select.tta`` settings (params.yaml, validated):
    every setting comes from conf/ through params.yaml; none is assumed."""
    from recipe.core.config import PARAMS_FILE, load_section, read_params
    from recipe.core.schema import Seed
    from recipe.decide.schema import SelectConfig
    from recipe.decide.tta import tta_views
    from recipe.train.augment import Augment
    from recipe.train.schema import AugmentConfig

    if not Path(PARAMS_FILE).is_file():
        raise ConfigError(f"--views reads select.tta from the project's {PARAMS_FILE}, which is not here; "
                          "run from the project root")
    params = read_params()
    tta = load_section("select", SelectConfig, params).tta
    augment = Augment(**load_section("augment", AugmentConfig, params).model_dump()) if name == "augment" else None
    return tta_views(name, scales=tta.scales, crop=tta.crop, n=tta.n, beta=tta.beta, augment=augment,
                     seed=load_section("seed", Seed, params))


def image_suffixes() -> set[str]:
    """The file name extensions (lower case, with the dot) of the formats the pipeline decodes, as Pillow registers them."""
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS}


def expand(arguments: list[Path]) -> tuple[list[Path], list[Path]]:
    """The image files the arguments name (a folder: every file under it whose extension is an
    image format's, sorted), and the files under the folders left out by their extension."""
    suffixes = image_suffixes()
    files: list[Path] = []
    other: list[Path] = []
    for arg in arguments:
        if arg.is_dir():
            for f in sorted(p for p in arg.rglob("*") if p.is_file()):
                (files if f.suffix.lower() in suffixes else other).append(f)
        else:
            files.append(arg)
    return files, other


def _batches(paths: list[Path], model, batch_size: int) -> Iterator[tuple[list[Path], list[np.ndarray], list[str]]]:
    """The readable images of each run of ``batch_size`` paths, prepared, and the errors of the others."""
    for i in range(0, len(paths), batch_size):
        ok, arrays, errors = [], [], []
        for path in paths[i:i + batch_size]:
            try:
                arrays.append(prepare([path], model.size, model.channels)[0])
                ok.append(path)
            except (OSError, DataError, ValueError, ImageRefused) as exc:
                errors.append(f"error: {path}: cannot read as an image ({exc}); skipped")
        yield ok, arrays, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipe.ship.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path, help="image files or folders (every image under a folder)")
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"bundle, checkpoint, exported .onnx file or MLflow model URI (default {DEFAULT_MODEL}: "
                         "the chosen model)")
    ap.add_argument("--views", metavar="NAME",
                    help="another TTA view set than the model's (a key of recipe.decide.tta.VIEW_SETS: flips, dihedral, "
                         "...), for a bundle or checkpoint; settings: select.tta of params.yaml")
    ap.add_argument("--top", type=int, default=1, help="classes printed per image (default 1)")
    ap.add_argument("--csv", type=Path, metavar="OUT",
                    help="write one row per image to OUT (path, prediction, one probability column per class)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    try:
        model = load(args.model)
        if args.views:
            if not hasattr(model, "views"):
                raise ConfigError(f"--views: {args.model} has its views built in; it takes a bundle or checkpoint")
            model.views = _views_from_params(args.views)
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths, other = expand(args.images)
    if other:
        print(f"predict: {len(other)} file(s) under the folders are not images by their extension, left out "
              f"(e.g. {other[0]})", file=sys.stderr)
    failed = 0
    k = max(1, min(args.top, len(model.classes)))
    out = writer = bar = None
    if args.csv:
        from tqdm import tqdm

        args.csv.parent.mkdir(parents=True, exist_ok=True)
        out = args.csv.open("w", newline="", encoding="utf-8")
        writer = csv.writer(out)
        writer.writerow(["path", "prediction", *model.classes])
        bar = tqdm(total=len(paths), unit="image", desc="predict", file=sys.stderr, disable=None)
    try:
        for ok, arrays, errors in _batches(paths, model, args.batch_size):
            for line in errors:
                print(line, file=sys.stderr)
            failed += len(errors)
            if ok:
                probs, decided = probabilities(model, ok, arrays, args.batch_size)
                for path, p, d, name in zip(ok, probs, decided, decided_names(model, decided)):
                    if writer is not None:
                        writer.writerow([str(path), name, *[f"{v:.6f}" for v in p]])
                    elif getattr(model, "multi_label", False):
                        yes = np.flatnonzero(d).tolist()
                        print("\t".join([str(path), *([f"{model.classes[i]}\t{p[i]:.4f}" for i in yes] or ["(none)"])]))
                    else:
                        rest = [i for i in np.argsort(-p, kind="stable").tolist() if i != d][:k - 1]
                        print("\t".join([str(path), *[f"{model.classes[i]}\t{p[i]:.4f}" for i in [int(d), *rest]]]))
            if out is not None:
                out.flush()
                bar.update(len(ok) + len(errors))
    finally:
        if out is not None:
            bar.close()
            out.close()
    if args.csv:
        print(f"predict: {len(paths) - failed} image(s) -> {args.csv}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
