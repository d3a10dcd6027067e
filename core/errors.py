"""Exceptions that carry a message meant for the user, not a stack trace."""


class LabError(Exception):
    """Base class for errors whose message is shown to the user as is."""


class ConfigError(LabError, ValueError):
    """A model or training configuration that cannot work."""


class DataError(LabError):
    """MNIST files that are missing, truncated or not in IDX format."""


class CheckpointError(LabError):
    """A weights file that is missing, corrupt or does not match its config."""


class ImageError(LabError):
    """An input image that cannot be turned into an MNIST-style digit."""


class StoreError(LabError):
    """A run store that cannot be read or written."""
