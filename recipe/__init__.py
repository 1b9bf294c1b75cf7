"""finetune-recipe: the library behind the DVC stages.

Stage scripts in ``stages/`` are wiring only; everything they call lives here and takes
plain keyword arguments, so each piece can be tested on its own.
"""
