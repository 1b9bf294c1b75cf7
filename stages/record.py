"""record: the last stage of every execution. Stages DVC did not rerun (unchanged, or restored
from its run cache) get a child run tagged ``recipe.reused``; the parent run gets every param and
every stage's metrics, so executions compare side by side in the MLflow UI."""
import json
from pathlib import Path

from recipe.core.config import load_section, read_params
from recipe.core.errors import DataError
from recipe.core.schema import TrackingConfig
from recipe.track import tracking
from stages._common import run


def dag() -> list[dict]:
    """The stages of dvc.yaml in order, as DVC resolves them: name, params keys, metrics files."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(".") as repo:
        out = []
        for stage in repo.index.stages:
            if stage.name == "record" or not getattr(stage, "cmd", None):
                continue
            keys = [k for d in stage.deps if isinstance(d, ParamsDependency) for k in (d.params or [])]
            files = [str(o.def_path) for o in stage.outs if o.metric]
            out.append({"name": stage.name, "params": keys, "metrics": files})
    return out


def read_metrics(files: list[str]) -> dict:
    merged: dict = {}
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"{path}: metrics file missing (the stage that writes it has not run)")
        merged.update(json.loads(path.read_text(encoding="utf-8")))
    return merged


def main(args):
    params = read_params()
    tracking_cfg = load_section("tracking", TrackingConfig, params)
    stages = dag()
    metrics = {s["name"]: read_metrics(s["metrics"]) for s in stages}
    done = tracking.record_execution(stages, params, experiment=tracking_cfg.experiment, metrics=metrics)
    if done:
        reused = ", ".join(done["reused"]) or "none"
        print(f"record: MLflow parent run {done['parent']}: {len(done['ran'])} stage(s) ran, reused from DVC's "
              f"cache: {reused}")


if __name__ == "__main__":
    run(main)
