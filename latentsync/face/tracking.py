"""Following one face through a video: pick it, smooth its three alignment points, bridge short misses.

`FaceTracker.track` consumes frames in order and yields ``(frame, points3 | None)`` for each, in order. It holds
back at most ``max_gap_frames`` frames while the face is missing, so that a gap that closes can be filled by
interpolation; memory stays bounded whatever the clip length.

Smoothing here works on the raw detected points; the aligner's own smoothing of its affine (the reference's
``p_bias`` recursion) comes on top of it and is configured there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError
from .detectors.base import Face, FaceDetector
from .search import box_iou


@dataclass
class OneEuroFilter:
    """One-Euro low-pass filter (Casiez et al., CHI 2012) over the three points, in frame time.

    The cut-off frequency grows with speed: ``cutoff = min_cutoff + beta * speed``, so a still face is smoothed
    hard while a moving one is followed with little lag. Speed is measured in face widths per second (the distance
    between the two eyebrow points), which makes the settings independent of the resolution.

    Args:
        min_cutoff: cut-off (Hz) of a still face; lower = smoother.
        beta: cut-off added per unit of speed (face widths per second); higher = less lag when moving.
        derivative_cutoff: cut-off (Hz) of the low-pass on the speed estimate.
        fps: frame rate of the clip, which sets the time step between frames.
    """

    min_cutoff: float = 2.0
    beta: float = 2.0
    derivative_cutoff: float = 1.0
    fps: float = 25.0

    def __post_init__(self):
        if self.min_cutoff <= 0 or self.beta < 0 or self.derivative_cutoff <= 0 or self.fps <= 0:
            raise ConfigError(f"One-Euro settings must be positive (beta may be 0), got {self}")
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next value passes through unchanged."""
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._frame: int | None = None

    def __call__(self, points: np.ndarray, frame_index: int) -> np.ndarray:
        """Smoothed ``(3, 2)`` points for frame ``frame_index`` (frames must come in increasing order)."""
        if self._value is None:
            self._value, self._speed, self._frame = points.copy(), np.zeros_like(points), frame_index
            return points.copy()
        dt = (frame_index - self._frame) / self.fps
        scale = max(float(np.linalg.norm(points[1] - points[0])), 1.0)
        speed = (points - self._value) / (dt * scale)
        self._speed = self._speed + _smoothing_factor(self.derivative_cutoff, dt) * (speed - self._speed)
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed)
        self._value = self._value + _smoothing_factor(cutoff, dt) * (points - self._value)
        self._frame = frame_index
        return self._value.copy()


def _smoothing_factor(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
    """Weight of the new sample in an exponential low-pass of cut-off ``cutoff`` Hz sampled every ``dt`` s."""
    time_constant = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + time_constant / dt)


class FaceTracker:
    """Follows one face through a clip and yields its smoothed three points per frame.

    Args:
        detector: any `FaceDetector`.
        face_index: ``"largest"`` takes the largest face of every frame (the reference's rule); an integer ``k``
            takes the k-th largest face when the face is first seen and then follows that face by box overlap
            (IoU), so it keeps its identity when sizes change.
        max_gap_frames: a face missing for at most this many frames is bridged: linearly interpolated between
            the frames around the gap, or held at its first / last position at the start / end of the clip.
            Longer gaps yield ``None`` for every missing frame (and an integer ``face_index`` picks its face
            afresh afterwards).
        smoothing: the filter applied to detected points: ``True`` is `OneEuroFilter()` (tuned on 25 fps talking
            heads; pass ``OneEuroFilter(fps=...)`` for another frame rate), ``False`` yields the detector's points
            as they are.
        detect_size: if set, detection runs on a copy of each frame whose longer side is at most this many
            pixels (faster, less precise); points are mapped back to the full frame.
        min_iou: least overlap with the previous box for a face to count as the same one (integer ``face_index``).
    """

    def __init__(
        self,
        detector: FaceDetector,
        face_index: int | Literal["largest"] = "largest",
        max_gap_frames: int = 5,
        smoothing: OneEuroFilter | bool = True,
        detect_size: int | None = None,
        min_iou: float = 0.3,
    ):
        if face_index != "largest" and not (isinstance(face_index, int) and face_index >= 0):
            raise ConfigError(f"face_index must be 'largest' or an integer >= 0, got {face_index!r}")
        if max_gap_frames < 0:
            raise ConfigError(f"max_gap_frames must be >= 0, got {max_gap_frames}")
        if detect_size is not None and detect_size < 64:
            raise ConfigError(f"detect_size must be at least 64 pixels (or None), got {detect_size}")
        self.detector = detector
        self.face_index = face_index
        self.max_gap_frames = max_gap_frames
        self.smoothing = OneEuroFilter() if smoothing is True else smoothing or None
        self.detect_size = detect_size
        self.min_iou = min_iou
        self._box: np.ndarray | None = None  # box of the followed face at its last detection

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(frame, points3)`` for every frame, in order.

        Args:
            frames: ``(h, w, 3)`` uint8 RGB frames of one clip, in order.

        Yields:
            the frame and its ``(3, 2)`` float64 points (image-left eyebrow, image-right eyebrow, nose), or
            ``None`` where the face is missing for longer than ``max_gap_frames``. Up to ``max_gap_frames`` frames
            are held back while the face is missing (or not yet found).
        """
        self._box = None
        if self.smoothing is not None:
            self.smoothing.reset()
        last: np.ndarray | None = None  # points of the last frame with a face
        waiting: list[np.ndarray] = []  # frames since then (or since the start) without one
        lost = False  # the face has been missing for longer than max_gap_frames
        for frame_index, frame in enumerate(frames):
            face = self._follow(self.detector.detect(frame, self.detect_size))
            if face is None:
                if lost:
                    yield frame, None
                    continue
                waiting.append(frame)
                if len(waiting) > self.max_gap_frames:
                    yield from ((missed, None) for missed in waiting)
                    waiting, last, lost = [], None, True
                    self._lose()
                continue
            points = face.points3 if self.smoothing is None else self.smoothing(face.points3, frame_index)
            start = points if last is None else last  # at the start of the clip: hold the first points back
            for step, missed in enumerate(waiting, start=1):
                yield missed, start + (points - start) * step / (len(waiting) + 1)
            yield frame, points
            waiting, last, lost = [], points, False
        yield from ((missed, None if last is None else last.copy()) for missed in waiting)

    def _follow(self, faces: list[Face]) -> Face | None:
        """The face to follow among ``faces`` (largest first), or ``None``."""
        if self.face_index == "largest":
            return faces[0] if faces else None
        if self._box is None:
            face = faces[self.face_index] if len(faces) > self.face_index else None
        else:
            overlaps = [box_iou(self._box, face.box) for face in faces]
            best = int(np.argmax(overlaps)) if overlaps else -1
            face = faces[best] if best >= 0 and overlaps[best] >= self.min_iou else None
        if face is not None:
            self._box = face.box
        return face

    def _lose(self) -> None:
        """The face has been missing too long: forget its identity and its smoothing state."""
        self._box = None
        if self.smoothing is not None:
            self.smoothing.reset()
