"""The command line: ``python -m recipe.search`` (``make search``); a thin wrapper.

Contract: reads ``--space`` (a name in conf/search/ or a path; the other options override the
file's keys and default to it), runs :func:`recipe.search.search`, the plots and the MLflow run,
and prints the ``dvc exp apply`` command of the best trial last. A bad search file or space is
one ``error:`` line on stderr and exit code 2; an MLflow store that cannot be reached is a
warning, and the exit code stays 0.
"""
from __future__ import annotations

import argparse
import sys

import recipe.search
from recipe.core.errors import RecipeError
from recipe.search import Result, load_search, log_search, plots, search, search_file


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(prog="python -m recipe.search", description=recipe.search.__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="default", help="a name in conf/search/ or a YAML path (default: default)")
    parser.add_argument("--trials", type=int, help="trials this process runs (default: the file's)")
    parser.add_argument("--storage", help="Optuna storage URL shared by several machines (default: sqlite:///<root>/optuna.db)")
    parser.add_argument("--study", help="study name (default: the file's); trial N runs as experiment <study>-N")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the file's)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a fixed override for every trial (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo dvc's output (it is still logged)")
    args = parser.parse_args(argv)
    from recipe.core.paths import project_root

    root = project_root()
    try:
        cfg = load_search(search_file(args.space, root), trials=args.trials, storage=args.storage, study=args.study,
                          seed=args.seed, overrides=args.overrides)
        result = search(cfg, root, echo=not args.quiet)
        files = plots(result, cfg)
        run_id = log_search(result, cfg, root, result.experiment, files)
        print(f"MLflow run search-{cfg.study}: {run_id or 'not logged (see the warning above)'}")
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if result.best is not None:
        print(f"\n{result.apply}")
    return result


if __name__ == "__main__":
    main()
