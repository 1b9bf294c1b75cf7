"""ELPV's frontier: the default pipeline under a setting, over seeds, test accuracy against minutes.

Claim: issue 26's bar for ELPV (a three-seed mean test accuracy of 88.42% as chosen, Deitsch et
al. 2019) is either reached by a setting within the minutes it costs, or the measured frontier
(test accuracy against pipeline minutes, three seeds per setting) says how far away it is. It
decides nothing: the recipe's own choices are select's, on valid; test is read after the fact.

How it is measured, for each seed (``run``):
- the project's tracked files are copied into ``--work/<name>_<seed>/proj`` (a fresh git repo,
  as bench/digits.py does), ``params.yaml`` composed with the setting's overrides and
  ``seed=N``, and ``dvc repro`` timed (wall clock, every stage from ingest to record);
- one row is appended to ``--csv``: the setting's name and overrides, the seed, the commit the
  copy was made at, the minutes, what select chose on valid, valid accuracy as chosen, and test
  accuracy plainly and as chosen (evaluate's metrics).

``plot`` reads the CSV and prints one markdown row per setting (mean ± standard deviation over
its seeds) and draws test accuracy as chosen against minutes, each seed a dot (hollow, at the
setting's mean minutes, where it was not timed), each setting's mean with its standard
deviation, and the bar as a line. Minutes are only comparable between rows measured on the same
machine with nothing else running.

Usage: ``python bench/settings.py run --name lite2-long --seeds 42 1 2 -S model=efficientnet_lite2
-S finetune.epochs=15 [--csv docs/results/elpv-frontier.csv] [--work DIR]`` then ``python
bench/settings.py plot [--csv ...] [--out docs/results/elpv-frontier.png]``. Run it from the
project's virtual environment with an absolute PATH (``dvc`` is called as ``sys.executable -m
dvc``).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CSV = REPO / "docs/results/elpv-frontier.csv"
FIELDS = ["setting", "overrides", "seed", "commit", "minutes", "chosen", "valid_as_chosen", "test_plain",
          "test_as_chosen", "machine"]
BAR = 0.8842  # Deitsch et al. 2019, fine-tuned VGG-19, stratified 75/25 split


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "recipe", "stages", "conf", "dvc.yaml"], cwd=REPO,
                           capture_output=True, text=True).stdout
    return head.strip() + ("+changes" if dirty.strip() else "")


def run(args) -> None:
    sys.path.insert(0, str(HERE))
    from digits import repro  # the copy, the composition and the timed dvc repro bench/digits.py uses

    work = args.work or Path(tempfile.mkdtemp(prefix="settings-bench-"))
    for seed in args.seeds:
        made_at = commit()  # the tree repro copies, read now: an edit made while the seed runs is not in its copy
        proj, minutes, m, sel = repro(work / f"{args.name}_{seed}", [*args.overrides, f"seed={seed}"])
        views = "" if sel["views"] == "none" else f", {sel['views']}"
        row = {"setting": args.name, "overrides": " ".join(args.overrides), "seed": seed, "commit": made_at,
               "minutes": f"{minutes:.1f}", "chosen": f"{sel['candidate']}{views}",
               "valid_as_chosen": f"{sel['valid_accuracy_as_chosen']:.6f}",
               "test_plain": f"{m['test']['accuracy']:.6f}", "test_as_chosen": f"{m['test_chosen']['accuracy']:.6f}",
               "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"}
        new = not args.csv.is_file()
        with args.csv.open("a", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)
        print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def spread(mean: float, std: float, n: int, of: int, unit: str, digits: int = 2) -> str:
    """``mean ± std``, the number of seeds it stands on where some lack the figure, ``—`` where none has it."""
    if not n:
        return "—"
    text = f"{mean:.{digits}f}{unit}" + (f" ± {std:.{digits}f}" if n > 1 else "")
    return text + ("" if n == of else f" (n={n})")


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with args.csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    print("| setting | overrides | seeds | minutes | valid as chosen | test plain | **test as chosen** |")
    print("|---|---|---|---:|---:|---:|---:|")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, name in enumerate(settings):
        group = [r for r in rows if r["setting"] == name]
        mins = [float(r["minutes"]) for r in group if r["minutes"]]
        have = {k: [100 * float(r[k]) for r in group if r[k]] for k in ("valid_as_chosen", "test_plain",
                                                                       "test_as_chosen")}
        fig_of = {k: mean_std(v) if v else (float("nan"), 0.0) for k, v in have.items()}
        m_mean, m_std = mean_std(mins) if mins else (float("nan"), 0.0)
        cells = [spread(mean, std, len(have[k]), len(group), "%") for k, (mean, std) in fig_of.items()]
        print(f"| {name} | `{group[0]['overrides'] or '(defaults)'}` | {', '.join(r['seed'] for r in group)} | "
              f"{spread(m_mean, m_std, len(mins), len(group), '', 1)} | {cells[0]} | {cells[1]} | **{cells[2]}** |")
        for r in group:  # a seed without minutes: hollow, at the setting's mean minutes
            timed = bool(r["minutes"])
            ax.plot(float(r["minutes"]) if timed else m_mean, 100 * float(r["test_as_chosen"]), "o", ms=4,
                    color=f"C{i}", mfc=f"C{i}" if timed else "none", alpha=0.6)
        mean, std = fig_of["test_as_chosen"]
        ax.errorbar(m_mean, mean, yerr=std, xerr=m_std or None, fmt="o", capsize=4, color=f"C{i}",
                    label=f"{name} (seeds {', '.join(r['seed'] for r in group)})")
    ax.axhline(100 * BAR, color="grey", ls="--", lw=1)
    low, high = ax.get_ylim()
    ax.set_ylim(low, max(high, 100 * BAR + 0.25))
    ax.annotate(f"Deitsch et al. 2019: {100 * BAR:.2f}%", (ax.get_xlim()[0], 100 * BAR), fontsize=8,
                xytext=(4, 3), textcoords="offset points", color="grey")
    ax.set_xlabel("minutes of dvc repro, every stage (2 CPU cores)")
    ax.set_ylabel("test accuracy as chosen, %")
    ax.set_title("ELPV: test accuracy against minutes\n(small dots: seeds, hollow where not timed; bars: mean ± std)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the pipeline under one setting, one seed after the other")
    r.add_argument("--name", required=True, help="the setting's name in the CSV and the picture")
    r.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    r.add_argument("-S", dest="overrides", action="append", default=[], help="an override, key=value")
    r.add_argument("--work", type=Path, help="an empty or absent folder (default: a temporary one)")
    r.add_argument("--csv", type=Path, default=CSV)
    p = sub.add_parser("plot", help="the table and the picture from the CSV")
    p.add_argument("--csv", type=Path, default=CSV)
    p.add_argument("--out", type=Path, default=REPO / "docs/results/elpv-frontier.png")
    args = ap.parse_args()
    run(args) if args.cmd == "run" else plot(args)


if __name__ == "__main__":
    main()
