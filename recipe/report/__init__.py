"""report: the pictures (``recipe.report.plots``) and the one self-contained HTML page for a whole
run, the page a person opens to see what happened (this module).

Imports: ``recipe.core`` (the file names, recipe.core.layout), ``recipe.data`` (decoding images for picture grids).

Contract: :func:`write_report` reads the stages' outputs (JSON metrics and PNG pictures, found
by the directories it is given) and writes a single HTML file with every picture embedded as a
data URI, so it opens anywhere, offline, and can be attached to an MLflow run or mailed. A
missing input makes its section say so; it never stops the page from being written.

Sections, in order (each an ``<section id=...>``): summary, stages (the accuracy table), audit,
split, baseline, lr_find, training, evaluation, confusion, top_losses, inside (the pictures of
:mod:`recipe.decide.inside`, in ``evaluate/inside/``).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from recipe.core.layout import AUDIT, BASELINE, CV, EVALUATE, INSIDE, LR_FIND, SELECT, SPLIT, TRAINING

SECTIONS = ("summary", "stages", "select", "audit", "split", "cv", "baseline", "lr_find", "training", "dynamics", "evaluation", "confusion",
            "top_losses", "inside")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.pass{color:#17702b;font-weight:600}.fail{color:#b00020;font-weight:600}.missing{color:#888;font-style:italic}
nav a{margin-right:.8em}code{background:#f4f4f4;padding:0 .2em}
"""


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _img(path: Path, alt: str) -> str:
    path = Path(path)
    if not path.is_file():
        return f'<p class="missing">{html.escape(alt)}: {html.escape(str(path))} not found</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _missing(what: str) -> str:
    return f'<p class="missing">{html.escape(what)} not available</p>'


def _cv_section(cv: Path) -> str:
    """The cross-validated figures, the label suspects and where they meet the duplicate groups."""
    m = _read_json(cv / CV.metrics)
    if m is None:
        return _missing("cross-validation metrics")
    if m.get("folds", 0) < 2:
        return "<p>Off (<code>cv.folds: 0</code>): set <code>cv.folds</code> to 5 for the cross-validated figures and the label issues.</p>"
    per = m["per_fold"]
    li, pol = m["label_issues"], m["policy"]
    out = (f"<p>{m['folds']} folds over train + valid (the test split untouched), each the recipe up to "
           f"<code>{html.escape(m['stages'])}</code> on the other folds, with its own valid split: accuracy "
           f"<b>{_pct(m['accuracy'])} ± {100 * m['accuracy_std']:.2f}</b> (standard deviation over folds; "
           f"{_pct(m['accuracy_min'])} – {_pct(m['accuracy_max'])}), log loss {m['log_loss']:.4f} ± {m['log_loss_std']:.4f}; "
           f"pooled out-of-fold accuracy {_pct(m['pooled']['accuracy'])}, balanced accuracy "
           f"<b>{_pct(m['pooled']['balanced_accuracy'])}</b> (the mean of each class's recall over every "
           f"image of train + valid).</p>"
           + _table(["fold", "held-out images", "accuracy", "balanced accuracy", "log loss"],
                    [[f, v["images"], _pct(v["accuracy"]), _pct(v["balanced_accuracy"]), v["log_loss"]]
                     for f, v in per.items()])
           + "<p>Recall out of fold, lowest first:</p>"
           + _table(["class", "images", "recall"],
                    [[c, v["support"], _pct(v["recall"])]
                     for c, v in sorted(m["pooled"]["per_class"].items(), key=lambda kv: kv[1]["recall"])])
           + f"<p>Confident learning (cleanlab) on the out-of-fold probabilities flags <b>{li['suspects']}</b> "
             f"images ({100 * li['share']:.1f}%) as probable label errors; policy <code>{html.escape(pol['name'])}</code>"
           + (f": {pol['dropped']} dropped and {pol['relabelled']} relabelled among the train images" if pol["name"] != "report" else
              ": reported, nothing changed") + ".</p>"
           + _table(["given → suggested", "suspects"], [[k, v] for k, v in li["pairs"].items()]))
    spread = li.get("soft_spread")
    if spread:
        out += (f"<p>The suspects over the annotators' <code>{html.escape(spread['column'])}</code>:</p>"
                + _table(["annotated value", "images", "suspects", "share flagged"],
                         [[k, v["images"], v["suspects"], f"{100 * v['flagged_share']:.1f}%"] for k, v in spread["values"].items()]))
    issues = cv / CV.label_issues
    if issues.is_file():
        import csv

        with issues.open(newline="") as f:
            top = [r for r, _ in zip(csv.DictReader(f), range(12))]
        if top:
            out += _table(["rank", "image", "given", "suggested", "self-confidence", "action"],
                          [[r["rank"], r["path"], r["given_label"], r["suggested_label"], float(r["self_confidence"]),
                            r["action"]] for r in top])
    out += _img(cv / CV.label_issues_plot, "top suspected label errors")
    conflicts = m.get("conflicts") or []
    out += (f"<p>Duplicate groups (the audit's) whose labels disagree and that hold a suspect: {len(conflicts)}.</p>"
            + (_table(["group", "members (label; * = suspect)"],
                      [[c["group"], "; ".join(f"{x['path']} ({x['label']}{' *' if x['suspect'] else ''})" for x in c["members"])]
                       for c in conflicts[:20]]) if conflicts else ""))
    return out


