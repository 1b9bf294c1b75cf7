"""Cross-validation over train + valid: folds, out-of-fold predictions, label issues, their policy.

Contract:

- **Folds and each fold's split**: :mod:`recipe.data.folds` (pandas only, so the cv_split stage
  loads no torch).
- **Out-of-fold predictions** (:func:`oof_predictions`): each fold's model (the last stage of
  ``cv.stages``) on its held-out fold, plainly (no TTA, argmax): one row per train and valid image.
- **Figures** (:func:`cv_figures`): accuracy, balanced accuracy and log loss per fold, their mean
  and spread (the standard deviation over folds), and the pooled out-of-fold figures with each
  class's recall.
- **Label issues** (:func:`label_issues`): confident learning (cleanlab) on the out-of-fold
  probabilities: the flagged images ranked by label quality (self-confidence), worst first.
- **The policy** (:func:`apply_policy`): the split the final fit trains on. ``report`` leaves it
  as it is; ``drop`` removes the flagged train images, ``relabel`` gives them the suggested
  label (and, with soft targets, that label's hard target). Valid and test rows never change.
- **Where they meet the audit** (:func:`duplicate_conflicts`): duplicate groups whose labels
  disagree and which hold a suspect.

Several labels per image (the split's ``labels`` column): the out-of-fold probabilities are each
label's sigmoid, the ``label`` and ``predicted`` columns the label lists (joined by a space;
predicted at 0.5), the figures the share of right yes/no answers, the mean binary log loss and the
labels' macro average precision, and the label issues cleanlab's multi-label confident learning
(``cleanlab.multilabel_classification``: an image is flagged when any of its labels looks wrong;
the suggested list is the labels at 0.5). ``relabel`` gives a flagged train image that list.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recipe.core.errors import DataError
from recipe.core.layout import RAW, TRAINING
from recipe.data.split import LABELS, TARGET_PREFIX
from recipe.decide.labels import hot, joined


def fold_figures(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy (the mean recall over the classes present), log loss and each
    class's recall and support, argmax-decided; several labels per image: right yes/no answers at 0.5,
    the mean recall over the labels present, binary log loss, macro AP, each label's recall."""
    if labels.ndim == 2:
        from recipe.core.metrics import binary_log_loss, multi_label_metrics

        m = multi_label_metrics(probs, labels, classes, 0.5)
        out = {"images": int(len(labels)), "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
               "log_loss": binary_log_loss(probs, labels), "macro_ap": m["macro_ap"]}
        recall = {c: (v["recall"], v["support"]) for c, v in m["per_class"].items()}
    else:
        from recipe.core.metrics import confusion

        m = confusion(labels, probs.argmax(1), len(classes))
        support = m.sum(1)
        r = np.divide(np.diag(m), support, out=np.zeros(len(classes)), where=support > 0)
        p = np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1.0)
        out = {"images": int(len(labels)), "accuracy": float((probs.argmax(1) == labels).mean()),
               "balanced_accuracy": float(r[support > 0].mean()), "log_loss": float(-np.log(p).mean())}
        recall = {c: (float(r[k]), int(support[k])) for k, c in enumerate(classes)}
    out["per_class"] = {c: {"recall": v, "support": n} for c, (v, n) in recall.items()}
    return out


def cv_figures(oof: pd.DataFrame, classes: list[str], multi_label: bool = False) -> dict:
    """Per fold, mean and spread (standard deviation over folds, ddof=1), and pooled. On a long tail
    the pooled balanced accuracy and recall per class count every rare image of train + valid once."""
    probs = oof[[f"p_{c}" for c in classes]].to_numpy(float)
    labels = _labels(oof, classes, multi_label)
    per = {}
    for f in sorted(oof["fold"].unique()):
        m = (oof["fold"] == f).to_numpy()
        per[str(int(f))] = {k: v for k, v in fold_figures(labels[m], probs[m], classes).items() if k != "per_class"}

    def spread(a: np.ndarray) -> float:
        return float(a.std(ddof=1)) if len(a) > 1 else 0.0

    out = {"folds": len(per)}
    for name in ("accuracy", "balanced_accuracy", "log_loss"):
        a = np.array([v[name] for v in per.values()])
        out |= {name: float(a.mean()), f"{name}_std": spread(a)}
        if name == "accuracy":
            out |= {"accuracy_min": float(a.min()), "accuracy_max": float(a.max())}
    return out | {"pooled": fold_figures(labels, probs, classes), "per_fold": per}


