"""``python -m recipe.compare [--rev REV ...] [--no-experiments] [--out DIR] [--reference NAME]
[--config conf/compare.yaml] [--no-mlflow]``: see :mod:`recipe.compare`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml
from pydantic import Field

from recipe.compare.groups import compare, group_runs, name_groups, reference_of, settings_of, summarize
from recipe.compare.output import frontier, log_to_mlflow, markdown, tables
from recipe.compare.runs import collect
from recipe.core.config import read_params, validate
from recipe.core.errors import ConfigError
from recipe.core.schema import Strict


class CompareConfig(Strict):
    not_settings: list[str]
    reference: str | None
    resamples: int = Field(ge=100, le=100_000)
    level: float = Field(gt=0, lt=1)
    bootstrap_seed: int = Field(ge=0)
    out: str = Field(min_length=1)


def load_config(path: Path) -> CompareConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the project root (where conf/ is)")
    return validate("compare", yaml.safe_load(path.read_text(encoding="utf-8")) or {}, CompareConfig)


def run(root: Path, cfg: CompareConfig, *, revs: list[str], experiments: bool, out: Path, command: str,
        mlflow: bool = True) -> int:
    try:
        runs = collect(root, revs, experiments)
    except FileNotFoundError as exc:
        raise ConfigError(f"compare: {exc}") from None
    groups, left_out = group_runs(runs, cfg.not_settings)
    if not groups:
        for r, why in left_out:
            print(f"left out {r.name}: {why}", file=sys.stderr)
        raise ConfigError("compare: no finished run (HEAD and every DVC experiment lack evaluate's results)")
    stats = {"resamples": cfg.resamples, "seed": cfg.bootstrap_seed, "level": cfg.level}
    for g in groups:
        summarize(g, **stats)
    head = next((r for r in runs if r.is_head), None)
    head_settings = settings_of(head, cfg.not_settings) if head is not None else None
    reference, why = reference_of(groups, None, head, head_settings)
    name_groups(groups, reference)
    if cfg.reference is not None:  # by the name it has against the default reference; then named anew
        reference, why = reference_of(groups, cfg.reference)
        name_groups(groups, reference)
    comparisons = [compare(reference, g, **stats) for g in groups if g is not reference]
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(groups, comparisons, left_out, cfg.level, command, reference=reference, why=why)
    (out / "compare.md").write_text(text, encoding="utf-8")
    files = [out / "compare.md"]
    for name, frame in tables(groups, comparisons, left_out).items():
        frame.to_csv(out / name, index=False)
        files.append(out / name)
    files.append(frontier(groups, out / "frontier.png", cfg.level))
    print(text)
    if mlflow:
        experiment = read_params(root / "params.yaml").get("tracking", {}).get("experiment", "finetune-recipe")
        log_to_mlflow(root, experiment, out, groups, files)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipe.compare", description=__doc__)
    p.add_argument("--rev", action="append", default=[], help="a commit, branch or tag to add (repeatable)")
    p.add_argument("--no-experiments", action="store_true", help="HEAD and --rev only, not refs/exps")
    p.add_argument("--config", default="conf/compare.yaml")
    p.add_argument("--reference", default=None, help="the group the others are compared with (its name)")
    p.add_argument("--out", default=None, help="folder for the tables and the picture (the config's out)")
    p.add_argument("--no-mlflow", action="store_true", help="write the files only")
    args = p.parse_args(argv)
    root = Path.cwd()
    try:
        cfg = load_config(root / args.config)
        if args.reference is not None:
            cfg = cfg.model_copy(update={"reference": args.reference})
        command = "python -m recipe.compare " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        return run(root, cfg, revs=args.rev, experiments=not args.no_experiments, out=root / (args.out or cfg.out),
                   command=command.strip(), mlflow=not args.no_mlflow)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
