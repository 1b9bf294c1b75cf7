"""Bayesian search: the search files, the space against the real config, the `-S` overrides, the
ask/tell loop (with a fake run), its MLflow run with the store gone, and one real search through
`dvc exp run` (slow)."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import REPO, subprocess_env
from recipe import search as S
from recipe.core.errors import ConfigError
from recipe.search.space import _UNSET, _in_space


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def config_of(**changes) -> dict:
    """conf/search/default.yaml with top-level keys replaced."""
    data = yaml.safe_load((REPO / "conf/search/default.yaml").read_text())
    data.update(changes)
    return data


def checked(cfg: S.SearchConfig, root: Path = REPO) -> list[S.Param]:
    values, choices = S.compose_config(root, cfg.overrides)
    return S.check_space(cfg, values, choices, root / "conf")


# --- the search files --------------------------------------------------------------------------

def test_committed_search_files_fit_the_real_config():
    default = S.load_search(S.search_file("default", REPO))
    tiny = S.load_search(S.search_file("tiny", REPO))
    assert tiny.overrides == ["experiment=tiny"] and tiny.study == "tiny" and tiny.space == default.space
    assert tiny.objective == default.objective and tiny.sampler == default.sampler  # merged from default.yaml
    assert default.objective.metrics == "outputs/resize/metrics.json" and default.objective.key.startswith("valid")
    assert default.sampler.name == "tpe" and default.sampler.seed is not None
    params = {p.key: p for p in checked(tiny)}
    assert params["augment"].group and params["augment"].default == "top_down"
    assert params["finetune.lr"].default == 3e-4 and params["model.head.dropout"].default == 0.2
    assert params["train_head.lr"].default is _UNSET  # `auto` cannot be a float: trial 0 leaves it to the config


def test_a_space_named_in_a_file_replaces_the_inherited_one(tmp_path):
    shutil.copy(REPO / "conf/search/default.yaml", tmp_path / "default.yaml")
    path = write(tmp_path / "late.yaml", {"extends": "default", "sampler": {"seed": 7},
                                          "space": {"finetune.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    cfg = S.load_search(path, trials=3, study="late", overrides=["seed=1"])
    assert list(cfg.space) == ["finetune.lr"] and cfg.sampler.seed == 7 and cfg.sampler.name == "tpe"
    assert cfg.trials == 3 and cfg.study == "late" and cfg.overrides == ["seed=1"]


@pytest.mark.parametrize("change, expected", [
    ({"space": {"finetune.lr": {"type": "gauss", "low": 0, "high": 1}}},
     "search.space.finetune.lr.type = 'gauss': must be one of 'float', 'int', 'categorical'"),
    ({"space": {"finetune.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "low must be below high"),
    ({"space": {"finetune.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "log needs low > 0"),
    ({"space": {"augment": {"type": "categorical", "choices": []}}}, "search.space.augment.choices = []"),
    ({"space": {"augment": {"type": "categorical", "choices": ["none", "none"]}}}, "choices must be distinct"),
    ({"space": {"finetune.lr": {"type": "float", "low": 0.1, "high": 1, "lg": True}}}, "search.space.finetune.lr.lg: unknown key"),
    ({"space": {}}, "search.space = {}"),
    ({"objective": {"metrics": "outputs/resize/metrics.json", "key": "valid_loss", "direction": "down"}},
     "search.objective.direction = 'down': Input should be 'minimize' or 'maximize'"),
    ({"objective": {"metrics": "outputs/evaluate/metrics.json", "key": "test_chosen.accuracy", "direction": "maximize"}},
     "search.objective.key = 'test_chosen.accuracy': a test-split metric would leak"),
    ({"objective": {"metrics": "/abs/metrics.json", "key": "valid_loss", "direction": "minimize"}},
     "search.objective.metrics = '/abs/metrics.json': must be a path inside the project"),
    ({"study": "my study"}, "search.study = 'my study'"),
    ({"trials": 0}, "search.trials = 0: Input should be greater than 0"),
    ({"sampler": {"name": "cmaes", "seed": 1, "n_startup_trials": 5}},
     "search.sampler.name = 'cmaes': must be one of 'tpe', 'gp', 'random'"),
])
def test_a_bad_search_file_is_one_config_error_line(tmp_path, change, expected):
    path = write(tmp_path / "bad.yaml", config_of(**change))
    with pytest.raises(ConfigError) as exc:
        S.load_search(path)
    assert expected in str(exc.value) and "\n" not in str(exc.value) and str(path) in str(exc.value)


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler), ("gp", optuna.samplers.GPSampler),
                                       ("random", optuna.samplers.RandomSampler)])
def test_each_sampler_name_builds_its_sampler_from_a_search_file(tmp_path, name, cls):
    shutil.copy(REPO / "conf/search/default.yaml", tmp_path / "default.yaml")
    cfg = S.load_search(write(tmp_path / "s.yaml", {"extends": "default", "sampler": {"name": name}}))
    assert cfg.sampler.name == name and type(S.open_study(cfg, tmp_path).sampler) is cls
    assert name in S.SAMPLERS and len(S.SAMPLERS) == 3  # a new sampler gets a row here


def test_a_seeded_gp_search_is_repeatable_and_beats_its_random_start(tmp_path):
    """Minimise (x - 0.3)^2 on [0, 1] in 12 trials, 4 of them random: Optuna alone, no DVC."""
    cfg = S.load_search(write(tmp_path / "s.yaml", config_of(sampler={"name": "gp", "seed": 0, "n_startup_trials": 4})))

    def xs(name: str) -> list[float]:
        study = optuna.create_study(sampler=S.build_sampler(name, seed=cfg.sampler.seed,
                                                            n_startup_trials=cfg.sampler.n_startup_trials))
        study.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0) - 0.3) ** 2, n_trials=12)
        return [t.params["x"] for t in study.trials]

    gp, rand = xs("gp"), xs("random")
    assert gp == xs("gp")  # the same seed, the same trials
    assert gp[:4] == rand[:4] and gp[4] != rand[4]  # random for n_startup_trials, then the GP's own proposals
    startup_best = min(abs(x - 0.3) for x in gp[:4])
    assert min(abs(x - 0.3) for x in gp[4:]) < min(startup_best, 0.01)


@pytest.mark.parametrize("space, expected", [
    ({"finetune.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "search.space.finetune.lrr: not a params key or config group"),
    ({"model.head": {"type": "categorical", "choices": [1, 2]}}, "search.space.model.head: a dict in params.yaml"),
    ({"augment": {"type": "categorical", "choices": ["top_down", "sideways"]}},
     "search.space.augment.choices: 'sideways' is not an option of augment (files in conf/augment/: none, side_on, top_down, upright)"),
    ({"optim": {"type": "float", "low": 0.1, "high": 1}}, "search.space.optim.type = 'float': a config group takes type categorical"),
    ({"seed": {"type": "int", "low": 0, "high": 9}}, "search.space.seed: also a fixed override"),
])
def test_the_space_is_checked_against_the_composed_config(tmp_path, space, expected):
    cfg = S.load_search(write(tmp_path / "s.yaml", config_of(space=space, overrides=["seed=3"])))
    with pytest.raises(ConfigError, match="^" + re.escape(expected)):
        checked(cfg)


def test_a_bad_fixed_override_names_the_overrides(tmp_path):
    cfg = S.load_search(write(tmp_path / "s.yaml", config_of(overrides=["experiment=tinyy"])))
    with pytest.raises(ConfigError, match=r"^search.overrides = \['experiment=tinyy'\]: .*experiment/tinyy"):
        checked(cfg)


@pytest.mark.parametrize("value, dist, expected", [
    (3e-4, {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}, 3e-4),
    (3e-4, {"type": "float", "low": 1e-3, "high": 1e-2}, _UNSET),
    ("auto", {"type": "float", "low": 1e-5, "high": 1e-3}, _UNSET),
    (0.2, {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}, 0.2),
    (0.25, {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}, _UNSET),
    (9, {"type": "categorical", "choices": [3, 9.0]}, 9.0),
    (True, {"type": "categorical", "choices": [1, 0]}, _UNSET),  # a bool is not the number 1
    (4, {"type": "int", "low": 0, "high": 8, "step": 2}, 4),
    (3, {"type": "int", "low": 0, "high": 8, "step": 2}, _UNSET),
])
def test_a_default_is_enqueued_only_where_the_space_holds_it(value, dist, expected):
    from pydantic import TypeAdapter

    assert _in_space(value, TypeAdapter(S.Distribution).validate_python(dist)) == expected


@pytest.mark.parametrize("key, value, text, composed", [
    ("finetune.lr", 1e-05, "finetune.lr=1e-05", 1e-05),
    ("finetune.lr", 0.00031622776601683794, "finetune.lr=0.00031622776601683794", 0.00031622776601683794),
    ("train_head.lr", 0.002, "train_head.lr=0.002", 0.002),  # `auto` by default: a number overrides it
    ("finetune.lr_mult", 27, "finetune.lr_mult=27", 27),
    ("model.head.dropout", 0.0, "model.head.dropout=0.0", 0.0),
    ("train.amp", False, "train.amp=false", False),
    ("train.clip_grad", None, "train.clip_grad=null", None),
    ("data.stratify_column", "a b", "data.stratify_column='a b'", "a b"),
    ("data.stratify_column", "1e-3", "data.stratify_column='1e-3'", "1e-3"),
    ("augment", "side_on", "augment=side_on", None),
    ("schedule@finetune.schedule", "cosine", "schedule@finetune.schedule=cosine", None),
])
def test_overrides_are_hydra_syntax_and_compose_to_the_value(tmp_path, key, value, text, composed):
    assert S.override(key, value) == text
    values, choices = S.compose_config(REPO, [text])
    if key in choices:
        assert choices[key] == value
    else:
        node = values
        for part in key.split("."):
            node = node[part]
        assert node == composed and type(node) is type(composed)


def test_read_objective(tmp_path):
    obj = S.Objective(metrics="m.json", key="a.valid_loss", direction="minimize")
    with pytest.raises(S.TrialFailed, match="m.json: not found"):
        S.read_objective(tmp_path, obj)
    (tmp_path / "m.json").write_text(json.dumps({"a": {"valid_loss": 0.5}}))
    assert S.read_objective(tmp_path, obj) == 0.5
    (tmp_path / "m.json").write_text(json.dumps({"a": {"loss": 0.5}}))
    with pytest.raises(S.TrialFailed, match=r"a.valid_loss: not in m.json \(there: loss\)"):
        S.read_objective(tmp_path, obj)
    (tmp_path / "m.json").write_text('{"a": {"valid_loss": NaN}}')
    with pytest.raises(S.TrialFailed, match="not a finite number"):
        S.read_objective(tmp_path, obj)
    (tmp_path / "m.json").write_text(json.dumps({"fit_on": "train+valid", "valid_loss": 0.1}))
    with pytest.raises(S.TrialFailed, match=r"valid_loss: not held out \(the stage was fit on train\+valid\)"):
        S.read_objective(tmp_path, S.Objective(metrics="m.json", key="valid_loss", direction="minimize"))


# --- the loop, with a fake `dvc exp run` ------------------------------------------------------------

@pytest.fixture
def fake_root(tmp_path):
    """A root with the real conf/ (no git, no DVC: the runs are faked)."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    return tmp_path


