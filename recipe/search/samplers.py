"""The samplers a search file may name: ``SAMPLERS``, name -> builder, the one list of them.

Contract: :func:`build_sampler` returns the Optuna sampler ``sampler.name`` names, seeded with
``seed`` (the same seed proposes the same trials); ``n_startup_trials`` is how many random trials
come before a model-based sampler models the results (the random sampler has no model and
ignores it). :mod:`recipe.search.config` validates ``sampler.name`` against ``SAMPLERS``. Optuna
is imported by the builders, not here, so reading a search file does not import it (nor torch).
"""
from __future__ import annotations

from typing import Any, Callable


def _tpe(*, seed: int | None, n_startup_trials: int) -> Any:
    """TPE: Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization"."""
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed, n_startup_trials=n_startup_trials)


def _gp(*, seed: int | None, n_startup_trials: int) -> Any:
    """A Gaussian process (Matern 5/2, ARD) with log expected improvement: Snoek et al. 2012,
    "Practical Bayesian Optimization of Machine Learning Algorithms"; Ament et al. 2023,
    "Unexpected Improvements to Expected Improvement for Bayesian Optimization". Needs scipy and
    torch. The objective stays noisy (Optuna's deterministic_objective=False): a trial is a training run."""
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed, n_startup_trials=n_startup_trials)


def _random(*, seed: int | None, n_startup_trials: int) -> Any:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable[..., Any]] = {"tpe": _tpe, "gp": _gp, "random": _random}


def build_sampler(name: str, *, seed: int | None, n_startup_trials: int) -> Any:
    return SAMPLERS[name](seed=seed, n_startup_trials=n_startup_trials)