def _labels(oof: pd.DataFrame, classes: list[str], multi_label: bool) -> np.ndarray:
    """The out-of-fold table's labels: class indices, or with several labels per image ``(N, labels)`` 0/1."""
    if multi_label:
        return hot(oof["label"], classes)
    return oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()


def label_issues(oof: pd.DataFrame, classes: list[str], multi_label: bool = False) -> pd.DataFrame:
    """The images confident learning flags, worst first: path, fold, given and suggested label,
    self-confidence (the out-of-fold probability of the given label) and the ranking score
    (cleanlab's label quality: lower is more suspect)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = oof[[f"p_{c}" for c in classes]].to_numpy(float)
    labels = _labels(oof, classes, multi_label)
    columns = ["rank", "path", "fold", "given_label", "suggested_label", "self_confidence", "ranking_score"]
    if labels.ndim == 2:
        return _multi_label_issues(oof, probs, labels, classes, columns)
    if len(np.unique(labels)) < 2:
        return pd.DataFrame(columns=columns)
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    rows = [{"rank": r + 1, "path": oof["path"].iloc[i], "fold": int(oof["fold"].iloc[i]),
             "given_label": classes[labels[i]], "suggested_label": classes[int(probs[i].argmax())],
             "self_confidence": float(probs[i, labels[i]]), "ranking_score": float(scores[i])}
            for r, i in enumerate(ranked)]
    return pd.DataFrame(rows, columns=columns)


def _multi_label_issues(oof: pd.DataFrame, probs: np.ndarray, labels: np.ndarray, classes: list[str],
                        columns: list[str]) -> pd.DataFrame:
    """:func:`label_issues` for several labels per image: cleanlab's multi-label confident learning;
    ``self_confidence`` and ``ranking_score`` are cleanlab's label quality score of the whole list."""
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    present = labels.any(0) & ~labels.all(0)  # cleanlab needs each label seen present and absent
    if present.sum() < 1 or len(labels) < 2:
        return pd.DataFrame(columns=columns)
    lists = [np.flatnonzero(row[present]).tolist() for row in labels]
    p = probs[:, present]
    ranked = find_label_issues(lists, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = get_label_quality_scores(lists, p)
    suggested = joined(probs >= 0.5, classes)
    rows = [{"rank": r + 1, "path": oof["path"].iloc[i], "fold": int(oof["fold"].iloc[i]),
             "given_label": oof["label"].iloc[i], "suggested_label": suggested[i],
             "self_confidence": float(scores[i]), "ranking_score": float(scores[i])} for r, i in enumerate(ranked)]
    return pd.DataFrame(rows, columns=columns)


def pair_counts(issues: pd.DataFrame) -> dict[str, int]:
    """Suspects per (given -> suggested) pair."""
    counts = issues.groupby(["given_label", "suggested_label"]).size()
    return {f"{g} as {s}": int(n) for (g, s), n in counts.items()}


def soft_spread(issues: pd.DataFrame, table: pd.DataFrame) -> dict | None:
    """With soft targets (ELPV's annotated defect probability): how the suspects and all the
    cross-validated images spread over its values, and the share of each value flagged."""
    cols = [c for c in table.columns if c.startswith(TARGET_PREFIX)]
    if not cols:
        return None
    col = cols[0]
    cv_rows = table[table["split"].isin(["train", "valid"])]
    value = dict(zip(cv_rows["path"], cv_rows[col].astype(float).round(4)))
    all_counts = pd.Series(list(value.values())).value_counts().sort_index()
    sus = pd.Series([value[p] for p in issues["path"]], dtype=float).value_counts()
    out = {}
    for v, n in all_counts.items():
        k = int(sus.get(v, 0))
        out[f"{v:g}"] = {"images": int(n), "suspects": k, "flagged_share": k / int(n)}
    return {"column": col, "values": out}


def apply_policy(table: pd.DataFrame, issues: pd.DataFrame, policy: str, max_suspects: int | None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The split the final fit trains on, and ``issues`` with an ``action`` column saying what
    happened to each suspect (kept, dropped, relabelled; valid ones are never changed)."""
    issues = issues.copy()
    out = table.copy()
    split_of = dict(zip(table["path"], table["split"]))
    acted = issues["path"].map(split_of).eq("train").to_numpy().copy()
    if max_suspects is not None:
        acted &= np.cumsum(acted) <= max_suspects
    if policy == "report" or not acted.any():
        issues["action"] = np.where(issues["path"].map(split_of).eq("train"), "kept (report)", "kept (valid)")
        return out, issues
    chosen = issues[acted]
    where = out["path"].isin(set(chosen["path"]))
    if policy == "drop":
        out = out[~where].reset_index(drop=True)
        done = "dropped"
    else:
        new = dict(zip(chosen["path"], chosen["suggested_label"]))
        column = LABELS if LABELS in out.columns else "label"  # several labels per image: the suggested list
        out.loc[where, column] = out.loc[where, "path"].map(new)
        targets = [c for c in out.columns if c.startswith(TARGET_PREFIX)]
        for col in targets:
            positive = col[len(TARGET_PREFIX):]
            out.loc[where, col] = (out.loc[where, "label"] == positive).astype(float)
        done = "relabelled"
    split = issues["path"].map(split_of)
    issues["action"] = np.where(acted, done, np.where(split.eq("train"), "kept (over max_suspects)", "kept (valid)"))
    return out, issues


def duplicate_conflicts(table: pd.DataFrame, issues: pd.DataFrame) -> list[dict]:
    """Duplicate groups (the audit's exact and near duplicates, kept together by the split) with
    more than one label in train + valid and at least one out-of-fold suspect among them."""
    rows = table[table["split"].isin(["train", "valid"])]
    column = LABELS if LABELS in rows.columns else "label"
    suspects = set(issues["path"])
    out = []
    for gid, g in rows.groupby("group"):
        if len(g) < 2 or g[column].nunique() < 2 or not suspects & set(g["path"]):
            continue
        out.append({"group": int(gid), "members": [{"path": p, "label": lab, "suspect": p in suspects}
                                                   for p, lab in zip(g["path"], g[column])]})
    return out


def fold_model(folds_dir, fold: int, stage: str):
    """Where fold ``fold``'s model is: the last training stage it runs (``cv.stages``)."""
    from pathlib import Path

    return Path(folds_dir) / str(fold) / stage / TRAINING.model


def oof_predictions(common, *, table: pd.DataFrame, fold_tables: dict[int, pd.DataFrame], models: dict[int, object],
                    raw) -> pd.DataFrame:
    """Each fold's model on its held-out fold (the ``test`` rows of its split), plainly: one row
    per train and valid image (path, label, fold, p_<class>, predicted; the soft target when the
    split has one)."""
    from pathlib import Path

    import torch

    from recipe.data.loader import load_split
    from recipe.data.split import class_names
    from recipe.decide.ensemble import load_bundle
    from recipe.train.fit import autocast

    classes = class_names(table)
    device = common.start()
    parts = []
    for fold, ftable in sorted(fold_tables.items()):
        model, _ = load_bundle(models[fold])
        if model.classes != classes:
            raise DataError(f"{models[fold]}: trained on classes {model.classes}, the split has {classes}")
        held = load_split(ftable, Path(raw) / RAW.files, split="test", size=model.size, classes=classes,
                          workers=common.train.workers)
        model = common.prepare(model, device).eval()
        model.autocast = lambda: autocast(device, common.train.amp)
        probs = []
        with torch.no_grad():
            for x, _ in common.batches(held, device, train=False):
                probs.append(model(x).cpu().numpy())
        p = np.concatenate(probs)
        given = (joined(held.labels.numpy() > 0.5, classes) if model.multi_label
                 else [classes[i] for i in held.labels.tolist()])
        part = pd.DataFrame({"path": held.paths, "label": given, "fold": fold})
        for i, c in enumerate(classes):
            part[f"p_{c}"] = p[:, i]
        part["predicted"] = joined(p >= 0.5, classes) if model.multi_label else [classes[i] for i in p.argmax(1)]
        parts.append(part)
    oof = pd.concat(parts, ignore_index=True)
    targets = [c for c in table.columns if c.startswith(TARGET_PREFIX)]
    if targets:
        oof = oof.merge(table[["path", *targets]], on="path", how="left")
    return oof.sort_values("path").reset_index(drop=True)
