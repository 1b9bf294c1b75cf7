"""select: the model that ships, chosen on the valid split (the test split is never read here).

Contract:

- **Candidates** (:func:`candidates`): each training stage's checkpoint (``train_head``,
  ``finetune``, ``resize``), each SGDR snapshot (``finetune@2``: the weights at the end of
  epoch 2), with ``train.ema`` each moving average of the weights (``finetune@ema``), and the
  ensembles ``select.ensembles`` lists (a member is a stage, or
  ``<stage>@snapshots`` for all of its snapshots). Checkpoints with identical weights are one
  model (:func:`checkpoints`): scored once, and one member of any ensemble. An ensemble averages its members'
  probabilities, each member at its own size (:class:`recipe.decide.ensemble.Ensemble`).
- **Scoring** (:func:`score`): every candidate plainly (no views), then the best
  ``select.views_for`` of them by the criterion (and a pinned one) with every view set of
  ``select.view_sets``, on the valid split: log loss, accuracy, and the cost (seconds per image
  on this machine: each member's measured time per view, times the views). Each member's
  probabilities are computed once per input size and per distinct view, and every combination
  is made from them. (ELPV, seed 42, AMD EPYC: select took 119.7 s with views for the best 3 of
  12 candidates, 203.9 s with views for all 12; the same choice.)
- **The fold ensemble** (:func:`fold_candidate`, with ``cv.folds``): the k fold models of
  recipe/decide/cv.py, averaged when shipped, but scored on valid out of fold (each valid image by the
  one member that never saw it), since every other member trained on it or chose by it: a
  conservative figure for the ensemble, on the same images as every other candidate.
- **The choice** (:func:`choose`): the best by ``select.criterion`` (log loss, balanced log loss,
  accuracy, balanced accuracy or macro F1: the second and the last two weigh every class alike;
  several labels: macro average precision too); candidates within
  ``select.tolerance`` of it tie, and a tie goes to the cheaper (then the one with fewer members,
  then the earlier in the table). ``select.candidate`` / ``select.views`` pin either part.
- **The logit adjustment** (:func:`pick_logit_adjust`, Menon et al. 2021): the chosen model's
  probabilities divided by the train split's class priors to the power tau, tau of
  ``select.logit_adjust`` chosen by the criterion on valid (0: none); with two classes and a
  threshold rule the threshold moves the same boundary, so tau stays 0.
- **The threshold** (:func:`pick_threshold`), two classes only: off, a number, or the one that
  maximises valid accuracy or balanced accuracy (ties: the one nearest 0.5).

Nothing here talks to MLflow (``stages/select.py`` logs).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recipe.core.errors import ConfigError, DataError
from recipe.core.layout import RAW, TRAINING, TRAINING_STAGES
from recipe.core.metrics import confusion, multi_label_metrics
from recipe.data.loader import ImageSet, load_split
from recipe.data.split import LABELS, class_names, read_split
from recipe.decide.engine import runner
from recipe.decide.ensemble import blend, decide, fit_size, view_probs
from recipe.decide.fold import fold_member
from recipe.decide.schema import ScoringConfig, SelectConfig
from recipe.decide.tta import Views, plain_views, trained_symmetries, tta_views, untrained_views
from recipe.train.fit import autocast
from recipe.train.learner import Common
from recipe.train.session import load_checkpoint, load_state


@dataclass(frozen=True)
class Candidate:
    name: str
    members: tuple[str, ...]  # names of single checkpoints
    # The fold ensemble: (valid image path, member) pairs, the member that never saw that image.
    # Each of its members trained on (or chose its epoch on) the valid images of the other folds,
    # so it is scored out of fold: each valid image by the one member that held it out.
    held_out: tuple[tuple[str, str], ...] | None = None


FOLD_CANDIDATE = "cv_folds"


def fold_candidate(members: dict[str, Path], folds_csv: Path) -> Candidate | None:
    """The k fold models (``cv@<fold>``: their checkpoints) as one candidate, scored out of fold
    (:class:`Candidate`); None without folds."""
    import pandas as pd

    if len(members) < 2:
        return None
    folds = pd.read_csv(folds_csv, keep_default_na=False)
    held = tuple((p, f"cv@{int(f)}") for p, f in zip(folds["path"], folds["fold"]))
    return Candidate(FOLD_CANDIDATE, tuple(members), held)


@dataclass
class Scores:
    """Per (member, input size): each distinct view's valid probabilities, and seconds per image per view."""
    probs: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[tuple[str, int], float] = field(default_factory=dict)
    labels: np.ndarray | None = None
    paths: list[str] | None = None  # the valid images, in the order of the probabilities


