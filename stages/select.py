"""select: every candidate scored on the valid split; the chosen model, views and threshold bundled."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from recipe.core.layout import CV, FOLD_SPLITS, TRAINING_STAGES
from recipe.decide import select
from recipe.decide.ensemble import save_bundle
from recipe.decide.schema import ScoringConfig, SelectConfig
from recipe.report import plots
from recipe.track import tracking
from stages._common import log_numbers, run, stage_config, write_json
from stages._training import common_config


def main(args):
    t0 = time.perf_counter()
    p, experiment = stage_config("select")
    common = common_config(p)
    cfg = p.section("select", SelectConfig)
    dirs = {s: getattr(args, s) for s in TRAINING_STAGES}
    with tracking.stage_run("select", p.used, experiment=experiment):
        singles, aliases = select.checkpoints(dirs)
        # the simple baselines first (logistic regression on the pixels): scored like any candidate
        singles = {**{p.stem: p for p in sorted(args.baseline.glob("*.pt"))}, **singles}
        cands = select.candidates(singles, cfg.ensembles, aliases)
        cv_m = json.loads((args.cv / CV.metrics).read_text())
        folds = {f"cv@{i}": Path(m) for i, m in enumerate(cv_m.get("members", []))}  # cv.folds >= 2
        fold_cand = select.fold_candidate(folds, args.cv / CV.fold_splits / FOLD_SPLITS.folds)
        if fold_cand is not None:
            singles = {**singles, **folds}
            cands.append(fold_cand)
        rows, scores, sets, classes = select.score(common, cfg, singles=singles, cands=cands, split=args.split,
                                                   raw=args.raw, scoring=p.section("scoring", ScoringConfig))
        d = select.decide_all(rows, scores, cands, sets, singles, classes, cfg,
                              priors=select.train_priors(args.split, classes), seed=common.seed)
        cand, views, threshold, summary, chosen = d["candidate"], d["views"], d["threshold"], d["summary"], d["row"]
        save_bundle(args.model, [(m, singles[m]) for m in cand.members],
                    views=select.view_spec(cfg, common, views.name) if views.name != "none" else None,
                    threshold=threshold, seed=common.seed, adjust=d["logit_adjust"],
                    info={"candidate": cand.name, "views": views.name, "criterion": cfg.criterion,
                          "valid_accuracy_as_chosen": summary["valid_accuracy_as_chosen"],
                          "logit_adjust": summary["logit_adjust"]})
        metrics = {"criterion": cfg.criterion, "chosen": summary, "candidates": len(rows),
                   "time_s": round(time.perf_counter() - t0, 1)}
        write_json(args.metrics, metrics)
        _write_table(args.table, rows)
        plots.selection(rows, chosen, args.plot, f"select: every candidate on valid ({cfg.criterion} chooses)")
        log_numbers({k: v for k, v in summary.items() if k not in ("members", "reference")}, "chosen")
        tracking.set_tag("chosen", f"{cand.name} / {views.name}" + (f" / threshold {_thresholds(threshold)}" if threshold else ""))
        tracking.log_table({k: [r[k] if k != "members" else "+".join(r[k]) for r in rows] for k in rows[0]},
                           "candidates.json")
        for path in (args.metrics, args.table):
            tracking.log_artifact(path)
        tracking.log_artifact(args.plot, "plots")
        print(format_rows(rows, chosen, cfg.criterion))
        print(describe(summary))
        recalls = summary["valid_recall_as_chosen"]
        worst = sorted(recalls, key=recalls.get)[:5]
        print("select: valid recall as chosen, lowest first: " + ", ".join(f"{c} {100 * recalls[c]:.1f}%" for c in worst))


def _write_table(path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "members": "+".join(r["members"])})


def format_rows(rows: list[dict], chosen: dict, criterion: str, limit: int = 12) -> str:
    """The best ``limit`` rows by the criterion, as fixed-width text."""
    top = select.better_first(rows, criterion)[:limit]
    lines = [f"{'candidate':<36}{'views':>10}{'size':>6}{'valid loss':>12}{'valid acc':>11}{'balanced':>10}"
             f"{'worst cls':>10}{'cost':>7}"]
    for r in top:
        mark = " <" if r is chosen else ""
        lines.append(f"{r['candidate'][:35]:<36}{r['views']:>10}{r['size']:>6}{r['valid_log_loss']:>12.4f}"
                     f"{100 * r['valid_accuracy']:>10.2f}%{100 * r['valid_balanced_accuracy']:>9.2f}%"
                     f"{100 * r['valid_worst_recall']:>9.2f}%{r['cost_ratio']:>6.1f}x{mark}")
    return f"select: the best {len(top)} of {len(rows)} (candidate, views) pairs on valid; cost against one model\n" + \
        "\n".join(lines)


def _thresholds(t: float | list[float]) -> str:
    """A threshold, or several labels' thresholds (one number when they are all the same)."""
    if isinstance(t, list):
        return f"{t[0]:.3f} for every label" if len(set(t)) == 1 else "per label " + " ".join(f"{v:.3f}" for v in t)
    return f"{t:.3f}"


def describe(s: dict) -> str:
    thr = f", threshold {_thresholds(s['threshold'])} ({s['threshold_rule']})" if s["threshold"] is not None else ""
    if "valid_macro_f1_as_chosen" in s:  # several labels per image
        thr += (f", macro F1 {100 * s['valid_macro_f1_as_chosen']:.2f}%, exact match "
                f"{100 * s['valid_exact_match_as_chosen']:.2f}%")
    thr += f", logit adjustment tau {s['logit_adjust']:g}" if s.get("logit_adjust") else ""
    text = (f"select: chose {s['candidate']} with views {s['views']}{thr}: valid log loss {s['valid_log_loss']:.4f}, "
            f"accuracy {100 * s['valid_accuracy_as_chosen']:.2f}%, {s['cost_ratio']:.1f}x the cost of "
            f"{s['reference']['candidate']} alone")
    b = s.get("best_baseline")
    if b and "valid_macro_f1_as_chosen" in s:  # several labels per image: the log loss speaks for the probabilities
        text += (f"\nselect: the best simple baseline on valid, {b['candidate']}: log loss {b['valid_log_loss']:.4f} "
                 f"(no views); the chosen model's is {b['valid_log_loss'] - s['valid_log_loss']:+.4f} lower")
    elif b:
        text += (f"\nselect: the best simple baseline on valid, {b['candidate']}: log loss {b['valid_log_loss']:.4f}, "
                 f"accuracy {100 * b['valid_accuracy']:.2f}% (no views); the chosen model, as chosen, stands "
                 f"{100 * (s['valid_accuracy_as_chosen'] - b['valid_accuracy']):+.2f} points of accuracy above it")
    return text


if __name__ == "__main__":
    run(main, "split", "raw", *TRAINING_STAGES, "cv", "model", "metrics", "table", "plot", "baseline")
