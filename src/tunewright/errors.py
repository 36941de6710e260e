"""Errors the user can act on.

Anything raised as a `TunewrightError` is shown by the CLI as a one-paragraph message with a
non-zero exit, never as a traceback: it means the input (a recipe, a data file, a model path)
needs fixing, not the code.
"""


class TunewrightError(Exception):
    """A problem with the user's input, explained in the message."""


class ConfigError(TunewrightError):
    """A recipe or override that does not validate; the message names the key path."""


class DataError(TunewrightError):
    """A data file that cannot be used; the message names the file, line/row and field."""


class ModelLoadError(TunewrightError):
    """A model that cannot be found or read."""


class TrainingDivergedError(TunewrightError):
    """Loss or gradients became non-finite; the message names the step."""


class RunFolderError(TunewrightError):
    """A folder that is not a run folder, or a run without what a command needs (a trained
    model, its config); the message names the folder."""
