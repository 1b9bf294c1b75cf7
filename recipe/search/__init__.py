"""Bayesian search over the recipe's params: Optuna's ask/tell around ``dvc exp run``.

Contract: :func:`load_search` reads a search file (``conf/search/<name>.yaml``) into a validated
:class:`SearchConfig`, or raises :class:`ConfigError` with one line naming the key, the value and
what is allowed. :func:`search` runs ``cfg.trials`` trials in the project root, each one
``dvc exp run -n <study>-<N> -S key=value ...`` (so DVC skips, or restores from its run cache,
every stage whose params and inputs did not change), reads the objective from a metrics file the
experiment wrote, and tells Optuna. Trial 0 of a new study is the config's defaults (enqueued),
so the report can say whether, and at which trial, the search beat them. A failed run or a
missing metric fails that trial with a one-line reason and the search goes on; Ctrl-C fails the
running trial and stops cleanly. At the end: the trials table, the best trial, the trial that
first beat the default, the ``dvc exp apply`` command, and one MLflow run ``search-<study>`` with
the history and parameter-importance plots, logged through :mod:`recipe.track.tracking` (a store that
cannot be reached costs a warning, not the search).

The sampler is TPE (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization"), a
Gaussian process with expected improvement, or random (the search file's ``sampler.name``), seeded.
The study lives in SQLite at the root (``optuna.db``) unless a database URL is given; several
machines running the same command against one URL share the study (each runs its own trials in
its own checkout, so give each its own ``--seed``).

One concept per module: :mod:`~recipe.search.config` (the search file), :mod:`~recipe.search.space`
(the space against the real config, ``-S`` overrides), :mod:`~recipe.search.trial` (one
``dvc exp run`` and its objective), :mod:`~recipe.search.study` (the ask/tell loop),
:mod:`~recipe.search.samplers` (the samplers by name), :mod:`~recipe.search.report` (table and
plots), :mod:`~recipe.search.mlflow_run` (the MLflow run), ``__main__`` (the command line).

``python -m recipe.search [--space NAME|PATH] [--trials N] [--storage URL] [--study NAME]
[--seed N] [-S key=value ...] [-q]``
"""
from recipe.search.config import (
                                  SEARCH_DIR,
                                  CategoricalDist,
                                  Distribution,
                                  FloatDist,
                                  IntDist,
                                  Objective,
                                  Sampler,
                                  SearchConfig,
                                  load_search,
                                  search_file,
)
from recipe.search.mlflow_run import log_search
from recipe.search.report import Result, plots, summarize, trials_table
from recipe.search.samplers import SAMPLERS, build_sampler
from recipe.search.space import Param, check_space, compose_config, override, suggest
from recipe.search.study import OUT_DIR, open_study, search, storage_url
from recipe.search.trial import TrialFailed, read_objective, run_experiment

__all__ = ["SEARCH_DIR", "OUT_DIR", "CategoricalDist", "Distribution", "FloatDist", "IntDist", "Objective", "Sampler",
           "SearchConfig", "load_search", "search_file", "Param", "check_space", "compose_config", "override",
           "suggest", "TrialFailed", "read_objective", "run_experiment", "Result", "open_study", "search",
           "storage_url", "summarize", "trials_table", "plots", "log_search", "SAMPLERS", "build_sampler"]
