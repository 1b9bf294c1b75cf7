"""export: the chosen model with BatchNorm folded, as one ONNX graph, checked against the checkpoint on test."""
from __future__ import annotations

import csv
import json

from recipe.core.layout import EVALUATE, EXPORT
from recipe.ship import export
from recipe.ship.schema import ExportConfig
from recipe.track import tracking
from recipe.train.schema import TrainConfig
from stages._common import log_numbers, run, stage_config, write_json


def main(args):
    p, experiment = stage_config("export")
    cfg = p.section("export", ExportConfig)
    train = p.section("train", TrainConfig).batch_for()  # batch_size auto: the rule's largest; export only scores
    chosen = json.loads(args.evaluate.read_text())["test_chosen"]["accuracy"]
    with (args.evaluate.parent / EVALUATE.predictions).open(newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)  # evaluate's decisions and probabilities (the p_<class> columns, in class order)
        probs = [c for c in rows.fieldnames if c.startswith("p_")]
        evaluated = {row["path"]: (row["predicted_chosen"], [float(row[c]) for c in probs]) for row in rows}
    with tracking.stage_run("export", p.used, experiment=experiment):
        metrics = export.run(cfg, bundle=args.model, split=args.split, raw=args.raw, out=args.out,
                             workers=train.workers, batch_size=train.batch_size, chosen_accuracy=chosen,
                             evaluated=evaluated)
        write_json(args.out / EXPORT.metrics, metrics)
        log_numbers({k: metrics[k] for k in ("folded_pairs", "batchnorm_left", "parity", "test_accuracy", "bytes")})
        tracking.log_artifact(args.out / EXPORT.metrics)
        tracking.log_artifact(args.out / EXPORT.model)
        par = metrics["parity"]
        print(f"export: {metrics['candidate']} ({metrics['views']} views) -> {args.out / 'model.onnx'} "
              f"({metrics['bytes']['onnx'] / 1e6:.1f} MB, opset {cfg.opset}); {metrics['folded_pairs']} Conv+BN "
              f"pairs folded; on {par['images']} of {par['of_test_images']} test images the largest probability "
              f"difference is {par['onnx_max_abs_diff']:.2g} (ONNX Runtime) and {par['folded_max_abs_diff']:.2g} "
              f"(folded) from {par['reference']}'s, every decided class the same")


if __name__ == "__main__":
    run(main, "split", "raw", "model", "evaluate", "out")
