"""Config: params.yaml matches conf/, schemas are strict, and a bad value is one clear line."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, subprocess_env
from recipe.core.compose import compose
from recipe.core.config import load_section, validate
from recipe.core.errors import ConfigError
from recipe.core.schema import Seed, TrackingConfig
from recipe.data.schema import AuditConfig, DataConfig, SplitConfig
from recipe.train.schema import (
    AugmentConfig,
    BaselineConfig,
    FinetuneConfig,
    LrFindConfig,
    ModelConfig,
    OptimConfig,
    ResizeConfig,
    TrainConfig,
    TrainHeadConfig,
)

SCHEMAS = {"audit": AuditConfig, "split": SplitConfig, "data": DataConfig, "model": ModelConfig,
           "optim": OptimConfig, "augment": AugmentConfig, "train": TrainConfig, "baseline": BaselineConfig,
           "lr_find": LrFindConfig, "train_head": TrainHeadConfig, "finetune": FinetuneConfig,
           "resize": ResizeConfig}



def test_params_yaml_is_a_fresh_composition_of_conf(tmp_path):
    fresh = compose(REPO, [], tmp_path / "params.yaml")
    assert yaml.safe_load(fresh.read_text()) == yaml.safe_load((REPO / "params.yaml").read_text()), (
        "params.yaml drifted from conf/: run `make params` and commit the result"
    )


def test_overrides_compose_like_dvc(tmp_path):
    out = yaml.safe_load(compose(REPO, ["data=folder", "data.path=/my/images", "seed=7"], tmp_path / "p.yaml").read_text())
    assert out["data"]["source"] == "folder" and out["data"]["path"] == "/my/images"
    assert out["split"]["seed"] == 7  # interpolated from the one seed
    tiny = yaml.safe_load(compose(REPO, ["experiment=tiny"], tmp_path / "t.yaml").read_text())
    assert tiny["data"]["limit"] == 48 and tiny["data"]["source"] == "elpv"
    large = yaml.safe_load(compose(REPO, ["experiment=elpv_large"], tmp_path / "l.yaml").read_text())
    assert large["model"]["name"] == "efficientnet_lite2" and (large["finetune"]["epochs"], large["resize"]["epochs"]) == (15, 7)
    assert large["train"] == yaml.safe_load((REPO / "params.yaml").read_text())["train"]  # the rest: the defaults
    xl = yaml.safe_load(compose(REPO, ["experiment=elpv_xl"], tmp_path / "x.yaml").read_text())
    assert xl["model"]["name"] == "efficientnet_lite2" and (xl["finetune"]["epochs"], xl["resize"]["epochs"]) == (31, 15)
    assert xl["train"] == large["train"]


def test_unknown_override_key_is_refused(tmp_path):
    with pytest.raises(Exception, match="audit.near_dup_bitz"):
        compose(REPO, ["audit.near_dup_bitz=3"], tmp_path / "p.yaml")


def test_every_section_of_the_real_config_validates(params):
    load_section("data", DataConfig, params)
    load_section("audit", AuditConfig, params)
    load_section("split", SplitConfig, params)
    load_section("tracking", TrackingConfig, params)
    assert load_section("seed", Seed, params) == params["seed"]
    for name, schema in SCHEMAS.items():
        load_section(name, schema, params)


@pytest.mark.parametrize("group, options", [
    ("optim", ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"]),
    ("model", ["efficientnet_lite0", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "efficientnet_b0",
               "convnext_tiny", "efficientnet_lite1", "efficientnet_lite2", "timm"]),
    ("augment", ["top_down", "side_on", "upright", "none"]),
])
def test_every_option_of_a_group_composes_and_validates(tmp_path, group, options):
    for option in options:
        out = yaml.safe_load(compose(REPO, [f"{group}={option}"], tmp_path / "p.yaml").read_text())
        validate(group, out[group], SCHEMAS[group])


def test_every_schedule_composes_into_each_training_stage(tmp_path):
    for name in ("onecycle", "sgdr", "cosine", "step", "multistep", "exponential", "plateau", "constant"):
        overrides = [f"schedule@{stage}.schedule={name}" for stage in ("train_head", "finetune", "resize")]
        out = yaml.safe_load(compose(REPO, overrides, tmp_path / "p.yaml").read_text())
        for stage in ("train_head", "finetune", "resize"):
            assert validate(stage, out[stage], SCHEMAS[stage]).schedule.name == name


@pytest.mark.parametrize(
    "section, change, expected",
    [
        ("audit", {"near_dup_bits": -1}, "audit.near_dup_bits = -1: Input should be greater than or equal to 0"),
        ("audit", {"conflicting_labels": "maybe"}, "audit.conflicting_labels = 'maybe': Input should be 'drop' or 'keep'"),
        ("audit", {"near_dup_bitz": 3}, "audit.near_dup_bitz: unknown key"),
        ("audit", {"workers": "two"}, "audit.workers = 'two': Input should be a valid integer"),
        ("split", {"fractions": {"train": 0.5, "valid": 0.2, "test": 0.2}},
         "split.fractions = {'train': 0.5, 'valid': 0.2, 'test': 0.2}: must sum to 1 (they sum to 0.9)"),
        ("split", {"fractions": {"train": 0.8, "test": 0.2}}, "needs train, valid and test"),
        ("data", {"source": "s3"}, "data.source = 's3': must be one of 'elpv', 'folder', 'csv'"),
        ("data", {"task": "regression"}, "data.task = 'regression': Input should be 'binary' or 'four_class'"),
        ("data", {"limit": 0}, "data.limit = 0: Input should be greater than 0"),
        ("optim", {"name": "lbfgs"}, "optim.name = 'lbfgs': must be one of 'sgd', 'adam', 'adamw', 'rmsprop', 'adagrad', 'adadelta'"),
        ("optim", {"weight_decay": -0.1}, "optim.weight_decay = -0.1: Input should be greater than or equal to 0"),
        ("finetune", {"lr": -0.001}, "finetune.lr = -0.001"),
        ("finetune", {"lr": "fast"}, "finetune.lr = 'fast'"),
        ("finetune", {"schedule": {"name": "sgdr", "cycle_len": 0, "cycle_mult": 2, "eta_min": 0}},
         "finetune.schedule.cycle_len = 0: Input should be greater than 0"),
        ("resize", {"factor": 1.5}, "set exactly one of resize.image_size and resize.factor"),
        ("lr_find", {"end_lr": 1e-8}, "lr_find.end_lr = 1e-08: must be greater than start_lr"),
        ("lr_find", {"suggestion": "middle"}, "lr_find.suggestion = 'middle'"),
        ("train", {"device": "tpu"}, "train.device = 'tpu'"),
        ("model", {"head": {"pool": "avg", "dropout": 1.5, "init": "kaiming", "init_gain": 0.1, "prior_bias": True}},
         "model.head.dropout = 1.5"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(params, section, change, expected):
    schema = SCHEMAS[section]
    with pytest.raises(ConfigError) as err:
        validate(section, {**params[section], **change}, schema)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_value_says_how_to_set_it():
    with pytest.raises(ConfigError, match=r"data.path = '\?\?\?': a value is required \(set it with -S data.path=...\)"):
        validate("data", {"source": "folder", "path": "???", "limit": None, "stratify_column": None, "soft_labels": None},
                 DataConfig)


def test_seed_must_be_an_int(params):
    with pytest.raises(ConfigError, match="seed = '42'"):
        validate("seed", "42", Seed)


def test_stage_stops_with_one_line_and_no_traceback(tmp_path, params):
    params["split"]["fractions"]["test"] = 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", tmp_path)  # the stage reads its params list from DVC's index
    proc = subprocess.run(
        [sys.executable, "-m", "stages.split", "--manifest", "m.csv", "--split", "s.csv", "--metrics", "x.json", "--plot", "p.png"],
        cwd=tmp_path, env=subprocess_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: split.fractions = {'train': 0.6, 'valid': 0.15, 'test': 0.5}: must sum to 1 (they sum to 1.25)"
    ]
    assert "Traceback" not in proc.stderr


def _leaf_keys(d, prefix=""):
    for k, v in d.items():
        yield from _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]


def test_no_params_key_is_one_dvc_run_cache_leaves_out():
    """DVC's run cache drops keys named like output metadata (``size``, ``nfiles``) from its key at
    any depth (treeverse/dvc#10296): a sweep over such a key would restore another value's run."""
    from dvc.stage.cache import _get_cache_hash
    from dvc_data.hashfile.meta import Meta

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    dropped = {Meta.PARAM_SIZE, Meta.PARAM_NFILES}
    assert [k for k in _leaf_keys(params) if k.rsplit(".", 1)[-1] in dropped] == []

    def cache_key(train: dict) -> str:  # a lock entry as DVC's run cache hashes it
        return _get_cache_hash({"cmd": "python -m stages.train_head", "params": {"params.yaml": {"train": train}}})

    train = params["train"]
    assert cache_key({**train, "image_size": 64}) != cache_key({**train, "image_size": 96})
    # what the key's old name did: two sizes, one run-cache entry (a stale restore)
    old = {k: v for k, v in train.items() if k != "image_size"}
    assert cache_key({**old, "size": 64}) == cache_key({**old, "size": 96})


def test_each_stage_reads_the_params_list_dvc_itself_sees(tmp_path):
    """recipe.core.config reads a stage's params list from dvc.yaml with PyYAML (DVC's index costs
    each stage about a second): the lists must be DVC's own, for every stage, foreach copies
    (cv_finetune@0) included, and a name dvc.yaml lacks is a one-line error."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    from recipe.core.config import PARAMS_FILE, dvc_params_keys

    shutil.copy(REPO / "dvc.yaml", tmp_path)
    compose(REPO, ["cv.folds=2"], tmp_path / "params.yaml")  # two folds: the foreach stages expand
    with Repo(str(tmp_path), uninitialized=True) as repo:
        seen = {s.name: [k for d in s.deps if isinstance(d, ParamsDependency)
                         and d.def_path == PARAMS_FILE for k in (d.params or [])]
                for s in repo.index.stages if getattr(s, "name", None)}
    assert "cv_finetune@0" in seen and len(seen) > 12
    assert {name: dvc_params_keys(name, tmp_path) for name in seen} == seen
    for wrong in ("nonesuch", "cv_finetune", "finetune@0"):
        with pytest.raises(ConfigError, match=f"{wrong}: no such stage in dvc.yaml"):
            dvc_params_keys(wrong, tmp_path)
