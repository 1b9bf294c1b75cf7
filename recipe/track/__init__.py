"""track: MLflow, for every stage (parent and stage runs, logging that never stops a stage, URIs
masked wherever they are printed).

Imports: ``recipe.core``.
"""
