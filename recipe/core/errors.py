"""The errors a user can cause, each printed by a stage as one line without a traceback."""


class RecipeError(Exception):
    """Base class: the message names what is wrong and what is allowed."""


class ConfigError(RecipeError):
    """A params value is missing, of the wrong type, or out of range."""


class DataError(RecipeError):
    """The dataset cannot support the stage (too few classes or images, a class too small...)."""
