"""Cutting a clip into training segments: scenes, face runs inside them, and balanced pieces of each run.

Pure frame arithmetic (frames at 25 fps, ranges are ``[start, stop)``), used by the ``segments`` step of
`train.data.pipeline`. Nothing here drops a stretch of video that could make a segment: a scene or a face run is
dropped only when it is shorter than the shortest segment, and a long one is cut into pieces of equal length
(to a frame) rather than into maximum-length pieces plus a short remainder.
"""

from __future__ import annotations

import numpy as np


def face_runs(has_face: np.ndarray, start: int, stop: int) -> list[tuple[int, int]]:
    """The maximal ranges of consecutive frames with a face inside ``[start, stop)``.

    Args:
        has_face: ``(num_frames,)`` bool, True where the tracker gave the frame a face.
    """
    inside = np.concatenate([[False], has_face[start:stop].astype(bool), [False]])
    edges = np.flatnonzero(np.diff(inside.astype(np.int8)))
    return [(start + int(first), start + int(last)) for first, last in zip(edges[::2], edges[1::2])]


def balanced_pieces(start: int, stop: int, min_frames: int, max_frames: int) -> list[tuple[int, int]]:
    """Cut ``[start, stop)`` into consecutive pieces of ``min_frames .. max_frames`` frames, as equal as possible.

    The fewest pieces that respect ``max_frames`` are taken (lengths differ by at most one frame) when they are all
    at least ``min_frames`` long; that holds whenever ``min_frames <= max_frames / 2``. Otherwise (e.g. 11 s with
    segments of 8-10 s) as many ``min_frames``-or-longer pieces as fit are cut from the start, each at most
    ``max_frames``, and the rest is left over. A range shorter than ``min_frames`` gives no piece.
    """
    length = stop - start
    if length < min_frames:
        return []
    count = -(-length // max_frames)
    if length // count < min_frames:
        count = length // min_frames
    size, extra = min(length // count, max_frames), 0
    if size * count < length and size < max_frames:
        extra = min(length - size * count, count)  # the first `extra` pieces get one frame more
    pieces, first = [], start
    for index in range(count):
        last = first + size + (index < extra)
        pieces.append((first, last))
        first = last
    return pieces
