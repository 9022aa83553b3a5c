"""Typed errors raised by the library.

Every error carries a message that says what was wrong and what to do about it, so the CLI and the
ComfyUI nodes can show it to the user as it is, without a traceback.
"""


class LatentSyncError(Exception):
    """Base class of every error this library raises on purpose."""


class CheckpointError(LatentSyncError):
    """A model file is missing, unreadable, unsafe, or does not fit the model it was given to."""


class ConfigError(LatentSyncError):
    """A model or run configuration is inconsistent."""


class MediaError(LatentSyncError):
    """A video or audio file cannot be read or written."""


class NoFaceError(LatentSyncError):
    """No usable face was found where one was required."""


class Cancelled(LatentSyncError):
    """A run was stopped by its ``cancel`` callback; nothing was written."""