def fake_runs(monkeypatch, fail_at=(), interrupt_at=None):
    """Replace `dvc exp run` by a function of finetune.lr: valid_loss = |log10(lr) + 3| (best at 1e-3)."""
    calls = []

    def run(root, name, sets, log, echo):
        calls.append((name, sets))
        n = len(calls) - 1
        if n == interrupt_at:
            raise KeyboardInterrupt
        lr = next((float(s.split("=")[1]) for s in sets if s.startswith("finetune.lr=")), 3e-4)
        metrics = root / "outputs/resize/metrics.json"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(json.dumps({"fit_on": "train", "valid_loss": abs(math.log10(lr) + 3)}))
        if n in fail_at:
            raise S.TrialFailed("dvc exp run failed: ERROR: planted")

    monkeypatch.setattr("recipe.search.study.run_experiment", run)  # where the loop looks it up
    return calls


def loop_config(root: Path, trials: int, **space_extra) -> S.SearchConfig:
    space = {"finetune.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "train_head.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, **space_extra}
    return S.load_search(write(root / "s.yaml", config_of(study="fake", trials=trials, space=space,
                                                          overrides=["experiment=tiny"],
                                                          sampler={"name": "tpe", "seed": 0, "n_startup_trials": 2})))


def test_the_loop_runs_the_defaults_first_then_suggestions_and_survives_a_failure(fake_root, monkeypatch, capsys):
    calls = fake_runs(monkeypatch, fail_at=(2,))
    cfg = loop_config(fake_root, trials=6)
    result = S.search(cfg, fake_root, echo=False)
    assert calls[0] == ("fake-0", ["experiment=tiny"])  # the defaults: no space override, train_head.lr stays auto
    assert all(sets[0] == "experiment=tiny" and any(s.startswith("finetune.lr=") for s in sets) and
               any(s.startswith("train_head.lr=") for s in sets) for _, sets in calls[1:])
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["default"] and trials[0].params == {"finetune.lr": 3e-4}
    assert trials[2].user_attrs["reason"] == "dvc exp run failed: ERROR: planted"
    assert result.best.value == min(t.value for t in trials if t.value is not None)
    assert result.default.number == 0 and result.apply == f"dvc exp apply fake-{result.best.number}"
    assert result.first_beat.value < trials[0].value  # the fake's optimum (1e-3) is 0.52 decades from 3e-4
    assert all(t.value is None or t.value >= trials[0].value for t in trials[1:result.first_beat.number])
    out = capsys.readouterr().out
    assert "train_head.lr = auto" in out and f"reproduce it: {result.apply}" in out
    assert f"first beat the default ({trials[0].value:.6g}, trial 0) at trial {result.first_beat.number}:" in out
    assert "planted" in (result.out / "trials.txt").read_text()
    files = S.plots(result, cfg)
    assert [f.name for f in files] == ["history.png", "importance.png"] and all(f.stat().st_size > 5000 for f in files)

    again = S.search(S.load_search(fake_root / "s.yaml", trials=1), fake_root, echo=False)  # the same study, resumed
    assert len(again.study.trials) == 7 and sum(bool(t.user_attrs.get("default")) for t in again.study.trials) == 1


