"""Writing a file so that no reader ever sees half of it and no planted link is followed.

Every writer of the library (and of ``train``) writes to a temporary file beside the target and renames it over
the target when the file is complete (`atomic_write`). The temporary file is created exclusively
(``O_CREAT | O_EXCL``) under a random name: a file or symbolic link someone placed at that name makes the
creation fail instead of being opened, so the write can never land elsewhere through a link.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .errors import MediaError

# Random bytes in a temporary file's name (written as twice as many hex digits).
TOKEN_BYTES = 4


def create_temporary(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """Create a new, empty file beside ``path`` named ``.<stem>.<random>.<tag><suffix>`` and return its path.

    It is in the same folder as ``path`` (so renaming it onto ``path`` is atomic) and keeps the suffix (so writers
    that pick the format by suffix, such as video muxers, pick the target's). Created like any new file (the umask
    applies).

    Raises:
        OSError: the folder is missing or not writable, or the name exists (``FileExistsError``).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(TOKEN_BYTES)}.{tag}{path.suffix}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temporary


def leftover_temporaries(path: str | os.PathLike, tag: str = "tmp") -> list[Path]:
    """The temporary files of ``path`` (`create_temporary` with ``tag``) still on disk: what writers that were
    killed before they finished left behind (or what a writer is writing right now)."""
    path = Path(path)
    token = "[0-9a-f]" * (2 * TOKEN_BYTES)
    return sorted(path.parent.glob(f".{glob.escape(path.stem)}.{token}.{tag}{glob.escape(path.suffix)}"))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary file (`create_temporary`) to write ``path``'s content to; when the block ends
    normally it replaces ``path``, otherwise it is removed and ``path`` is left as it was.

    Example::

        with atomic_write(path) as temporary:
            temporary.write_text(text)
    """
    path = Path(path)
    temporary = create_temporary(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an ``(h, w, 3)`` uint8 RGB image as PNG (temporary file, then rename)."""
    path = Path(path)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MediaError(f"save_png needs an (h, w, 3) uint8 RGB image, got {image.shape} {image.dtype}.")
    check_writable(path)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise MediaError(f"OpenCV could not encode the {image.shape} image as PNG.")
    try:
        with atomic_write(path) as temporary:
            temporary.write_bytes(encoded.tobytes())
    except OSError as error:
        raise MediaError(f"Cannot write {path} ({error}).") from error
    return path


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` and its missing parents for a run's output; when the block fails (an error, a cancel, an
    interrupt), remove again the folders it created, deepest first, as long as they are empty."""
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in created:
            try:
                path.rmdir()
            except OSError:  # not empty (something else wrote there meanwhile) or already gone
                break
        raise


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a `Path`, once it is known that a file can be written there: its folder exists and is writable
    and ``path`` is not a folder. For outputs written at the end of a long job, checked before the job starts.

    Raises:
        MediaError: saying which and what to do.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise MediaError(f"Output folder {path.parent} does not exist; create it first.")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise MediaError(f"The output folder {path.parent} is not writable; choose another output path.")
    if path.is_dir():
        raise MediaError(f"The output {path} is a folder; give a file name such as {path / path.name}.")
    return path


def save_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (values JSON cannot hold as their ``str``), temporary file then rename."""
    path = check_writable(path)
    try:
        with atomic_write(path) as temporary:
            temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError as error:
        raise MediaError(f"Cannot write {path} ({error}).") from error
    return path
