"""The exceptions peopleseg raises on bad input. Each message names the offending file, key or frame.

The CLI prints them as one line and exits non-zero; library users can catch `PeoplesegError`.
"""


class PeoplesegError(Exception):
    """Base class: a problem the user can fix, explained in one line."""


class DataError(PeoplesegError):
    """An image, mask, video or dataset that cannot be read or is not what it should be."""


class ConfigError(PeoplesegError):
    """A config file, option or override that is malformed, unknown or out of range."""


class ModelError(PeoplesegError):
    """A model name, weights file or checkpoint that cannot be built or loaded."""