def test_ctrl_c_fails_the_running_trial_and_stops_cleanly(fake_root, monkeypatch, capsys):
    calls = fake_runs(monkeypatch, interrupt_at=1)
    result = S.search(loop_config(fake_root, trials=5), fake_root, echo=False)
    assert len(calls) == 2 and [t.state.name for t in result.study.trials] == ["COMPLETE", "FAIL"]
    assert result.study.trials[1].user_attrs["reason"] == "interrupted (Ctrl-C)"
    assert "interrupted" in capsys.readouterr().out and result.best.number == 0
    assert S.plots(result, loop_config(fake_root, trials=5))[0].name == "history.png"  # importance skipped, said why
    assert "importance plot skipped" in capsys.readouterr().out


def test_a_study_reopened_with_the_other_direction_is_refused(fake_root, monkeypatch):
    fake_runs(monkeypatch)
    S.search(loop_config(fake_root, trials=1), fake_root, echo=False)
    data = yaml.safe_load((fake_root / "s.yaml").read_text())
    data["objective"]["direction"] = "maximize"
    with pytest.raises(ConfigError, match="already exists with direction minimize"):
        S.search(S.load_search(write(fake_root / "s.yaml", data)), fake_root, echo=False)


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    bad = write(tmp_path / "bad.yaml", config_of(trials=-1))
    proc = subprocess.run([sys.executable, "-m", "recipe.search", "--space", str(bad)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: search.trials = -1")
    assert proc.stderr.count("\n") == 1
    proc = subprocess.run([sys.executable, "-m", "recipe.search", "--space", "nope"], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file or name in conf/search/ (there: default, tiny" in proc.stderr


# --- the MLflow run, with the store gone ----------------------------------------------------------

def test_an_unreachable_store_costs_one_warning_not_the_search(tmp_path, monkeypatch, capsys):
    """Nothing listens on the port: logging the search's results ends without an exception, one
    warning names the store, and what was not logged is kept in outputs/unlogged/ (as for a stage)."""
    import socket

    import mlflow
    from optuna.distributions import FloatDistribution
    from test_tracking import free_port

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the unlogged record goes under the root
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # seconds, not minutes, on the old code too
    cfg = loop_config(tmp_path, trials=2)
    study = optuna.create_study(direction="minimize")  # in memory, two trials told by hand
    for number, (lr, value) in enumerate([(3e-4, 0.52), (1e-3, 0.01)]):
        study.enqueue_trial({"finetune.lr": lr}, user_attrs={"experiment": f"fake-{number}", "default": number == 0,
                                                             "host": socket.gethostname()})
        trial = study.ask({"finetune.lr": FloatDistribution(1e-4, 1e-2, log=True)})
        study.tell(trial, value)
    result = S.summarize(study, cfg, tmp_path / "outputs/search/fake", "finetune-recipe")
    assert result.best.params == {"finetune.lr": 1e-3} and result.first_beat.number == 1
    try:
        run_id = S.log_search(result, cfg, tmp_path, result.experiment, [])
    finally:
        mlflow.set_tracking_uri(None)
    assert run_id is None
    err = capsys.readouterr().err
    assert err.count("warning: MLflow (http://127.0.0.1:") == 1 and "search-fake goes on without logging" in err
    assert "Traceback" not in err
    (spool,) = (tmp_path / "outputs/unlogged").glob("*-search-fake.jsonl")
    calls = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [c["call"] for c in calls[:2]] == ["open the search's run", "log params"]
    assert {"args": [{"best_value": 0.01}], "kwargs": {"step": None}} in [
        {k: c[k] for k in ("args", "kwargs")} for c in calls]
    assert calls[-1]["call"] == "log an artifact" and calls[-1]["args"][0].endswith("trials.csv")


# --- the real thing -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_search_runs_dvc_experiments_that_reuse_early_stages(tiny_project, tmp_path):
    """Two trials on the tiny config (ELPV, 48 images) whose space is finetune.lr alone: the
    second reruns only the late stages. A copy of the session's tiny project, whose pipeline has
    run already: trial 0 (the defaults) reruns only what its overrides change."""
    proj = tmp_path / "proj"
    shutil.copytree(tiny_project, proj, symlinks=True)
    write(proj / "conf/search/e2e.yaml", {
        "extends": "tiny", "study": "e2e", "trials": 2,
        # the evaluate stage made cheap: it runs in every trial and the objective does not read it
        "overrides": ["experiment=tiny", "evaluate.model.log=false", "evaluate.stage_table=false",
                      "select.view_sets=[none]", "evaluate.metrics.bootstrap=0"],
        "space": {"finetune.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}}})
    env = subprocess_env()
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "search fixture"]):
        subprocess.run(cmd, cwd=proj, env=env, check=True)

    proc = subprocess.run([sys.executable, "-m", "recipe.search", "--space", "e2e", "-q"], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    apply = proc.stdout.strip().splitlines()[-1]
    assert apply.startswith("dvc exp apply e2e-")

    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=proj, env=env,
                                      capture_output=True, text=True, check=True).stdout)
    names = {e["name"] for commit in shown for e in (commit.get("experiments") or [])}
    assert {"e2e-0", "e2e-1"} <= names

    second = (proj / "outputs/search/e2e/trial-0001.log").read_text()
    for stage in ("audit", "split", "baseline", "lr_find", "train_head"):
        assert f"Stage '{stage}' didn't change, skipping" in second
    assert "Running stage 'finetune'" in second and "-S finetune.lr=" in second.splitlines()[0]

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{proj}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].user_attrs["default"] and study.trials[0].params == {"finetune.lr": 3e-4}
    assert study.trials[1].user_attrs["experiment"] == "e2e-1" and "finetune.lr" in study.trials[1].params

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{proj}/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name == "finetune-recipe"]
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'search-e2e'")
    assert {"history.png", "trials.txt", "trials.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.data.tags["dvc_exp_apply"] == apply and run.data.metrics["best_value"] == min(t.value for t in study.trials)

    subprocess.run(apply.split(), cwd=proj, env=env, check=True, capture_output=True)  # the printed command works
    best = study.trials[int(apply.rsplit("-", 1)[1])]
    applied = yaml.safe_load((proj / "params.yaml").read_text())["finetune"]["lr"]
    assert applied == best.params.get("finetune.lr", 3e-4)
