"""recipe.compare on hand-made runs whose answers are known: groups, means, intervals, paired tests,
and the runs it must leave out; then the command on a git repository of hand-made experiments."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import binomtest

from recipe.compare.__main__ import main
from recipe.compare.groups import compare, group_runs, name_groups, reference_of, summarize
from recipe.compare.runs import Run, collect, fingerprints, stale
from recipe.compare.stats import class_list, image_bootstrap, mcnemar, paired, per_image, score, t_interval

STATS = {"resamples": 400, "seed": 0, "level": 0.95}
NOT_SETTINGS = ["seed", "split.seed", "tracking"]


def predictions(n: int, right: int, *, right_chosen: int | None = None, prefix: str = "img") -> pd.DataFrame:
    """n test images, alternating classes a and b; the first ``right`` are predicted correctly."""
    actual = ["a" if i % 2 else "b" for i in range(n)]
    other = {"a": "b", "b": "a"}

    def guess(k: int) -> list[str]:
        return [c if i < k else other[c] for i, c in enumerate(actual)]

    chosen = guess(right if right_chosen is None else right_chosen)
    return pd.DataFrame({"path": [f"{prefix}{i:03d}.png" for i in range(n)], "actual": actual, "predicted": guess(right),
                         "probability": 0.9, "predicted_chosen": chosen, "probability_chosen": 0.9,
                         "p_a": [0.9 if c == "a" else 0.1 for c in chosen], "p_b": [0.1 if c == "a" else 0.9 for c in chosen]})


def run(name: str, seed: int, right: int, *, n: int = 100, code: str = "c1", data: str = "d1", prefix: str = "img",
        problem: str | None = None, **settings) -> Run:
    """A hand-made run: ``right`` of ``n`` test images right plainly, ``right - 2`` as chosen."""
    params = {"seed": seed, "split.seed": seed, "tracking.experiment": "x", "finetune.epochs": 7, **settings}
    return Run(name=name, rev=f"{abs(hash(name)):040x}"[:40], params=params, code=code, data=data, problem=problem,
               figures={"test_accuracy": right / n, "test_accuracy_chosen": (right - 2) / n, "minutes": 10.0 + seed,
                        "valid_accuracy_chosen": 0.9},
               predictions=None if problem else predictions(n, right, right_chosen=right - 2, prefix=prefix))


def test_score_mcnemar_and_intervals_have_known_answers():
    actual = np.array([0, 0, 0, 1])
    assert score("test_accuracy", actual, np.array([0, 0, 1, 0]), 2) == 0.5
    assert score("test_balanced_accuracy", actual, np.array([0, 0, 1, 0]), 2) == pytest.approx((2 / 3 + 0) / 2)
    a = np.array([True] * 2 + [False] * 8 + [True] * 5)
    b = np.array([False] * 2 + [True] * 8 + [True] * 5)
    assert mcnemar(a, b) == (2, 8, pytest.approx(binomtest(2, 10, 0.5).pvalue))
    half = per_image(predictions(400, 200))
    low, high = image_bootstrap(half, "test_accuracy", **STATS)
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.96 * 0.025, abs=0.02)  # binomial standard error
    low, high = t_interval([0.80, 0.90, 1.00], 0.95)  # mean 0.9, s 0.1, t(2, 0.975) = 4.303
    assert (low, high) == (pytest.approx(0.9 - 4.303 * 0.1 / 3 ** 0.5, abs=1e-4), pytest.approx(0.9 + 4.303 * 0.1 / 3 ** 0.5,
                                                                                                abs=1e-4))


def test_groups_means_and_what_is_left_out():
    runs = [run("ref-42", 42, 80), run("ref-1", 1, 90), run("ref-2", 2, 100),
            run("long-42", 42, 90, **{"finetune.epochs": 15}), run("long-1", 1, 95, **{"finetune.epochs": 15}),
            run("again-42", 42, 70),  # the same setting and seed as ref-42: one result computed twice
            run("other-code", 42, 85, code="c2"), run("half", 3, 0, problem="not finished: no evaluate stage")]
    runs[0].name = "HEAD (abc1234)"
    runs.append(run("split-7", 42, 60, **{"split.seed": 7}))  # another split of seed 42: another sample
    groups, left_out = group_runs(runs, NOT_SETTINGS)
    reference, why = reference_of(groups, None, runs[0])
    name_groups(groups, reference)
    assert why == "the group of HEAD's run"
    assert [g.name for g in groups] == ["reference", "finetune.epochs=15", "code c2"]
    assert [r.name for r in reference.runs] == ["HEAD (abc1234)", "ref-1", "ref-2", "split-7"]
    assert {r.name: why.split(":")[0] for r, why in left_out} == {
        "again-42": "the same setting, code, data and seeds as HEAD (abc1234)", "half": "not finished"}
    for g in groups:
        summarize(g, **STATS)
    acc, chosen = reference.summary["test_accuracy"], reference.summary["test_accuracy_chosen"]
    assert (acc["n"], acc["mean"], acc["std"]) == (4, pytest.approx(0.825), pytest.approx(np.std([.8, .9, 1, .6], ddof=1)))
    low, high = t_interval([.8, .9, 1, .6], .95)
    assert (acc["low"], acc["high"], acc["interval"]) == (pytest.approx(low), 1.0, "t") and high > 1  # clipped
    assert chosen["mean"] == pytest.approx(0.805)  # the chosen figures are their own, not the plain ones
    assert reference.summary["minutes"]["mean"] == pytest.approx(10 + (42 + 1 + 2 + 42) / 4)
    single = groups[2].summary["test_accuracy"]
    assert np.isnan(single["std"]) and single["interval"] == "images" and single["low"] < 0.85 < single["high"]


def test_paired_comparison_per_seed_on_the_same_images_only():
    ref = [run("HEAD", 42, 80), run("r1", 1, 80), run("r2", 2, 80)]
    better = [run("b42", 42, 95, **{"finetune.epochs": 15}), run("b1", 1, 92, **{"finetune.epochs": 15}),
              run("b2", 2, 90, prefix="other", **{"finetune.epochs": 15}),  # another split: not paired
              run("b3", 3, 90, **{"finetune.epochs": 15})]  # no reference run of seed 3
    groups, _ = group_runs(ref + better, NOT_SETTINGS)
    name_groups(groups, groups[0])
    c = compare(groups[0], groups[1], **STATS)
    assert [row["seed"] for row in c.per_seed] == [42, 1]
    first = c.per_seed[0]
    assert first["test_accuracy_diff"] == pytest.approx(0.15)
    assert (first["test_accuracy_only_a"], first["test_accuracy_only_b"]) == (0, 15)
    assert first["test_accuracy_p"] == pytest.approx(binomtest(0, 15, 0.5).pvalue)
    assert 0 < first["test_accuracy_low"] <= 0.15 <= first["test_accuracy_high"]
    diff, low, high = c.mean["test_accuracy"]
    assert diff == pytest.approx((0.15 + 0.12) / 2) and (low, high) == tuple(map(pytest.approx, t_interval([.15, .12], .95)))
    assert c.mean["test_accuracy_chosen"][0] == pytest.approx((0.15 + 0.12) / 2)
    assert any("seed 2: not the same test images" in n for n in c.notes)
    assert any("seed 3" in n and "no run of this seed" in n for n in c.notes)


def _commit(repo, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def _run_files(seed: int, right: int, epochs: int = 7, finished: bool = True) -> dict[str, str]:
    lock = {"schema": "2.0", "stages": {"ingest": {"cmd": "x", "outs": [{"path": "data/raw", "md5": "raw1.dir"}]},
                                        "train_head": {"cmd": "x", "deps": [{"path": "recipe/train", "md5": "t1.dir"}]}}}
    files = {"params.yaml": yaml.safe_dump({"seed": seed, "split": {"seed": seed}, "finetune": {"epochs": epochs}})}
    if finished:
        lock["stages"]["evaluate"] = {"cmd": "x"}
        acc = right / 100
        files.update({
            "outputs/evaluate/metrics.json": json.dumps({"test": {"accuracy": acc, "log_loss": 0.3},
                                                         "test_chosen": {"accuracy": acc, "log_loss": 0.3},
                                                         "time_s": 60.0}),
            "outputs/select/metrics.json": json.dumps({"chosen": {"candidate": "resize", "valid_accuracy_as_chosen": 0.9,
                                                                  "valid_log_loss": 0.25}, "time_s": 30.0}),
            "outputs/evaluate/predictions.csv": predictions(100, right).to_csv(index=False)})
    files["dvc.lock"] = yaml.safe_dump(lock)
    return files


def _repo(tmp_path, *, resamples: int, level: float):
    """An empty git repository with a conf/compare.yaml of these bootstrap settings."""
    repo = tmp_path / "proj"
    (repo / "conf").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "conf/compare.yaml").write_text(yaml.safe_dump({
        "not_settings": NOT_SETTINGS, "reference": None, "resamples": resamples, "level": level, "bootstrap_seed": 0,
        "out": "outputs/compare"}))
    return repo


def test_the_command_on_experiments_in_git(tmp_path, monkeypatch, capsys):
    repo = _repo(tmp_path, resamples=200, level=0.9)
    head = _commit(repo, _run_files(42, 80), "head")
    for name, files in [("seed-1", _run_files(1, 90)), ("long-42", _run_files(42, 95, epochs=15)),
                        ("audit-only", _run_files(5, 0, finished=False))]:
        sha = _commit(repo, files, name)
        subprocess.run(["git", "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/{name}", sha], cwd=repo, check=True)
        subprocess.run(["git", "reset", "-q", "--hard", head], cwd=repo, check=True)
    for ref in ("refs/exps/celery/stash", "refs/exps/exec/EXEC_BASELINE", f"refs/exps/temp/{head[2:]}/x",
                f"refs/exps/celery/{head[2:]}/y"):  # the queue's and DVC's own refs: no results
        subprocess.run(["git", "update-ref", ref, head], cwd=repo, check=True)
    assert {r.name for r in collect(repo)} == {f"HEAD ({head[:7]})", "seed-1", "long-42", "audit-only"}
    monkeypatch.chdir(repo)
    assert main(["--no-mlflow"]) == 0
    out = repo / "outputs/compare"
    text = (out / "compare.md").read_text()
    assert "| reference | 2 (42, 1) | 85.00% ± 7.07" in text
    assert "finetune.epochs=15" in text and "One run only, no spread over seeds (the interval is the test images' alone): " \
        "finetune.epochs=15." in text
    assert "audit-only" in text and "not finished: its dvc.lock has no evaluate stage" in text
    groups = pd.read_csv(out / "groups.csv")
    minutes = groups[(groups.group == "reference") & (groups.figure == "minutes")]
    assert float(minutes["mean"].iloc[0]) == pytest.approx(1.5)
    pairs = pd.read_csv(out / "pairs.csv")
    assert pairs.loc[pairs.seed.astype(str) == "42", "test_accuracy_diff"].iloc[0] == pytest.approx(0.15)
    assert (out / "frontier.png").stat().st_size > 10_000
    assert main(["--rev", "no-such-branch", "--no-mlflow"]) == 2
    assert "no-such-branch" in capsys.readouterr().err
    # the other group as the reference: named anew against it, and the sign of the difference turns
    assert main(["--no-mlflow", "--reference", "finetune.epochs=15", "--out", "other"]) == 0
    text = (repo / "other/compare.md").read_text()
    assert "| reference | 1 (42) |" in text and "| finetune.epochs=7 | 2 (42, 1) |" in text
    assert "| finetune.epochs=7 | 42 | test_accuracy | -15.00 pts |" in text


def test_the_compare_run_lands_in_mlflow_with_its_files(tmp_path, monkeypatch):
    import mlflow

    repo = _repo(tmp_path, resamples=100, level=0.95)
    _commit(repo, {**_run_files(42, 80), "params.yaml": yaml.safe_dump({"seed": 42, "tracking": {"experiment": "e"}})},
            "head")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([]) == 0
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    try:
        [found] = mlflow.search_runs(experiment_names=["e"], output_format="list")
        assert found.info.run_name == "compare" and found.data.tags["g0.name"] == "reference"
        assert found.data.metrics["g0.test_accuracy"] == pytest.approx(0.8)
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(found.info.run_id)}
        assert {"compare.md", "groups.csv", "runs.csv", "pairs.csv", "frontier.png"} <= names
    finally:
        mlflow.set_tracking_uri(None)


def test_fingerprints_follow_the_code_and_the_data():
    lock = {"stages": {"ingest": {"outs": [{"path": "data/raw", "md5": "a.dir"}]},
                       "split": {"deps": [{"path": "recipe/data", "md5": "x.dir"}, {"path": "outputs/a", "md5": "q"}]}}}
    code, data = fingerprints(lock)
    lock["stages"]["split"]["deps"][1]["md5"] = "other"  # not code
    assert fingerprints(lock) == (code, data)
    lock["stages"]["split"]["deps"][0]["md5"] = "y.dir"
    assert fingerprints(lock)[0] != code and fingerprints(lock)[1] == data


def test_pairs_number_the_classes_of_both_runs_alike():
    """Three classes; the reference never predicts "c" and the other has a probability column for a
    class "0a" that sorts first: per-run numbering would shift every class and unpair them."""
    a = pd.DataFrame({"path": ["x", "y", "z", "w"], "actual": ["a", "b", "c", "c"], "predicted": ["a", "b", "b", "b"],
                      "predicted_chosen": ["a", "b", "b", "b"], "p_a": 0.3, "p_b": 0.4, "p_c": 0.3})
    b = a.assign(predicted=["a", "b", "c", "b"], predicted_chosen=["a", "b", "c", "c"], p_0a=0.0)
    classes = class_list(a, b)
    ia, ib = per_image(a, classes), per_image(b, classes)
    assert np.array_equal(ia.actual, ib.actual)
    p = paired(ia, ib, "test_accuracy_chosen", **STATS)
    assert p.difference == pytest.approx(0.5) and (p.only_a, p.only_b) == (0, 2)
    assert score("test_balanced_accuracy", ia.actual, ib.predicted["test_balanced_accuracy"], ia.classes) == \
        pytest.approx((1 + 1 + 0.5) / 3)


def test_a_commit_whose_params_or_code_are_not_what_its_lock_ran_is_stale():
    lock = {"stages": {"finetune": {"params": {"params.yaml": {"finetune": {"epochs": 7}}},
                                    "deps": [{"path": "recipe/train", "md5": "a.dir"}]},
                       "resize": {"deps": [{"path": "recipe/train", "md5": "a.dir"}]}}}
    assert stale(lock, {"finetune.epochs": 7}) is None
    lock["stages"]["finetune"]["params"]["params.yaml"]["optim"] = {"eps": "1e-08"}  # how YAML reads DVC's 1e-08
    assert stale(lock, {"finetune.epochs": 7, "optim.eps": 1.0e-08}) is None
    assert "optim.eps" in stale(lock, {"finetune.epochs": 7, "optim.eps": 1.0e-07})
    assert "params.yaml's finetune.epochs = 15, stage finetune ran with 7" in stale(lock, {"finetune.epochs": 15})
    lock["stages"]["resize"]["deps"][0]["md5"] = "b.dir"
    assert "recipe/train differs between stages" in stale(lock, {"finetune.epochs": 7})


def test_the_earlier_three_seed_figures_from_runs_alone():
    """The README's earlier three-seed table (655 test images per seed): plain 86.56, 86.56, 85.95%
    (567, 567, 563 right) and as chosen 87.18, 87.18, 85.80% (571, 571, 562). Compare's means from
    runs with exactly those predictions are the table's 86.36% and 86.72%."""
    runs = []
    for name, seed, plain, chosen in (("s42", 42, 567, 571), ("s1", 1, 567, 571), ("s2", 2, 563, 562)):
        r = run(name, seed, plain, n=655)
        r.predictions = predictions(655, plain, right_chosen=chosen)
        r.figures.update(test_accuracy=plain / 655, test_accuracy_chosen=chosen / 655)
        runs.append(r)
    runs[0].is_head = True
    [group], _ = group_runs(runs, NOT_SETTINGS)
    summarize(group, **STATS)
    assert round(100 * group.summary["test_accuracy"]["mean"], 2) == 86.36
    assert round(100 * group.summary["test_accuracy_chosen"]["mean"], 2) == 86.72


def test_a_runs_cross_validated_figures_include_the_pooled_balanced_accuracy():
    from recipe.compare.runs import TIMED, figures

    metrics = {**{s: {"time_s": 6.0} for s in TIMED}, "evaluate": {"test": {"accuracy": 0.9}},
               "select": {"chosen": {"valid_log_loss": 0.1}}, "cv": {"folds": 5, "accuracy": 0.97, "accuracy_std": 0.01,
                      "pooled": {"accuracy": 0.97, "balanced_accuracy": 0.93}}}
    out = figures(metrics, None)
    assert (out["cv_accuracy"], out["cv_balanced_accuracy"]) == (0.97, 0.93)
    metrics["cv"] = {"folds": 0}
    assert "cv_balanced_accuracy" not in figures(metrics, None)
