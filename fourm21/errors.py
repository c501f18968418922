"""The errors fourm21 raises for bad user input; the CLIs print them in one line and exit non-zero."""


class Fourm21Error(Exception):
    """Base class: a problem the user can fix (bad file, bad key), not a bug."""


class ConfigError(Fourm21Error):
    """A config key is missing, has the wrong type or an impossible value."""


class DatasetError(Fourm21Error):
    """A data file is missing or malformed; the message names the file."""


class CheckpointError(Fourm21Error):
    """A checkpoint is missing, cut short or built for another architecture."""
