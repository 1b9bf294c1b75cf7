"""The frontier of the recipe's choices: test accuracy of each step up from one model, per seed.

Claim: each step select can take (TTA views, SGDR snapshots, ensembles of stages, a decision
threshold) is chosen on the valid split; this measures, after the fact, what each step is worth
on the test split and what it costs. It decides nothing: the recipe's own choice is select's.

How it is measured, for each finished project given (``dvc repro`` run there; one per seed):
- The levels are pools select could choose from, each a superset of the one before, and in each
  the choice is made as select makes it (lowest valid log loss, from outputs/select/candidates.csv):
  ``single`` (the last training stage's model, no views), ``+tta`` (that model with any view
  set), ``+snapshots`` (every single checkpoint and the snapshot ensembles), ``+ensembles``
  (every candidate: select's own pool), ``+threshold`` (that choice with select's threshold).
- Every (candidate, views) pair is then scored on the test split with the code select scores
  valid with (``recipe.decide.select.score``, given the test rows in the valid rows' place).
- Minutes: the pipeline's stage times up to resize (their metrics' ``time_s``), plus select's
  for every level past ``single``, plus the chosen model's measured time on the test images.
- Printed: one row per seed and level, the mean over seeds, and the gain of each level over
  ``single`` as a ratio of error rates; ``--plot`` draws test accuracy against minutes.

Usage: ``python bench/frontier.py PROJECT [PROJECT ...] [--plot frontier.png]``.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from recipe.core.config import load_section, read_params
from recipe.core.layout import TRAINING_STAGES
from recipe.decide import select as S
from recipe.decide.ensemble import decide
from recipe.decide.schema import ScoringConfig, SelectConfig
from recipe.train.learner import Common
from recipe.train.schema import AugmentConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent

LEVELS = ("single", "+tta", "+snapshots", "+ensembles", "+threshold")
TRAINING = ("ingest", "audit", "split", "baseline", "lr_find", "train_head", "finetune", "resize")


def pools(rows: list[dict], last: str) -> dict[str, list[dict]]:
    single = [r for r in rows if r["candidate"] == last and r["views"] == "none"]
    return {"single": single, "+tta": [r for r in rows if r["candidate"] == last],
            "+snapshots": [r for r in rows if len(r["members"]) == 1 or r["candidate"].endswith("@snapshots")],
            "+ensembles": rows}


def measure(proj: Path) -> list[dict]:
    params = read_params(proj / "params.yaml")
    cfg = load_section("select", SelectConfig, params)
    common = Common(seed=params["seed"], train=load_section("train", TrainConfig, params).batch_for(), model=None, optim=None,
                    augment=load_section("augment", AugmentConfig, params))
    out = proj / "outputs"
    with (out / "select/candidates.csv").open(newline="") as f:
        valid_rows = [{**r, "members": r["members"].split("+"), "valid_log_loss": float(r["valid_log_loss"])}
                      for r in csv.DictReader(f)]
    sel = json.loads((out / "select/metrics.json").read_text())
    dirs = {s: out / s for s in TRAINING_STAGES}
    singles, aliases = S.checkpoints(dirs)
    cands = S.candidates(singles, cfg.ensembles, aliases)
    table = pd.read_csv(out / "split/split.csv", keep_default_na=False, dtype={"path": str, "label": str})
    swapped = table[table["split"] != "valid"].copy()
    swapped.loc[swapped["split"] == "test", "split"] = "valid"  # score() reads "valid": here, the test rows
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "split.csv"
        swapped.to_csv(path, index=False)
        # what runs the networks: the project's scoring section, or this checkout's (a project from before it)
        scoring = load_section("scoring", ScoringConfig, params if "scoring" in params else read_params(REPO / "params.yaml"))
        test_rows, scores, sets, _ = S.score(common, cfg, singles=singles, cands=cands, split=path,
                                             raw=proj / "data/raw", scoring=scoring)
    test = {(r["candidate"], r["views"]): r for r in test_rows}
    n_test = len(scores.labels)
    minutes = sum(json.loads((out / s / "metrics.json").read_text()).get("time_s", 0) for s in TRAINING
                  if (out / s / "metrics.json").is_file()) / 60
    last = [k for k in singles if "@" not in k][-1]
    result = []
    for level, pool in pools(valid_rows, last).items():
        best = min(pool, key=lambda r: r["valid_log_loss"])
        t = test[(best["candidate"], best["views"])]
        result.append({"level": level, "candidate": best["candidate"], "views": best["views"],
                       "test_accuracy": t["valid_accuracy"],  # score() names its figures valid_*: here the test rows
                       "minutes": minutes + (0 if level == "single" else sel["time_s"] / 60)
                                  + t["seconds_per_image"] * n_test / 60})
    chosen = sel["chosen"]
    cand = next(c for c in cands if c.name == chosen["candidate"])
    views = next(v for v in sets if v.name == chosen["views"])
    probs = S.combine(scores, cand, chosen["size"], views)
    acc = float((decide(probs, chosen["threshold"]) == scores.labels).mean())
    result.append({**result[-1], "level": "+threshold", "test_accuracy": acc,
                   "threshold": chosen["threshold"]})
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("projects", nargs="+", type=Path, help="finished project folders (one per seed)")
    ap.add_argument("--plot", type=Path, help="a PNG of test accuracy against pipeline minutes")
    args = ap.parse_args()
    runs = {}
    for proj in args.projects:
        seed = read_params(proj / "params.yaml")["seed"]
        runs[f"{proj.name} (seed {seed})"] = measure(proj)
    print(f"{'run':<22}{'level':<12}{'candidate':<40}{'views':<8}{'test acc':>9}{'minutes':>9}")
    for name, rows in runs.items():
        for r in rows:
            print(f"{name:<22}{r['level']:<12}{r['candidate'][:39]:<40}{r['views']:<8}"
                  f"{100 * r['test_accuracy']:>8.2f}%{r['minutes']:>9.1f}")
    print("\nmean over runs (error ratio: level's test error / single's, below 1 is better)")
    for i, level in enumerate(LEVELS):
        accs = [rows[i]["test_accuracy"] for rows in runs.values()]
        err = statistics.mean(1 - a for a in accs) / statistics.mean(1 - rows[0]["test_accuracy"] for rows in runs.values())
        print(f"{level:<12}{100 * statistics.mean(accs):>8.2f}%   error ratio {err:.3f}   "
              f"minutes {statistics.mean(rows[i]['minutes'] for rows in runs.values()):.1f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, rows in runs.items():
            ax.plot([r["minutes"] for r in rows], [100 * r["test_accuracy"] for r in rows], "o-", label=name)
            for r in rows:
                ax.annotate(r["level"], (r["minutes"], 100 * r["test_accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("pipeline minutes (training stages, select, test scoring; 2 CPU cores)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Each step select can take, chosen on valid, scored on test", fontsize=9)
        ax.legend(fontsize=7)
        fig.savefig(args.plot, dpi=100, bbox_inches="tight")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
