"""ship: the chosen model in users' hands: the ONNX export and its runtime wrapper, ``python -m
recipe.ship.predict``, and the MLflow pyfunc model evaluate logs.

Imports: ``recipe.core``, ``recipe.track``, ``recipe.data``, ``recipe.report``, ``recipe.train``,
``recipe.decide``.
"""
