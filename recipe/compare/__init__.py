"""compare: finished runs side by side, grouped by setting, with their spread and paired tests.

Contract: ``python -m recipe.compare`` reads the HEAD commit and every DVC experiment
(:mod:`~recipe.compare.runs`: git is the source of truth, each experiment a commit holding its
params, its ``dvc.lock`` and its per-image test predictions), groups them by their params minus
``conf/compare.yaml``'s ``not_settings`` and by their code and data (:mod:`~recipe.compare.groups`),
gives each group's figures as mean ± standard deviation with a bootstrap interval
(:mod:`~recipe.compare.stats`), compares every group with the reference seed by seed on the same
test images (paired bootstrap and McNemar's exact test), and writes a markdown table, CSVs and the
frontier picture, logged as one MLflow run ``compare`` (:mod:`~recipe.compare.output`). Runs that
did not finish, repeats of one seed and groups of one run are said plainly, never pooled.

No stage loads this package: changing it reruns nothing.

Imports: ``recipe.core``, ``recipe.track``.
"""