def _threshold(t) -> str:
    """A decision threshold: one number, or one per label (several labels per image)."""
    if isinstance(t, (list, tuple)):
        return (f"{min(t):.3f} to {max(t):.3f}, one per label" if len(set(t)) > 1 else f"{t[0]:.3f} for every label") \
            if t else "none"
    return f"{t:.3f}"


def _summary_section(metrics: dict) -> str:
    """The summary's HTML: what select chose and its test accuracy, plainly and as chosen (several
    labels per image: the share of right yes/no answers, and the labels' mean average precision)."""
    plain, tta = metrics.get("test", {}), metrics.get("test_chosen", {})
    ch = metrics.get("chosen", {})
    thr = f", threshold {_threshold(ch['threshold'])}" if ch.get("threshold") is not None else ""
    multi = "macro_ap" in plain
    return (
        f"<p>Chosen on the valid split: <code>{html.escape(str(ch.get('candidate')))}</code> "
        f"({len(ch.get('members', []))} member(s), input {ch.get('size')} px), views "
        f"{html.escape(str(ch.get('views')))} ({ch.get('n_views')}){thr}. "
        f"Scored once on {plain.get('images', '?')} held-out test images: plainly <b>{_pct(plain.get('accuracy'))}</b>, "
        f"as chosen <b>{_pct(tta.get('accuracy'))}</b>"
        + (f" (95% bootstrap interval {_pct(tta['accuracy_ci95'][0])} – {_pct(tta['accuracy_ci95'][1])})"
           if tta.get("accuracy_ci95") else "")
        + (f" of the yes/no answers, one per image and label; macro mAP <b>{tta['macro_ap']:.4f}</b>, exact match "
           f"{_pct(tta.get('exact_match'))}, macro F1 {tta.get('macro_f1', 0):.4f} as chosen" if multi else "") + ".</p>")


def _stages_section(metrics: dict) -> str:
    """The stages section's HTML: the accuracy after every stage, valid and test."""
    table = metrics.get("table") or {}
    return (_table(["stage", "size", "valid accuracy", "test accuracy"],
                   [[k, r.get("size"), f"fit on {r['fit_on']}" if r.get("fit_on") else _pct(r.get("valid_accuracy")),
                     _pct(r.get("test_accuracy"))] for k, r in table.items()])
            + "<p>Valid: as each stage reported it; a stage fit on train + valid has no held-out "
              "valid figure. Test: each checkpoint scored by evaluate, plainly; chosen_plain is the "
              "chosen model without views or threshold, chosen the model as select chose it.</p>"
            ) if table else _missing("stage table")


