"""The one OmegaConf resolver conf/ uses: ``${recipe_folds:N}`` and ``${recipe_folds:N,STAGES}``.

DVC's Hydra composition (``dvc exp run -S``, ``make params``) puts the project root on the
plugin path and imports the ``hydra_plugins`` namespace, which registers it. It turns
``cv.folds`` into the lists the per-fold stages of dvc.yaml iterate over (``foreach`` needs a
list; ``cv.folds: 5`` is what a user writes): ``[0, 1, 2, 3, 4]``, or ``[]`` for the resize
stage when ``cv.stages`` stops at finetune.
"""
from omegaconf import ListConfig, OmegaConf


def recipe_folds(folds, stages: str = "resize") -> ListConfig:
    n = int(folds)
    return OmegaConf.create(list(range(n)) if n > 1 and str(stages) == "resize" else [])


OmegaConf.register_new_resolver("recipe_folds", recipe_folds, replace=True)
