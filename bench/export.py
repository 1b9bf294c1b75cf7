"""Inference speed of the shipped model: the checkpoint, BatchNorm folded, and ONNX Runtime, on the CPU.

Claim: folding each Conv+BatchNorm pair into one convolution (the export stage's first step)
makes inference faster without changing its outputs, and the exported ONNX graph under ONNX
Runtime is faster still; both are ratios against the reference measured in the same run: the
checkpoint as PyTorch runs it by default (NCHW, eager), at the same batch size.

How it is measured:
- Model: ``--model`` (a bundle or checkpoint; ``outputs/select/model.pt`` is the chosen one, its
  views included), or by default EfficientNet-Lite0 with the bundled ImageNet weights and
  conf/model/efficientnet_lite0.yaml's head at ``--size`` (default 224) px, one channel, no views.
- Variants, each built from that model: the checkpoint in NCHW, the checkpoint in channels_last
  (what the stages use), folded (``recipe.decide.fold.fold_ensemble``) in channels_last, and ONNX
  Runtime on the folded graph ``recipe.ship.export.export_onnx`` writes (CPU provider, as many
  intra-op threads as torch has).
- Data: the first ``--images`` (default 32) ELPV PNGs by name, prepared as predict prepares
  them (``recipe.ship.predict.prepare``) at the model's size.
- Rounds: ``--rounds`` (default 3); in each, every variant runs one untimed call, then goes over
  the images at batch 1 and at batch ``--batch-size`` (default 32), the variants' order rotating
  from round to round. Reported: images/s from the median round, its ratio to the reference at
  that batch size, the largest probability difference from the reference, and the file sizes.
- ``--int8`` adds ONNX Runtime's dynamic int8 quantization of the folded graph
  (``onnxruntime.quantization.quantize_dynamic``, int8 weights); with ``--project PROJECT`` the
  fp32 and int8 graphs are scored on that finished project's valid split (what a choice between
  them rests on) and its test split (after the fact).

Run: ``python bench/export.py`` (under a minute on 2 cores; ``--model outputs/select/model.pt
--int8 --project .`` for the shipped model, quantized, on the test split: a few minutes).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import CLASSES, MODEL_CFG, add_common_options, elpv, print_header, require, start

from recipe.decide.ensemble import Ensemble, load_bundle
from recipe.decide.fold import fold_ensemble
from recipe.ship.export import export_onnx
from recipe.ship.onnx_model import OnnxModel
from recipe.ship.predict import prepare
from recipe.train.session import new_model


def torch_runner(model: Ensemble, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(memory_format=fmt)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).contiguous(memory_format=fmt)).numpy()
    return run


def quantize(path: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of the graph (weights int8, activations quantized
    per call), the model's metadata carried over."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name("model.int8.onnx")
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    q, meta = onnx.load(str(out)), onnx.load(str(path)).metadata_props
    del q.metadata_props[:]
    q.metadata_props.extend(meta)
    onnx.save(q, str(out))
    return out


def accuracy_cost(project: Path, model: Ensemble, runtimes: dict, batch_size: int) -> None:
    """Accuracy of each runtime on ``project``'s valid split (what a choice between them rests on)
    and its test split (reported after the fact)."""
    from recipe.data.loader import load_split
    from recipe.data.split import class_names, read_split

    table = read_split(project / "outputs/split/split.csv")
    for split in ("valid", "test"):
        images = load_split(table, project / "data/raw/files", split=split, size=model.size, classes=class_names(table))
        x, labels = (images.images.float() / 255).numpy(), images.labels.numpy()
        for name, rt in runtimes.items():
            pred = np.concatenate([rt.run(x[i:i + batch_size])[1] for i in range(0, len(x), batch_size)])
            print(f"{split} accuracy, {name}: {100 * (pred == labels).mean():.2f}% ({len(labels)} images)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a bundle or checkpoint (default: Lite0, bundled weights)")
    ap.add_argument("--size", type=int, default=224, help="px, for the default model")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--int8", action="store_true",
                    help="add ONNX Runtime's dynamic int8 quantization of the graph (quantize_dynamic)")
    ap.add_argument("--project", type=Path, metavar="PROJECT",
                    help="with --int8: a finished project whose valid and test splits the fp32 and int8 graphs are "
                         "scored on")
    add_common_options(ap)
    args = ap.parse_args()
    require(ap, args, ones=("images", "batch-size", "rounds", "size"))
    start(args)
    import onnxruntime

    print_header("Inference: checkpoint vs BatchNorm folded vs ONNX Runtime (CPU)",
                 f" | onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, _ = load_bundle(args.model)
            model_bytes = args.model.stat().st_size
        else:
            net = new_model(MODEL_CFG, CLASSES, [0.5, 0.5])
            model = Ensemble([(net, args.size)], classes=CLASSES, channels=1, names=["lite0"]).eval()
            torch.save(net.state_dict(), Path(tmp) / "state.pt")
            model_bytes = (Path(tmp) / "state.pt").stat().st_size
        folded, pairs = fold_ensemble(model)
        onnx_path = export_onnx(folded, Path(tmp) / "model.onnx", opset=18, dynamic_batch=True, optimize=True)
        runtime = OnnxModel(onnx_path, threads=torch.get_num_threads())
        files, _ = elpv(args.images, ap)
        x = prepare(files, model.size, model.channels)
        variants = [("checkpoint, NCHW (reference)", torch_runner(model, False)),
                    ("checkpoint, channels_last", torch_runner(model, True)),
                    (f"folded ({pairs} Conv+BN pairs), channels_last", torch_runner(folded, True)),
                    ("ONNX Runtime, folded graph", lambda a: runtime.run(a)[0])]
        if args.int8:
            int8_path = quantize(onnx_path)
            int8 = OnnxModel(int8_path, threads=torch.get_num_threads())
            variants.append(("ONNX Runtime, int8 (dynamic)", lambda a: int8.run(a)[0]))
            print(f"files: int8 ONNX {int8_path.stat().st_size / 1e6:.1f} MB")
            if args.project:
                accuracy_cost(args.project, model, {"fp32": runtime, "int8": int8}, args.batch_size)
        print(f"model: {'+'.join(model.names)} at {model.size} px, {model.channels} channel(s), views "
              f"{model.views.name}; {len(x)} ELPV images; {args.rounds} rounds")
        print(f"files: checkpoint {model_bytes / 1e6:.1f} MB, ONNX {onnx_path.stat().st_size / 1e6:.1f} MB")
        batches = (1, args.batch_size)
        times = {(v, b): [] for v, _ in variants for b in batches}
        outputs = {}
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for name, run in order:
                run(x[:1])  # untimed: first-call setup
                for b in batches:
                    t = time.perf_counter()
                    out = np.concatenate([run(x[i:i + b]) for i in range(0, len(x), b)])
                    times[(name, b)].append(time.perf_counter() - t)
                    outputs[name] = out
    ref_name = variants[0][0]
    print(f"\n{'variant':<44}" + "".join(f"{f'batch {b}: img/s  ratio':>26}" for b in batches) + "   max |dp|")
    for name, _ in variants:
        cells = []
        for b in batches:
            med = statistics.median(times[(name, b)])
            ref = statistics.median(times[(ref_name, b)])
            cells.append(f"{len(x) / med:>16.1f}  {ref / med:>7.2f}x")
        diff = float(np.abs(outputs[name].astype(np.float64) - outputs[ref_name]).max())
        print(f"{name:<44}" + "".join(f"{c:>26}" for c in cells) + f"   {diff:.1e}")


if __name__ == "__main__":
    main()
