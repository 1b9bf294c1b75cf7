"""The one OmegaConf resolver conf/ uses: ``${recipe_folds:N}`` and ``${recipe_folds:N,STAGES}``.

DVC's Hydra composition (``dvc exp run -S``, ``make params``) puts the project root on the
plugin path and imports the ``hydra_plugins`` namespace, which registers it. It turns
``cv.folds`` into the lists the per-fold stages of dvc.yaml iterate over (``foreach`` needs a
list; ``cv.folds: 5`` is what a user writes): ``[0, 1, 2, 3, 4]``, or ``[]`` for the resize
stage when ``cv.stages`` stops at finetune.
"""
from omegaconf import ListConfig, OmegaConf

# Each fold is a copy of three or four training stages in dvc.yaml: a typo of 100 would set up
# 300 stages before any schema saw the value, so the bound is checked here, where the lists are made.
MAX_FOLDS = 20


def recipe_folds(folds, stages: str = "resize") -> ListConfig:
    if isinstance(folds, bool) or not isinstance(folds, int) or not 0 <= folds <= MAX_FOLDS:
        raise ValueError(f"cv.folds = {folds!r}: an integer from 0 (off) to {MAX_FOLDS}")
    n = folds
    return OmegaConf.create(list(range(n)) if n > 1 and str(stages) == "resize" else [])


OmegaConf.register_new_resolver("recipe_folds", recipe_folds, replace=True)