def _select_section(select: Path) -> str:
    """The select section's HTML: the choice and every (candidate, view set) pair, best first."""
    sel = _read_json(Path(select) / SELECT.metrics)
    rows_csv = Path(select) / SELECT.candidates
    if not (sel and rows_csv.is_file()):
        return _missing("selection")
    import csv

    with rows_csv.open(newline="") as f:
        cand = list(csv.DictReader(f))
    key = f"valid_{sel.get('criterion')}"  # the criterion select chose by: best first
    key = key if cand and key in cand[0] else "valid_accuracy"
    cand.sort(key=lambda r: float(r[key]), reverse=key != "valid_log_loss")
    c = sel["chosen"]
    multi = bool(cand) and "valid_macro_ap" in cand[0]  # several labels per image: the labels' mean AP too
    return (
        f"<p>{len(cand)} (candidate, view set) pairs scored on the valid split; "
        f"{html.escape(sel['criterion'])} chose <code>{html.escape(c['candidate'])}</code> with views "
        f"{html.escape(c['views'])}" + (f" and threshold {_threshold(c['threshold'])} ({html.escape(str(c['threshold_rule']))})"
                                          if c.get("threshold") is not None else "")
        + f": valid accuracy {_pct(c['valid_accuracy_as_chosen'])}, {c['cost_ratio']:.1f}x the cost per image of "
        f"{html.escape(c['reference']['candidate'])} alone. The test split played no part.</p>"
        + _table(["candidate", "views", "size", "valid log loss", "valid accuracy",
                  *(["valid macro AP"] if multi else []), "cost (x one model)"],
                 [[r["candidate"], r["views"], r["size"], float(r["valid_log_loss"]), _pct(float(r["valid_accuracy"])),
                   *([float(r["valid_macro_ap"])] if multi else []), f"{float(r['cost_ratio']):.1f}"] for r in cand])
        + _img(Path(select) / SELECT.candidates_plot, "candidates on valid"))


def _audit_section(audit: Path) -> str:
    """The audit section's HTML: the audit's numbers and pictures."""
    report = _read_json(Path(audit) / AUDIT.report)
    if not report:
        return _missing("audit report")
    rows = [[k, v] for k, v in report.items() if not isinstance(v, (dict, list))]
    rows += [[f"class {k}", v] for k, v in (report.get("classes") or {}).items()]
    return (_table(["audit", "value"], rows)
            + "".join(_img(Path(audit) / "plots" / f"{n}.png", n)
                      for n in ("class_histogram", "sizes", "samples", "duplicates")))


def _split_section(split: Path) -> str:
    """The split section's HTML: images per split and class, and the leaking duplicate groups."""
    split_m = _read_json(Path(split) / SPLIT.metrics)
    if not split_m:
        return _missing("split metrics")
    counts = split_m.get("counts", {})
    classes = sorted({c for s in counts.values() for c in s})
    return (_table(["split", *classes, "total"],
                   [[s, *[c.get(k, 0) for k in classes], sum(c.values())] for s, c in counts.items()])
            + f"<p>Duplicate groups leaking across splits: {split_m.get('leaking_groups')}.</p>"
            + _img(Path(split) / SPLIT.counts, "split counts"))


def _baseline_section(baseline: Path) -> str:
    """The baseline section's HTML: each check passed or failed, and the numbers to beat."""
    base = _read_json(Path(baseline) / BASELINE.metrics)
    if not base:
        return _missing("baseline metrics")
    checks = base.get("checks", {})
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td class=\"{'pass' if c.get('passed') else 'fail'}\">"
        f"{'passed' if c.get('passed') else 'FAILED'}</td><td style=\"text-align:left\">"
        f"{html.escape(str(c.get('detail', '')))}</td></tr>" for name, c in checks.items())
    return (f"<table><thead><tr><th>check</th><th>result</th><th>detail</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            + _table(["model", "valid accuracy"],
                     [[f"majority class ({base.get('majority_class')})", _pct(base.get("majority_accuracy"))],
                      ["simple net from scratch", _pct(base.get("simple_accuracy"))]])
            + _img(Path(baseline) / BASELINE.batch, "a training batch"))


