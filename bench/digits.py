"""The second dataset: the whole default pipeline on scikit-learn's digits, against logistic regression.

Claim: the recipe's defaults are not tuned to ELPV alone. Pointed at the handwritten digits
(1,797 images of 8x8 px, ten classes) with ``data=folder`` and the path, and nothing else, it
must not do worse than logistic regression on the raw pixels (96.9% on a stratified 75/25
split), and issue 26's bar is 98.5% test accuracy, above logistic regression on the same split.

How it is measured, in one run:
- ``python -m recipe.data.digits`` writes the ImageFolder into ``--work``; the project's tracked
  files are copied next to it (a fresh git repo), ``params.yaml`` composed with
  ``data=folder data.path=<digits>`` only, and ``dvc repro`` timed (wall clock).
- The references, same run: ``LogisticRegression(max_iter=5000)`` on the 64 pixels scaled to
  [0, 1] (a) on a
  stratified 75/25 ``train_test_split(random_state=0)`` of all 1,797 images, (b) fitted on the
  pipeline's own train + valid images and scored on its test split (the like-for-like figure).
- Printed: the recipe's test accuracy plainly and as chosen, each reference, their ratio as error
  rates (the recipe's test error over logistic regression's on the same split: below 1 is
  better), the pipeline's minutes, the size rule's sizes and what select chose; then the cost
  per image of every candidate select scored, as a ratio to one model (its candidates.csv).

With ``--long-tail R`` (digit k keeps about 180 * R**k images, recipe/data/digits.py) the figure is
balanced accuracy, and the reference class-weighted logistic regression (``class_weight="balanced"``)
on the same split.

With ``--multi-label N`` (N 16x16 canvases of one to three digits, tagged with the digits present,
in fastai's planet layout: recipe/data/digits.py) the project is pointed at them with ``data=csv``,
the path, ``data.label_col=tags`` and ``data.task=multi_label`` only; the figure is the test split's
macro mean average precision (mAP), and the reference one-vs-rest logistic regression on the 256
pixels, fitted on the pipeline's train + valid images and scored on its test split. Issue 27's
bar: at least 0.97, above the reference.

Usage: ``python bench/digits.py [--work DIR] [--side 8|32] [--seed N] [--long-tail R] [--limit N]
[--multi-label N] [-S key=value ...]`` (default: a new temporary folder, the 8x8 originals, seed 42).
``--limit N``: a stratified subset of N images, scored like ``--long-tail`` (the count without the
tail). ``--side 32`` writes 32x32 nearest-neighbour copies (each pixel a 4x4 block): the same
information, in the size a photo pipeline expects.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def copy_project(dest: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True)
    for rel in listed.stdout.splitlines():
        if (REPO / rel).is_file() and not rel.startswith(("tests/", "bench/", "outputs/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def logistic(train_x, train_y, test_x, test_y, balanced: bool = False) -> float:
    """Test accuracy of logistic regression on the pixels; with ``balanced``, class-weighted and
    scored by balanced accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    fitted = LogisticRegression(max_iter=5000, class_weight="balanced" if balanced else None).fit(train_x, train_y)
    if balanced:
        return float(balanced_accuracy_score(test_y, fitted.predict(test_x)))
    return float(fitted.score(test_x, test_y))


