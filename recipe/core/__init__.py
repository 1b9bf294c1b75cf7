"""core: what every stage shares and nothing else depends on (the bottom layer).

Errors, the project root and path checks, params loading and composition, the base of the
config schemas (``Strict``, the seed, tracking's section), the process group under torchrun, and
the metrics as plain functions of numpy arrays.

Imports: no other package of the recipe.
"""
