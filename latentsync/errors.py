"""Typed errors raised by the library.

Every error carries a message that says what was wrong and what to do about it, so the CLI and the
ComfyUI nodes can show it to the user as it is, without a traceback (`exit_with_status` does that for the
commands).
"""

from __future__ import annotations

import argparse
import sys


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


def exit_with_status(args: argparse.Namespace) -> None:
    """Run ``args.run(args)`` and exit: its code (0 if None), 1 on a `LatentSyncError` (one line, or the traceback
    with ``args.debug``), 130 on Ctrl-C. Shared by ``python -m latentsync`` and ``python -m train``."""
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        raise SystemExit(130) from None
    except LatentSyncError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code or 0)
