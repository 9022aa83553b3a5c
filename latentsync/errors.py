"""Typed errors raised by the library.

Every error carries a message that says what was wrong and what to do about it, so the CLI and the
ComfyUI nodes can show it to the user as it is, without a traceback (`exit_with_status` does that for the
commands).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable


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


class Terminated(BaseException):
    """SIGTERM arrived. A `BaseException`, like `KeyboardInterrupt`, so that it unwinds the run through every
    ``finally`` and context manager (which remove partial outputs) and no ``except Exception`` swallows it."""


# How long an interrupt that arrived during an import waits before it is tried again.
IMPORT_RETRY_SECONDS = 0.1
_pending_retries: list[threading.Timer] = []


def _inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum, frame) -> None:
    """SIGINT raises `KeyboardInterrupt`, SIGTERM `Terminated`, but never inside an import: there the signal is
    sent again `IMPORT_RETRY_SECONDS` later, until the import is over. An exception raised halfway through importing
    torch, NumPy or accelerate left them half-initialised (measured: a RecursionError in NumPy's ``__getattr__``
    instead of "Interrupted.", and a SIGABRT, when Ctrl-C came during the CLI's start-up on a loaded box)."""
    if _inside_import(frame):
        retry = threading.Timer(IMPORT_RETRY_SECONDS, os.kill, (os.getpid(), signum))
        retry.daemon = True
        _pending_retries[:] = [*(r for r in _pending_retries if r.is_alive()), retry]
        retry.start()
        return
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


# A missing module of an optional part -> the command that installs it (run from the clone's root).
INSTALL_HINTS = {
    "torch": "bash scripts/install.sh (or pip install torch into this Python)",
    "accelerate": "bash scripts/install.sh --train (or pip install -r requirements-train.txt)",
    "peft": "bash scripts/install.sh --train (or pip install -r requirements-train.txt)",
    "tensorboard": "bash scripts/install.sh --train (or pip install -r requirements-train.txt)",
    "scenedetect": "bash scripts/install.sh --train (or pip install -r requirements-train.txt)",
    "deepspeed": 'bash scripts/install.sh --train (or DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed>=0.15")',
    "onnxruntime": "pip install onnxruntime (the insightface detector's runtime)",
}


def _exit_now(message: str, code: int) -> None:
    """Say ``message`` and end the process with ``code`` without the interpreter's shutdown. The interrupt has
    unwound the run (partial outputs removed, worker pools and threads stopped); what is left are C libraries'
    threads (FFmpeg's decoders, the detector's runtime), and tearing the interpreter down under them crashed now and
    then (SIGSEGV after "Interrupted.", about one run in four on a loaded 2-core box)."""
    print(message, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_with_status(run: Callable[[], int | None], debug: bool = False) -> None:
    """Call ``run()`` and exit: its code (0 if None); 1 on a `LatentSyncError` or a missing dependency of
    `INSTALL_HINTS` (one line, or the traceback with ``debug``); 130 on Ctrl-C; 143 on SIGTERM. Shared by
    ``python -m latentsync`` and ``python -m train``; put the imports and the argument parsing inside ``run`` so an
    interrupt during start-up is answered the same way (one that arrives during an import waits for its end,
    `_interrupt`)."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = _run_answering_errors(run, debug)
    finally:
        # The run is over: an interrupt still waiting for an import to end must not reach the interpreter's shutdown.
        for retry in _pending_retries:
            retry.cancel()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    raise SystemExit(code or 0)


def _run_answering_errors(run: Callable[[], int | None], debug: bool) -> int | None:
    try:
        return run()
    except KeyboardInterrupt:
        _exit_now("Interrupted.", 130)
    except Terminated:
        _exit_now("Terminated.", 143)
    except LatentSyncError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except ModuleNotFoundError as error:
        module = (error.name or "").partition(".")[0]
        if debug or module not in INSTALL_HINTS:
            raise
        print(f"error: the Python package {module!r} is not installed; run: {INSTALL_HINTS[module]}", file=sys.stderr)
        raise SystemExit(1) from None
