"""Errors a user can fix: entry points print them as one line instead of a traceback."""


class AudioClsError(Exception):
    """Base class: the message names the file or config key and what is wrong with it."""


class ConfigError(AudioClsError, ValueError):
    """A config value that cannot work (names the key)."""


class DataError(AudioClsError):
    """Audio or a data directory that cannot be used (names the path)."""


class TrainingDiverged(AudioClsError):
    """The loss became NaN or infinite (names the step)."""