def repro(work: Path, overrides: list[str]) -> tuple[Path, float, dict, dict]:
    """A copy of the project in ``work/proj`` composed with ``overrides``, after a timed ``dvc repro``:
    the project, its minutes, evaluate's metrics and select's choice."""
    from recipe.core.compose import compose

    proj = copy_project(work / "proj")
    compose(proj, overrides, proj / "params.yaml")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=proj, capture_output=True, text=True)
    minutes = (time.perf_counter() - t0) / 60
    if run.returncode:
        sys.exit(f"dvc repro failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    out = proj / "outputs"
    return (proj, minutes, json.loads((out / "evaluate/metrics.json").read_text()),
            json.loads((out / "select/metrics.json").read_text())["chosen"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="an empty or absent folder (default: a temporary one)")
    ap.add_argument("--side", type=int, default=8, choices=(8, 32),
                    help="8: the originals; 32: 32x32 nearest-neighbour copies (each pixel a 4x4 block)")
    ap.add_argument("--seed", type=int, default=42, help="the recipe's seed (-S seed=N)")
    ap.add_argument("--long-tail", type=float, default=None, metavar="R",
                    help="digit k keeps about 180 * R**k images; balanced accuracy against class-weighted LR")
    ap.add_argument("--limit", type=int, default=None, metavar="N",
                    help="a stratified, seeded subset of N images (recipe/data/digits.py): the long tail's count without its tail")
    ap.add_argument("--multi-label", type=int, default=None, metavar="N",
                    help="N canvases of one to three digits (several labels per image): macro mAP against "
                         "one-vs-rest logistic regression")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="another override, key=value")
    args = ap.parse_args()
    if args.multi_label is not None:
        return multi_label(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="digits-bench-"))
    sys.path.insert(0, str(REPO))
    from recipe.data.digits import write_digits

    data = work / "digits"
    write_digits(data, limit=args.limit, long_tail=args.long_tail)
    if args.side != 8:
        for png in data.rglob("*.png"):
            Image.open(png).resize((args.side, args.side), Image.NEAREST).save(png)
    proj, minutes, m, sel = repro(work, ["data=folder", f"data.path={data}", f"seed={args.seed}", *args.overrides])
    out = proj / "outputs"

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 16  # pixels in [0, 1], as the pipeline's PNGs / 255 (the 96.9%; raw 0..16 values give 96.0%)
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    ref_7525 = logistic(xa, ya, xb, yb)
    with (out / "split/split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))

    def pixels(split):
        chosen = [r for r in rows if (r["split"] in ("train", "valid")) == (split == "fit")]
        return (np.stack([np.asarray(Image.open(proj / "data/raw/files" / r["path"]), dtype=np.float64).ravel() / 255
                          for r in chosen]), np.array([int(r["label"]) for r in chosen]))

    ref_same = logistic(*pixels("fit"), *pixels("test"))
    plain, chosen = m["test"]["accuracy"], m["test_chosen"]["accuracy"]
    if args.long_tail is not None or args.limit is not None:
        ref_bal = logistic(*pixels("fit"), *pixels("test"), balanced=True)
        recalls = {c: v["recall"] for c, v in m["test_chosen"]["per_class"].items()}
        subset = f"long tail R={args.long_tail}" if args.long_tail is not None else f"{args.limit} images"
        print(f"digits ({subset}): balanced accuracy recipe "
              f"{100 * m['test']['balanced_accuracy']:.2f}% plain, {100 * m['test_chosen']['balanced_accuracy']:.2f}% "
              f"as chosen (logit adjustment tau {sel.get('logit_adjust', 0):g}); class-weighted logistic regression "
              f"{100 * ref_bal:.2f}% on the same split")
        print("recall per class as chosen: " + ", ".join(f"{c} {100 * r:.0f}%" for c, r in recalls.items()))
    resize = json.loads((out / "resize/metrics.json").read_text())
    extra = f", seed {args.seed}" + "".join(f", {o}" for o in args.overrides)
    ft = json.loads((out / "finetune/metrics.json").read_text())
    print(f"digits at {args.side} px, default pipeline (data=folder, data.path only{extra}): {minutes:.1f} min of dvc repro, "
          f"train.image_size {json.loads((out / 'train_head/metrics.json').read_text())['size']} px, "
          f"resize: {resize.get('passed_on') or resize['size']}")
    print(f"finetune: unfreeze_to {ft.get('unfreeze_to')} ({ft.get('unfreeze_rule', 'pinned')})")
    print(f"select chose {sel['candidate']} / {sel['views']} (valid accuracy {100 * sel['valid_accuracy_as_chosen']:.2f}%)")
    print(f"test accuracy: recipe {100 * plain:.2f}% plain, {100 * chosen:.2f}% as chosen ({m['test']['images']} images)")
    print(f"logistic regression on raw pixels: {100 * ref_same:.2f}% on the pipeline's split, "
          f"{100 * ref_7525:.2f}% on a stratified 75/25 split")
    reached = chosen >= 0.985 and chosen > ref_same
    print(f"error ratio, recipe as chosen / logistic regression on the same split: {(1 - chosen) / (1 - ref_same):.2f} "
          f"(below 1: the recipe is better); bar 98.5% and above it: {'reached' if reached else 'not reached'}")
    with (out / "select/candidates.csv").open(newline="") as f:
        cands = list(csv.DictReader(f))
    print(f"\ncost per image against {json.loads((out / 'select/metrics.json').read_text())['chosen']['reference']['candidate']}"
          " alone (select's timings on this machine):")
    for r in sorted(cands, key=lambda r: float(r["cost_ratio"])):
        print(f"  {r['candidate'][:44]:<45}{r['views']:<9}{float(r['cost_ratio']):>7.2f}x   "
              f"valid log loss {float(r['valid_log_loss']):.4f}")
    print(f"\nproject: {proj}")


def multi_label(args) -> None:
    """The ``--multi-label N`` benchmark: the default pipeline on N canvases of one to three digits,
    its test macro mAP against one-vs-rest logistic regression on the pixels of the same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier

    work = args.work or Path(tempfile.mkdtemp(prefix="digits-multi-bench-"))
    sys.path.insert(0, str(REPO))
    from recipe.data.digits import write_multi_digits

    data = work / "canvases"
    write_multi_digits(data, args.multi_label)
    proj, minutes, m, sel = repro(work, ["data=csv", f"data.path={data}", "data.label_col=tags", "data.task=multi_label",
                                         f"seed={args.seed}", *args.overrides])
    out = proj / "outputs"
    with (out / "split/split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [str(d) for d in range(10)]

    def pixels(part):
        chosen = [r for r in rows if (r["split"] in ("train", "valid")) == (part == "fit")]
        x = np.stack([np.asarray(Image.open(proj / "data/raw/files" / r["path"]), dtype=np.float64).ravel() / 255
                      for r in chosen])
        return x, np.array([[c in r["labels"].split() for c in labels] for r in chosen], dtype=np.int64)

    (fx, fy), (tx, ty) = pixels("fit"), pixels("test")
    ovr = OneVsRestClassifier(LogisticRegression(max_iter=5000)).fit(fx, fy)
    ref = float(average_precision_score(ty, ovr.predict_proba(tx), average="macro"))
    plain, chosen = m["test"]["macro_ap"], m["test_chosen"]["macro_ap"]
    extra = f", seed {args.seed}" + "".join(f", {o}" for o in args.overrides)
    print(f"multi-label digits, {args.multi_label} canvases (data=csv, path, label_col=tags, task=multi_label{extra}): "
          f"{minutes:.1f} min of dvc repro")
    print(f"select chose {sel['candidate']} / {sel['views']} (valid macro mAP {sel['valid_macro_ap']:.4f}, "
          f"thresholds {sel['threshold_rule']})")
    print(f"test macro mAP: recipe {plain:.4f} plain, {chosen:.4f} as chosen ({m['test']['images']} images); "
          f"micro mAP {m['test_chosen']['micro_ap']:.4f}, macro F1 {m['test_chosen']['macro_f1']:.4f}, exact match "
          f"{100 * m['test_chosen']['exact_match']:.2f}% as chosen")
    print(f"one-vs-rest logistic regression on the pixels, same split: macro mAP {ref:.4f}")
    reached = chosen >= 0.97 and chosen > ref
    print(f"bar 0.97 and above it: {'reached' if reached else 'not reached'}")
    print(f"\nproject: {proj}")


if __name__ == "__main__":
    main()