def weights_fingerprint(state: dict) -> str:
    """A hash of a checkpoint's weights (every tensor's bytes, names and dtypes) and input size:
    two checkpoints with the same fingerprint are one model."""
    h = hashlib.sha256(str(state.get("size")).encode())
    for key in sorted(state["model"]):
        t = state["model"][key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoints(stage_dirs: dict[str, Path]) -> tuple[dict[str, Path], dict[str, str]]:
    """Every distinct checkpoint there is: ``<stage>`` (model.pt) and ``<stage>@<epoch>`` (snapshots),
    in stage order. A checkpoint whose weights and size are an earlier one's (a snapshot that is its
    stage's best epoch; resize's model when resize passed finetune's on) is the same model: it is
    left out, and the second dict maps its name to the earlier one's, so it is scored once and
    an ensemble never holds it twice."""
    found: dict[str, Path] = {}
    aliases: dict[str, str] = {}
    seen: dict[str, str] = {}
    for stage in TRAINING_STAGES:
        folder = Path(stage_dirs[stage])
        paths = [(stage, folder / TRAINING.model)] if (folder / TRAINING.model).is_file() else []
        snaps = sorted((folder / TRAINING.snapshots).glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        paths += [(f"{stage}@{p.stem.split('_')[1]}", p) for p in snaps]
        if (folder / TRAINING.snapshots / TRAINING.ema).is_file():  # train.ema: the moving average
            paths.append((f"{stage}@ema", folder / TRAINING.snapshots / TRAINING.ema))
        for name, path in paths:
            fp = weights_fingerprint(load_state(path))
            if fp in seen:
                aliases[name] = seen[fp]
            else:
                seen[fp] = name
                found[name] = path
    return found, aliases


def _snapshot_of(name: str, stage: str) -> bool:
    """``<stage>@<epoch>``: one of ``stage``'s SGDR snapshots (not its moving average, ``@ema``)."""
    return name.startswith(f"{stage}@") and name.split("@")[1].isdigit()


def candidates(singles: dict[str, Path], ensembles: list[list[str]],
               aliases: dict[str, str] | None = None) -> list[Candidate]:
    """The singles, then each configured ensemble that has at least two distinct members (an
    ensemble whose snapshots do not exist, or that repeats another's members, is left out)."""
    out = [Candidate(name, (name,)) for name in singles]
    seen = {c.members for c in out}
    # a stage whose model is an earlier checkpoint's stays a candidate under its name, scored from that one
    out += [Candidate(name, (target,)) for name, target in (aliases or {}).items() if "@" not in name]
    for spec in ensembles:
        members: list[str] = []
        for item in spec:
            if item.endswith("@snapshots"):
                stage = item.split("@")[0]
                if stage not in TRAINING_STAGES:
                    raise ConfigError(f"select.ensembles: {item!r}: {stage!r} is not one of {', '.join(TRAINING_STAGES)}")
                snaps = sorted([n for n in [*singles, *(aliases or {})] if _snapshot_of(n, stage)],
                               key=lambda n: int(n.split("@")[1]))
                members += [(aliases or {}).get(n, n) for n in snaps]
            elif item in TRAINING_STAGES or item in BASELINE_MEMBERS or "@" in item:
                item = (aliases or {}).get(item, item)
                if item in singles:
                    members.append(item)
            else:
                raise ConfigError(f"select.ensembles: {item!r} is not a stage ({', '.join(TRAINING_STAGES)}), "
                                  f"{', '.join(BASELINE_MEMBERS)}, <stage>@snapshots or <stage>@<epoch>")
        members = list(dict.fromkeys(members))
        if len(members) >= 2 and tuple(members) not in seen:
            seen.add(tuple(members))
            out.append(Candidate("+".join(spec), tuple(members)))
    return out


def view_sets(cfg: SelectConfig, common: Common) -> list[Views]:
    """The view sets tried on valid. With ``select.trained_views_only``, a set holding a flip or turn
    the training augmentation never showed is left out, with a line saying so (a mirrored digit
    is no digit; ELPV's cells, trained with every flip and turn, keep them all); a pinned
    ``select.views`` is always kept."""
    names = list(dict.fromkeys(cfg.view_sets + ([cfg.views] if cfg.views != "auto" else [])))
    sets = [tta_views(n, scales=cfg.tta.scales, crop=cfg.tta.crop, n=cfg.tta.n, beta=cfg.tta.beta,
                      augment=common.augmenter() if n == "augment" else None, seed=common.seed) for n in names]
    if not cfg.trained_views_only:
        return sets
    a = common.augment
    symmetries = trained_symmetries(flip_h=a.flip_h > 0, flip_v=a.flip_v > 0, rot90=a.rot90)
    kept = []
    for v in sets:
        untrained = untrained_views(v, symmetries)
        if untrained and v.name != cfg.views:
            print(f"select: view set {v.name!r} left out: training never showed {', '.join(untrained)} (augment: "
                  f"flip_h {a.flip_h:g}, flip_v {a.flip_v:g}, rot90 {str(a.rot90).lower()}; select.trained_views_only)")
        else:
            kept.append(v)
    if not kept:
        raise ConfigError(f"select.view_sets = {cfg.view_sets}: every set has a flip or turn training never showed "
                          "(add none, or set select.trained_views_only=false)")
    return kept


def view_spec(cfg: SelectConfig, common: Common, name: str) -> dict:
    """What a bundle records to rebuild the view set ``name`` (recipe.decide.ensemble.views_from)."""
    return {"name": name, "scales": list(cfg.tta.scales), "crop": cfg.tta.crop, "n": cfg.tta.n, "beta": cfg.tta.beta,
            "augment": common.augment.model_dump() if name == "augment" else None}


def _union(sets: list[Views]) -> Views:
    """Every distinct extra view of the sets, once (labels are unique per view)."""
    extra: dict[str, object] = {}
    for v in sets:
        for label, fn in v.extra:
            extra.setdefault(label, fn)
    return Views("union", tuple(extra.items()), None)


def _member_metas(singles: dict[str, Path], classes: list[str]) -> dict[str, dict]:
    """Each single checkpoint's metadata (all but its weights); one trained on other classes is refused."""
    metas = {}
    for name, path in singles.items():
        meta = {k: v for k, v in load_state(path).items() if k != "model"}
        if list(meta["classes"]) != classes:
            raise DataError(f"{path}: trained on classes {meta['classes']}, the split has {classes}")
        metas[name] = meta
    return metas


def _timed_view_probs(common: Common, model, images: ImageSet, member_size: int, union: Views, device,
                      amp, plain: bool = True, multi_label: bool = False) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    """The seconds per image per view (after a warm-up batch), each view's probabilities over
    ``images`` (the plain one unless ``plain`` is false), their labels."""
    per = {label: [] for label in ["plain", *[lbl for lbl, _ in union.extra]][(0 if plain else 1):]}
    labels = []
    with torch.no_grad():  # a warm-up batch first: the first call's set-up is no cost per image
        x, _ = next(iter(common.batches(images, device, train=False)))
        model(fit_size(x, member_size))
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, y in common.batches(images, device, train=False):
            ps = view_probs(model, fit_size(x, member_size), union, amp, plain=plain, multi_label=multi_label)
            for label, p in zip(per, ps):
                per[label].append(p.cpu().numpy())
            labels.append(y.cpu().numpy())
    n = len(images)
    seconds = (time.perf_counter() - t0) / (n * len(per))
    return seconds, {k: np.concatenate(v) for k, v in per.items()}, np.concatenate(labels)


def _fastest_per_architecture(scores: Scores, metas: dict[str, dict]) -> None:
    """Nothing: sets the timing of every member of one architecture at one size to the fastest of theirs."""
    # Members of one architecture at one size cost the same per image: take the fastest of their
    # timings (the others carry the machine's noise, and the first the warm-up of its shapes).
    groups: dict[tuple, list] = {}
    for name, size in scores.seconds:
        groups.setdefault((metas[name]["model_config"]["name"], metas[name]["size"], size), []).append((name, size))
    for keys in groups.values():
        fastest = min(scores.seconds[k] for k in keys)
        for k in keys:
            scores.seconds[k] = fastest


def _table_rows(cands: list[Candidate], sets: list[Views], scores: Scores, metas: dict[str, dict],
                top: list[Candidate] | None = None) -> list[dict]:
    """One row per (candidate, view set): its members, size, valid figures and seconds per image;
    a candidate not in ``top`` (when given) only without views."""
    rows = []
    for c in cands:
        size = max(metas[m]["size"] for m in c.members)
        for v in sets:
            if top is not None and v.extra and c not in top:
                continue
            p = combine(scores, c, size, v)
            rows.append({"candidate": c.name, "views": v.name, "members": list(c.members), "size": size,
                         "n_views": len(v), **valid_figures(p, scores.labels),
                         "seconds_per_image": sum(scores.seconds[(m, size)] for m in c.members) * len(v)})
    return rows


def score(common: Common, cfg: SelectConfig, *, singles: dict[str, Path], cands: list[Candidate], split: Path,
          raw: Path, scoring: ScoringConfig) -> tuple[list[dict], Scores, list[Views], list[str]]:
    """Every candidate plainly, and the best ``select.views_for`` of them (by the criterion, plainly;
    a pinned candidate too) with every view set, on the valid split: the table's rows, and the
    probabilities they were made from. ``scoring``: what runs each network (recipe.decide.engine)."""
    device = common.start()
    table = read_split(split)
    classes = class_names(table)
    multi = LABELS in table.columns
    if cfg.criterion == "macro_ap" and not multi:
        raise ConfigError("select.criterion = 'macro_ap': average precision per label is for several labels per "
                          "image (data.task: multi_label); use log_loss, accuracy, balanced_accuracy or macro_f1")
    sets = view_sets(cfg, common)
    union = _union(sets)
    metas = _member_metas(singles, classes)
    decoded: dict[int, ImageSet] = {}
    scores = Scores()
    amp = lambda: autocast(device, common.train.amp)

    def images_at(size: int) -> ImageSet:
        if size not in decoded:  # the valid split only: select never reads test
            decoded[size] = load_split(table, Path(raw) / RAW.files, split="valid", size=size, classes=classes,
                                       workers=common.train.workers)
        return decoded[size]

    def member_keys(chosen: list[Candidate]) -> set[tuple[str, int]]:
        return {(m, max(metas[x]["size"] for x in c.members)) for c in chosen for m in c.members}

    def scored(keys: set[tuple[str, int]], views: Views, plain: bool) -> None:
        for name in singles:
            model = None
            mine = sorted(k for k in keys if k[0] == name)
            for key in mine:
                if model is None:  # BatchNorm folded: the graph export ships, a quarter faster
                    model = fold_member(common.prepare(load_checkpoint(singles[name])[0], device),
                                        channels=metas[name].get("channels", 3), size=metas[name]["size"])[0]
                    work = len(images_at(key[1])) * (len(views.extra) + plain) * len(mine)
                    model = runner(model, scoring, device=device, images=work, side=metas[name]["size"], name=name)
                seconds, probs, scores.labels = _timed_view_probs(common, model, images_at(key[1]),
                                                                  metas[name]["size"], views, device, amp, plain=plain,
                                                                  multi_label=multi)
                scores.probs.setdefault(key, {}).update(probs)
                if plain:
                    scores.seconds[key] = seconds
                scores.paths = list(decoded[key[1]].paths)
            del model

    scored(member_keys(cands), plain_views(), plain=True)  # every candidate plainly
    _fastest_per_architecture(scores, metas)
    plain_rows = _table_rows(cands, [plain_views()], scores, metas)
    top = _best_plain(cands, plain_rows, cfg)
    if union.extra:
        scored(member_keys(top), Views("extra", union.extra, None), plain=False)  # their extra views
    return _table_rows(cands, sets, scores, metas, top=top), scores, sets, classes


def _best_plain(cands: list[Candidate], plain_rows: list[dict], cfg: SelectConfig) -> list[Candidate]:
    """The candidates that get every view set: the best ``cfg.views_for`` by the criterion, plainly
    (all of them when None), and a pinned one."""
    names = [r["candidate"] for r in better_first(plain_rows, cfg.criterion)]
    keep = set(names if cfg.views_for is None else names[: cfg.views_for]) | {cfg.candidate}
    return [c for c in cands if c.name in keep]


def combine(scores: Scores, cand: Candidate, size: int, views: Views) -> np.ndarray:
    """The candidate's valid probabilities under ``views``: each member's blend of its views, averaged."""
    labels = ["plain", *[lbl for lbl, _ in views.extra]]
    per_member = [blend([scores.probs[(m, size)][lbl] for lbl in labels], views) for m in cand.members]
    if cand.held_out is not None:  # out of fold: each valid image from the member that held it out
        of = dict(cand.held_out)
        index = {m: i for i, m in enumerate(cand.members)}
        pick = np.array([index[of[p]] for p in scores.paths])
        return np.stack(per_member)[pick, np.arange(len(pick))]
    return sum(per_member) / len(per_member)


def valid_figures(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Log loss, balanced log loss, accuracy, balanced accuracy, macro F1 and the lowest recall of
    any class (argmax decisions) on these probabilities; the classes absent from ``labels`` do not
    count. Several labels per image (``labels`` ``(N, L)``): the mean binary log loss, its balanced
    form, the yes/no answers at 0.5 (accuracy over every image and label, mean recall over labels,
    macro F1, the lowest label's recall) and the macro average precision."""
    if labels.ndim == 2:
        m = multi_label_metrics(probs, labels, [str(k) for k in range(labels.shape[1])], 0.5)
        recalls = [v["recall"] for v in m["per_class"].values() if v["support"]]
        return {"valid_log_loss": m["log_loss"], "valid_accuracy": m["accuracy"],
                "valid_balanced_accuracy": m["balanced_accuracy"], "valid_macro_f1": m["macro_f1"],
                "valid_worst_recall": float(min(recalls)) if recalls else 0.0, "valid_macro_ap": m["macro_ap"],
                "valid_balanced_log_loss": m["balanced_log_loss"]}
    nll = _nll(probs, labels)
    pred = probs.argmax(1)
    recall, f1 = per_class(pred, labels, probs.shape[1])
    present = np.bincount(labels, minlength=probs.shape[1]) > 0
    return {"valid_log_loss": float(nll.mean()), "valid_accuracy": float((pred == labels).mean()),
            "valid_balanced_accuracy": float(recall[present].mean()), "valid_macro_f1": float(f1[present].mean()),
            "valid_worst_recall": float(recall[present].min()),
            "valid_balanced_log_loss": _per_class_mean(nll, labels, probs.shape[1])}


def _nll(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's negative log probability of its class."""
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1.0))


def _per_class_mean(nll: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Each class's mean of ``nll``, averaged over the classes present in ``labels``."""
    counts = np.bincount(labels, minlength=classes)
    sums = np.bincount(labels, weights=nll, minlength=classes)
    present = counts > 0
    return float((sums[present] / counts[present]).mean())


def per_class(pred: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class's recall and F1 (0 where undefined), from the confusion matrix."""
    m = confusion(labels, pred, classes)
    tp, support, predicted = np.diag(m).astype(float), m.sum(1), m.sum(0)
    recall = np.divide(tp, support, out=np.zeros(classes), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(classes), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(classes), where=precision + recall > 0)
    return recall, f1


CRITERIA = {"log_loss": -1, "balanced_log_loss": -1, "accuracy": 1, "balanced_accuracy": 1,  # +1: higher is better
            "macro_f1": 1, "macro_ap": 1}


def better_first(rows: list[dict], criterion: str) -> list[dict]:
    """The rows, best by the criterion first (stable)."""
    sign = CRITERIA[criterion]
    return sorted(rows, key=lambda r: -sign * r[f"valid_{criterion}"])


def adjusted(probs: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment (Menon et al. 2021): ``p(y|x) / prior(y)**tau``, renormalised."""
    if tau == 0:
        return probs
    q = np.log(np.clip(probs, 1e-300, 1.0)) - tau * log_prior
    q = np.exp(q - q.max(1, keepdims=True))
    return q / q.sum(1, keepdims=True)


def pick_logit_adjust(probs: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, taus: list[float],
                      criterion: str) -> tuple[float, dict[float, float]]:
    """The tau of ``taus`` whose adjusted probabilities score best on valid by the criterion (ties:
    the smallest), and every tau's figure."""
    scored = {float(t): valid_figures(adjusted(probs, log_prior, t), labels)[f"valid_{criterion}"] for t in taus}
    sign = CRITERIA[criterion]
    best = max(sign * v for v in scored.values())
    return min(t for t, v in scored.items() if sign * v >= best - 1e-12), scored


def decide_all(rows: list[dict], scores: Scores, cands: list[Candidate], sets: list[Views],
               singles: dict[str, Path], classes: list[str], cfg: SelectConfig,
               priors: np.ndarray | None = None, seed: int = 0) -> dict:
    """Everything select decides from the scored rows: each row's cost against the reference
    (the last stage's model alone, fewest views: what the recipe shipped before select), the
    chosen row, its candidate and views, the logit adjustment (``priors``: the classes' shares of
    the train split), the threshold, and the summary select writes."""
    ref_name = [k for k in singles if "@" not in k][-1]
    ref = min((r for r in rows if r["candidate"] == ref_name), key=lambda r: r["n_views"])
    for r in rows:
        r["cost_ratio"] = r["seconds_per_image"] / ref["seconds_per_image"]
    chosen = choose(rows, cfg)
    cand = next(c for c in cands if c.name == chosen["candidate"])
    views = next(v for v in sets if v.name == chosen["views"])
    probs = combine(scores, cand, chosen["size"], views)
    if scores.labels.ndim == 2:  # several labels per image: a threshold per label, no logit adjustment
        return _decide_multi(rows, chosen, cand, views, probs, scores.labels, classes, cfg, ref, seed)
    tau, by_tau = 0.0, {}
    log_prior = None if priors is None else np.log(np.clip(np.asarray(priors, dtype=np.float64), 1e-12, 1.0))
    two_with_threshold = len(classes) == 2 and cfg.threshold != "off"  # a threshold moves the same boundary
    if log_prior is not None and not two_with_threshold and any(t != 0 for t in cfg.logit_adjust):
        tau, by_tau = pick_logit_adjust(probs, scores.labels, log_prior, cfg.logit_adjust, cfg.criterion)
        probs = adjusted(probs, log_prior, tau)
    threshold = pick_threshold(probs, scores.labels, cfg.threshold)
    at = thresholded(probs, scores.labels, threshold)
    recall, _ = per_class(decide(probs, threshold), scores.labels, len(classes))
    summary = {**chosen, "threshold": threshold,
               "threshold_rule": cfg.threshold if len(classes) == 2 else "off (more than two classes)",
               "logit_adjust": tau, "logit_adjust_valid": {f"{t:g}": v for t, v in by_tau.items()},
               "valid_accuracy_as_chosen": at["accuracy"], "valid_balanced_accuracy_as_chosen": at["balanced_accuracy"],
               "valid_recall_as_chosen": {c: float(recall[i]) for i, c in enumerate(classes)},
               "reference": {"candidate": ref["candidate"], "views": ref["views"],
                             "seconds_per_image": ref["seconds_per_image"]}}
    summary["best_baseline"] = best_baseline(rows, cfg)
    return {"row": chosen, "candidate": cand, "views": views, "threshold": threshold, "summary": summary,
            "logit_adjust": None if tau == 0 else (tau * log_prior).tolist()}


def _decide_multi(rows: list[dict], chosen: dict, cand: Candidate, views: Views, probs: np.ndarray,
                  labels: np.ndarray, classes: list[str], cfg: SelectConfig, ref: dict, seed: int) -> dict:
    """:func:`decide_all` for several labels per image: the thresholds by ``select.label_threshold``
    (:func:`pick_label_thresholds`) and the valid figures as chosen."""
    thresholds, rule, held = pick_label_thresholds(probs, labels, cfg.label_threshold, seed)
    at = multi_label_metrics(probs, labels, classes, thresholds)
    summary = {**chosen, "threshold": thresholds, "threshold_rule": rule,
               "label_threshold_held_out_macro_f1": held, "logit_adjust": 0.0, "logit_adjust_valid": {},
               "valid_accuracy_as_chosen": at["accuracy"], "valid_balanced_accuracy_as_chosen": at["balanced_accuracy"],
               "valid_macro_f1_as_chosen": at["macro_f1"], "valid_exact_match_as_chosen": at["exact_match"],
               "valid_recall_as_chosen": {c: v["recall"] for c, v in at["per_class"].items()},
               "reference": {"candidate": ref["candidate"], "views": ref["views"],
                             "seconds_per_image": ref["seconds_per_image"]},
               "best_baseline": best_baseline(rows, cfg)}
    return {"row": chosen, "candidate": cand, "views": views, "threshold": thresholds, "summary": summary,
            "logit_adjust": None}


BASELINES = ("pixels", "train_head")  # the simple models: a linear model on the pixels, the head on frozen features
BASELINE_MEMBERS = ("pixels",)  # the baseline stage's candidates an ensemble may name (outputs/baseline/candidates/)


def best_baseline(rows: list[dict], cfg: SelectConfig) -> dict | None:
    """The best simple baseline (:data:`BASELINES`, no views) by the criterion on valid, or None."""
    pool = [r for r in rows if r["candidate"] in BASELINES and r["views"] == "none"]
    if not pool:
        return None
    best = better_first(pool, cfg.criterion)[0]
    return {k: best.get(k) for k in ("candidate", "valid_log_loss", "valid_accuracy", "valid_balanced_accuracy")
            + (("valid_macro_ap",) if "valid_macro_ap" in best else ())}


def choose(rows: list[dict], cfg: SelectConfig) -> dict:
    """The row select ships (see the module's contract)."""
    pool = rows
    if cfg.candidate != "auto":
        pool = [r for r in pool if r["candidate"] == cfg.candidate]
        if not pool:
            names = ", ".join(dict.fromkeys(r["candidate"] for r in rows))
            raise ConfigError(f"select.candidate = {cfg.candidate!r}: not a candidate of this run (one of {names})")
    if cfg.views != "auto":
        pool = [r for r in pool if r["views"] == cfg.views]
    sign, key = CRITERIA[cfg.criterion], f"valid_{cfg.criterion}"
    best = max(sign * r[key] for r in pool)
    tied = [r for r in pool if sign * r[key] >= best - cfg.tolerance]
    return min(tied, key=lambda r: (r["seconds_per_image"], len(r["members"]), rows.index(r)))


def train_priors(split: Path, classes: list[str]) -> np.ndarray | None:
    """Each class's share of the train split's images (what the networks were fitted on); None
    with several labels per image (no logit adjustment there)."""
    table = read_split(split)
    if LABELS in table.columns:
        return None
    counts = table.loc[table["split"] == "train", "label"].value_counts()
    n = np.array([counts.get(c, 0) for c in classes], dtype=np.float64)
    return n / max(1.0, n.sum())


def _f1_at(cuts: np.ndarray, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """F1 of the yes/no answers ``p >= cut`` against ``y`` (0/1) at each cut; ``p``, ``y``: ``(N,)``
    or ``(N, L)`` (then one F1 per cut and label)."""
    pred = p[None] >= cuts.reshape((-1,) + (1,) * p.ndim)
    tp = (pred & (y[None] > 0.5)).sum(1)
    return np.divide(2 * tp, pred.sum(1) + (y > 0.5).sum(0), out=np.zeros(tp.shape), where=pred.sum(1) + (y > 0.5).sum(0) > 0)


def _best_cut(cuts: np.ndarray, value: np.ndarray) -> float:
    """The cut with the highest value (ties: the one nearest 0.5)."""
    ok = cuts[value >= value.max() - 1e-12]
    return float(ok[np.argmin(np.abs(ok - 0.5))])


def label_thresholds(probs: np.ndarray, labels: np.ndarray, rule: str) -> list[float]:
    """Several labels per image: ``per_label``, each label's threshold maximising its F1 (among the
    midpoints between its sorted distinct probabilities, and 0.5; 0.5 for a label with no positive
    image); ``shared``, one threshold maximising the macro F1 over the labels present (among 201
    quantiles of all the probabilities, and 0.5)."""
    y = np.asarray(labels) > 0.5
    if rule == "per_label":
        out = []
        for k in range(probs.shape[1]):
            u = np.unique(probs[:, k])
            cuts = np.unique(np.concatenate([[0.5], (u[:-1] + u[1:]) / 2]))
            out.append(_best_cut(cuts, _f1_at(cuts, probs[:, k], y[:, k])) if y[:, k].any() else 0.5)
        return out
    present = y.any(0)
    cuts = np.unique(np.concatenate([[0.5], np.quantile(probs, np.linspace(0, 1, 201))]))
    macro = _f1_at(cuts, probs[:, present], y[:, present]).mean(1) if present.any() else np.zeros(len(cuts))
    return [_best_cut(cuts, macro)] * probs.shape[1]


LABEL_THRESHOLD_RULES = ("per_label", "shared")


def pick_label_thresholds(probs: np.ndarray, labels: np.ndarray, rule: str | float,
                          seed: int) -> tuple[list[float], str, dict[str, float]]:
    """The thresholds (one per label), the rule that gave them, and with ``auto`` each rule's macro
    F1 held out on valid. A number: that threshold for every label; ``per_label`` or ``shared``:
    :func:`label_thresholds` on the whole valid split. ``auto``: per-label thresholds always win on
    the images they were chosen on, so each rule is judged by 2-fold cross-fitting on valid (the
    thresholds chosen on one seeded half, their macro F1 on the other, both ways, averaged); the
    better (ties: shared, the fewer numbers) is then chosen on all of valid."""
    if not isinstance(rule, str):
        return [float(rule)] * probs.shape[1], f"{rule:g}", {}
    if rule != "auto":
        return label_thresholds(probs, labels, rule), rule, {}
    from recipe.core.metrics import multi_label_metrics

    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    held = {}
    for r in LABEL_THRESHOLD_RULES:
        scores = []
        for fit, judge in (halves, halves[::-1]):
            cut = label_thresholds(probs[fit], labels[fit], r)
            scores.append(multi_label_metrics(probs[judge], labels[judge], [""] * probs.shape[1], cut)["macro_f1"])
        held[r] = float(np.mean(scores))
    best = "per_label" if held["per_label"] > held["shared"] + 1e-12 else "shared"
    return label_thresholds(probs, labels, best), best, held


def pick_threshold(probs: np.ndarray, labels: np.ndarray, rule: str | float) -> float | None:
    """The decision threshold on ``p[:, 1]`` (two classes): None for ``off`` or more classes, the
    number itself, or the threshold that maximises ``accuracy`` / ``balanced_accuracy`` on these
    probabilities (among the midpoints between sorted distinct probabilities; ties: nearest 0.5)."""
    if rule == "off" or probs.shape[1] != 2:
        return None
    if not isinstance(rule, str):
        return float(rule)
    p1 = probs[:, 1]
    u = np.unique(p1)
    cuts = np.unique(np.concatenate([[0.5], (u[:-1] + u[1:]) / 2]))
    pred = p1[None, :] >= cuts[:, None]  # (cuts, N)
    pos = labels == 1
    if rule == "accuracy":
        value = (pred == pos[None, :]).mean(1)
    else:
        tpr = (pred & pos).sum(1) / max(1, pos.sum())
        tnr = (~pred & ~pos).sum(1) / max(1, (~pos).sum())
        value = (tpr + tnr) / 2
    best = value.max()
    ok = cuts[value >= best - 1e-12]
    return float(ok[np.argmin(np.abs(ok - 0.5))])


def thresholded(probs: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict:
    """Valid accuracy and balanced accuracy at a threshold (argmax when None)."""
    pred = decide(probs, threshold)
    recalls = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return {"accuracy": float((pred == labels).mean()), "balanced_accuracy": float(np.mean(recalls))}
