"""Whisper feature rows -> per-video-frame audio chunks (the reference's ``feature2chunks`` and friends).

Features come at 50 rows per second (`WhisperFeatureExtractor.encode`, shape ``(n, L, d)``). Video frame ``i`` at
``fps`` frames per second is centred on row ``c = floor(i * 50 / fps)`` and gets the 10 rows ``c - 4 ... c + 5``,
each clamped into ``[0, n - 1]``; its chunk is those rows' ``L`` hidden states flattened to ``(10 * L, d)``
(``(50, d)`` for whisper tiny), row ``L * j + l`` holding hidden state ``l`` of the ``j``-th selected row.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from ..errors import LatentSyncError
from ..media.timeline import parse_fps
from .whisper import FEATURES_PER_SECOND

# feature rows around a frame's centre row (the reference's audio_feat_length [2, 2], two rows per 25 fps frame)
ROWS_BEFORE_CENTRE = 4
ROWS_PER_CHUNK = 10
def centre_rows(frame_indices: np.ndarray, fps: float | Fraction = 25) -> np.ndarray:
    """``floor(i * 50 / fps)`` for each video frame index ``i``, in exact arithmetic."""
    fps = parse_fps(fps)
    frame_indices = np.asarray(frame_indices, dtype=np.int64)
    return (frame_indices * FEATURES_PER_SECOND * fps.denominator) // fps.numerator


def default_chunk_count(num_features: int, fps: float | Fraction = 25) -> int:
    """How many chunks the reference makes for ``num_features`` rows: one per frame ``i = 0, 1, ...`` up to and
    including the first frame whose centre row exceeds ``num_features`` (``n // 2 + 2`` at 25 fps).

    The pipeline makes one output video frame per chunk, so this is also the output length.
    """
    fps = parse_fps(fps)
    # the first i with floor(i * 50 / fps) >= n + 1 is ceil((n + 1) * fps / 50)
    first_past_end = math.ceil((num_features + 1) * fps / FEATURES_PER_SECOND)
    return first_past_end + 1


def chunk_feature_indices(
    num_features: int, num_frames: int, fps: float | Fraction = 25, first_frame: int = 0
) -> np.ndarray:
    """Feature rows used by each video frame's chunk.

    Args:
        num_features: ``n``, rows of the feature array.
        num_frames: how many consecutive frames.
        fps: video frame rate (a `Fraction` for NTSC rates, or a number).
        first_frame: index of the first of those frames.

    Returns:
        int64 array ``(num_frames, 10)``; row ``f`` lists the rows of frame ``first_frame + f``.
    """
    if num_features < 1:
        raise LatentSyncError("there are no audio features (the audio is shorter than 20 ms)")
    centres = centre_rows(np.arange(first_frame, first_frame + num_frames), fps)
    offsets = np.arange(ROWS_PER_CHUNK) - ROWS_BEFORE_CENTRE
    return np.clip(centres[:, None] + offsets[None, :], 0, num_features - 1)


def _gather_chunks(audio_feat: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """``(n, L, d)`` features and ``(f, 10)`` row indices -> ``(f, 10 * L, d)`` chunks."""
    if audio_feat.ndim != 3:
        raise LatentSyncError(f"audio features must have shape (n, L, d), got {tuple(audio_feat.shape)}")
    rows = audio_feat[torch.from_numpy(indices).to(audio_feat.device)]  # (f, 10, L, d)
    return rows.flatten(1, 2)


def feature_chunks(
    audio_feat: torch.Tensor, fps: float | Fraction = 25, num_frames: int | None = None
) -> torch.Tensor:
    """Audio chunks of video frames ``0 .. count - 1`` (the reference's ``feature2chunks``, stacked).

    Args:
        audio_feat: ``(n, L, d)`` Whisper features.
        fps: video frame rate.
        num_frames: ``count``; default `default_chunk_count` (``n // 2 + 2`` at 25 fps, as the reference).

    Returns:
        ``(count, 10 * L, d)`` on the features' device and dtype.
    """
    count = default_chunk_count(len(audio_feat), fps) if num_frames is None else num_frames
    return _gather_chunks(audio_feat, chunk_feature_indices(len(audio_feat), count, fps))


def feature_window(
    audio_feat: torch.Tensor, start: int, num_frames: int = 16, fps: float | Fraction = 25
) -> torch.Tensor:
    """Chunks of frames ``start .. start + num_frames - 1`` straight from the features (the reference's
    ``crop_overlap_audio_window``); frames past the end of the audio get rows clamped to the last one.

    Unlike `audio_window` it needs no precomputed chunks, so memory stays bounded for long audio.

    Returns:
        ``(num_frames, 10 * L, d)``.
    """
    return _gather_chunks(audio_feat, chunk_feature_indices(len(audio_feat), num_frames, fps, first_frame=start))


def audio_window(chunks: torch.Tensor, start: int, num_frames: int = 16) -> torch.Tensor:
    """The chunks of one inference window: ``chunks[start : start + num_frames]`` (fewer in the last window).

    Within the chunks this equals ``crop_overlap_audio_window(audio_feat, start)``; see `feature_window` for the
    same without precomputed chunks.

    Args:
        chunks: ``(count, 10 * L, d)`` from `feature_chunks`.
        start: first frame of the window, ``0 <= start < count``.
        num_frames: window length.

    Returns:
        ``(f, 10 * L, d)`` with ``f = min(num_frames, count - start)``.
    """
    if not 0 <= start < len(chunks):
        raise LatentSyncError(f"window start {start} is outside the {len(chunks)} audio chunks")
    return chunks[start : start + num_frames]
