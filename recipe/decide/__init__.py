"""decide: choosing on the valid split and judging on the test split: TTA views, ensembles and
bundles, select, cross-validation's out-of-fold figures and label issues, evaluate, and the
pictures inside the chosen model.

Imports: ``recipe.core``, ``recipe.data``, ``recipe.report``, ``recipe.train``.
"""