def _lr_find_section(lr_find: Path) -> str:
    """The lr_find section's HTML: each rule's suggested rate, the one used, and the curve."""
    sug = _read_json(Path(lr_find) / LR_FIND.suggestion)
    return ((_table(["rule", "learning rate"], [[k, v] for k, v in (sug.get("suggestions") or {}).items()])
             + f"<p>Used: {html.escape(str(sug.get('rule')))} = {_fmt(sug.get('lr'))}</p>") if sug else
            _missing("lr_find suggestion")) + _img(Path(lr_find) / LR_FIND.plot, "lr_find curve")


def _training_section(stages: dict[str, Path]) -> str:
    """The training section's HTML: each training stage's numbers, history and rate schedule."""
    training = []
    for name, d in stages.items():
        m = _read_json(Path(d) / TRAINING.metrics)
        if m is None:
            training.append(f"<h3>{html.escape(name)}</h3>" + _missing(f"{name} metrics"))
            continue
        training.append(f"<h3>{html.escape(name)}</h3>"
                        + _table(["metric", "value"], [[k, v] for k, v in m.items() if not isinstance(v, dict)])
                        + _img(Path(d) / TRAINING.history_plot, f"{name} history")
                        + _img(Path(d) / TRAINING.lr_schedule_plot, f"{name} learning-rate schedule"))
    return "".join(training)


def _dynamics_section(evaluate: Path) -> str:
    """The dynamics section's HTML: how to read the prediction dynamics, and the picture."""
    return ("<p>A fixed, stratified set of valid images (<code>train.dynamics_images</code>): the "
            "probability each gives its true class after every epoch of every training stage. Green "
            "rows that stay green: learnt; a row that flips back and forth: jitter; green turning "
            "red: forgetting.</p>" + _img(Path(evaluate) / EVALUATE.dynamics, "prediction dynamics"))


def _evaluation_section(metrics: dict, evaluate: Path) -> str:
    """The evaluation section's HTML: the test metrics and per-class figures, plainly and as chosen."""
    plain, tta = metrics.get("test", {}), metrics.get("test_chosen", {})
    if not plain:
        return _missing("test metrics")
    keys = [k for k in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece", "top3_accuracy",
                        "top5_accuracy", "accuracy_ci95", "macro_ap", "micro_ap", "micro_f1", "exact_match",
                        "hamming_loss") if k in plain]
    multi = "macro_ap" in plain  # several labels per image: each label's average precision too
    per_class = [[c, _fmt(p["precision"]), _fmt(p["recall"]), _fmt(tta["per_class"][c]["recall"]),
                  f"{100 * metrics['chosen_gain']['per_class_recall'][c]:+.1f}", _fmt(p["f1"]),
                  _fmt(tta["per_class"][c]["f1"]), *([_fmt(tta["per_class"][c]["ap"])] if multi else []), p["support"]]
                 for c, p in plain["per_class"].items()]
    return (_table(["metric", "plain", "as chosen"], [[k, plain[k], tta.get(k)] for k in keys])
            + ("<p>Several labels per image: accuracy is the share of right yes/no answers (one per image and "
               "label); plain decides each label at 0.5, as chosen at its own threshold.</p>" if multi else "")
            + _table(["label" if multi else "class", "precision", "recall", "recall (chosen)", "gain (points)",
                      "F1", "F1 (chosen)", *(["AP (chosen)"] if multi else []), "images"], per_class)
            + _img(Path(evaluate) / EVALUATE.tta_gain, "per-class gain of the choices"))


def _confusion_section(metrics: dict, evaluate: Path) -> str:
    """The confusion section's HTML: the matrix and the most confused pairs."""
    confused = metrics.get("most_confused") or []
    return (_img(Path(evaluate) / EVALUATE.confusion, "confusion matrix")
            + (_table(["actual", "predicted", "images"],
                      [[p["actual"], p["predicted"], p["count"]] for p in confused])
               if confused else "<p>No confusions.</p>"))


def _top_losses_section(evaluate: Path) -> str:
    """The top_losses section's HTML: the most confident mistakes."""
    return ("<p>The most confident mistakes (as chosen): actual → predicted, the probability "
            "given to the prediction, and the loss.</p>" + _img(Path(evaluate) / EVALUATE.top_losses, "top losses"))


def _inside_section(metrics: dict, evaluate: Path) -> str:
    """The inside section's HTML: the pictures of recipe.decide.inside and the weight change per group."""
    ins = metrics.get("inside") or {}
    look = Path(evaluate) / EVALUATE.inside
    return (
        f"<p>One network, not the ensemble: the chosen model's member trained last "
        f"(<code>{html.escape(str(ins.get('member', '?')))}</code> at {ins.get('size', '?')} px), without views, "
        "on a few test images. Its first convolution's filters before (the weights training started from) and "
        "after, and how far training moved each layer: the relative change ||W_after − W_before|| / ||W_before|| "
        "of every convolution and linear layer, input side first, coloured by layer group (the head is new and "
        "left out). A frozen group (before <code>finetune.unfreeze_to</code>) stays at 0; the discriminative "
        "rates (<code>lr_mult</code>) give earlier groups smaller steps.</p>"
        + (_table(["layer group", "mean relative weight change"], [[g, v] for g, v in ins["weight_change"].items()])
           if ins.get("weight_change") else "")
        + _img(look / INSIDE.first_conv, "first convolution, before and after")
        + _img(look / INSIDE.weight_change, "weight change per layer")
        + "<p>Feature maps of the first, middle and last block of the body: per layer, the channels most active "
          "on each image.</p>" + _img(look / INSIDE.activations, "feature maps")
        + "<p>Where it looks: Grad-CAM (captum) on the body's last feature map, over the top losses (for the class "
          "the model predicted) and over the most confident correct predictions of each class (for the true "
          "class). Red: the regions that raise that class's score most.</p>"
        + _img(look / INSIDE.gradcam_top_losses, "Grad-CAM over the top losses")
        + _img(look / INSIDE.gradcam_correct, "Grad-CAM over correct predictions"))


_TITLES = {"summary": "Summary", "stages": "Accuracy after every stage", "select": "Model selection on valid", "audit": "Data audit",
           "split": "Split", "cv": "Cross-validation and label issues", "baseline": "Baseline checks", "lr_find": "Learning-rate finder",
           "training": "Training histories", "dynamics": "Prediction dynamics", "evaluation": "Test metrics",
           "confusion": "Confusion matrix", "top_losses": "Top losses", "inside": "Inside the model"}


def _page(title: str, parts: dict[str, str]) -> str:
    """The whole HTML page: the title, a link to every section, and the sections in SECTIONS' order."""
    nav = "".join(f'<a href="#{s}">{_TITLES[s]}</a>' for s in SECTIONS)
    body = "".join(f'<section id="{s}"><h2>{_TITLES[s]}</h2>{parts[s]}</section>' for s in SECTIONS)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<nav>{nav}</nav>{body}</body></html>\n")  # no clock: identical reruns write identical bytes


def write_report(path: Path, *, audit: Path, split: Path, baseline: Path, lr_find: Path, stages: dict[str, Path],
                 select: Path, evaluate: Path, metrics: dict, title: str = "finetune-recipe run",
                 cv: Path | None = None) -> Path:
    """``stages`` maps the training stages' names to their output directories; ``metrics`` is
    the evaluate stage's metrics dict (what it writes to ``metrics.json``)."""
    parts = {
        "summary": _summary_section(metrics),
        "stages": _stages_section(metrics),
        "select": _select_section(select),
        "audit": _audit_section(audit),
        "split": _split_section(split),
        "cv": _cv_section(Path(cv)) if cv is not None else _missing("cross-validation"),
        "baseline": _baseline_section(baseline),
        "lr_find": _lr_find_section(lr_find),
        "training": _training_section(stages),
        "dynamics": _dynamics_section(evaluate),
        "evaluation": _evaluation_section(metrics, evaluate),
        "confusion": _confusion_section(metrics, evaluate),
        "top_losses": _top_losses_section(evaluate),
        "inside": _inside_section(metrics, evaluate),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(title, parts), encoding="utf-8")
    return path
