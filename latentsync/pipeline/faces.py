"""The aligned face of each frame: detect, track and align (`FacePreparer`), replay known faces, and face pixels."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from ..conventions import MODEL_FPS, signed_pixels
from ..errors import NoFaceError
from ..face.align import FaceAligner
from ..face.detectors import FaceDetector
from ..face.tracking import FaceTracker, OneEuroFilter
from .models import DEFAULT_RESOLUTION
from .threads import one_torch_thread
from .timing import StageClock

logger = logging.getLogger(__name__)


@dataclass
class PreparedFace:
    """The aligned face of one frame.

    Attributes:
        affine: ``(2, 3)`` float64 frame → crop matrix (`FaceAligner.estimate_affine`).
        face: ``(R, R, 3)`` uint8 RGB aligned face.
    """

    affine: np.ndarray
    face: np.ndarray


class FacePreparer:
    """Detects, tracks and aligns the face of each frame of one clip, fed in order.

    Args:
        detector: any `FaceDetector`.
        resolution: side of the aligned face (256 or 512).
        face_index: ``"largest"`` or the k-th largest face, followed from its first appearance (`FaceTracker`).
        fps: frame rate of the frames fed, which sets the time step of the tracker's point smoothing.
        landmark_filter: smooth the tracked points with a `OneEuroFilter` (``False``: the detector's raw points,
            as the official pipeline; the aligner's affine smoothing stays on either way).
    """

    def __init__(
        self,
        detector: FaceDetector,
        resolution: int = DEFAULT_RESOLUTION,
        face_index="largest",
        fps: Fraction | float = MODEL_FPS,
        landmark_filter: bool = True,
    ):
        smoothing = OneEuroFilter(fps=float(fps)) if landmark_filter else False
        self.tracker = FaceTracker(detector, face_index=face_index, smoothing=smoothing)
        self.aligner = FaceAligner(resolution, smooth=True)

    def prepare(
        self, frames: Iterable[np.ndarray], clock: StageClock | None = None
    ) -> Iterator[tuple[np.ndarray, PreparedFace | None]]:
        """Yield ``(frame, face)`` for every ``(h, w, 3)`` uint8 RGB frame, in order; ``face`` is ``None`` where the
        tracker has no face. A few frames may be held back while the tracker bridges a short miss."""
        clock = clock or StageClock()
        for frame, points in clock.iterate(self.tracker.track(frames), "detect"):
            face = None
            if points is not None:
                with clock.section("align"), one_torch_thread():
                    try:
                        face = self.align(frame, self.aligner.estimate_affine(points))
                    except NoFaceError as error:  # degenerate points (all three coincide)
                        logger.debug("unusable face points: %s", error)
            if face is None:
                self.aligner.reset()  # the smoothing state does not carry across a gap
            yield frame, face

    def align(self, frame: np.ndarray, affine: np.ndarray) -> PreparedFace:
        """The face of ``frame`` under a known ``affine`` (a frame seen before, e.g. when a clip is replayed)."""
        return PreparedFace(affine, self.aligner.align(frame, affine))


def face_pixels(faces) -> torch.Tensor:
    """``(f, R, R, 3)`` uint8 faces → ``(f, 3, R, R)`` float32 pixels ``(x / 255 - 0.5) / 0.5`` in ``[-1, 1]``,
    contiguous as in the official code: the VAE's CPU convolutions round differently on a channels-last-strided
    input (the posterior moved by ~3e-4)."""
    return signed_pixels(torch.as_tensor(np.asarray(faces)).permute(0, 3, 1, 2).contiguous())



def replay_faces(
    preparer: FacePreparer, frames: Iterable[tuple[int, np.ndarray]], clock: StageClock
) -> Iterator[tuple[np.ndarray, PreparedFace | None]]:
    """``(frame, face)`` per ``(source_index, frame)``: a source frame seen for the first time goes through
    ``preparer`` (first visits must come in order 0, 1, 2, ...); a replayed one reuses its affine matrix."""
    frames = iter(frames)
    affines: list[np.ndarray | None] = []  # per source frame
    replayed: list[tuple[int, np.ndarray]] = []  # the frame that ended a run of first visits
    fed = 0

    def first_visits() -> Iterator[np.ndarray]:
        nonlocal fed
        for source_index, frame in frames:
            if source_index < fed:
                replayed.append((source_index, frame))
                return
            if source_index != fed:
                raise ValueError(f"source frame {source_index} came before source frame {fed}")
            fed += 1
            yield frame

    while True:
        for frame, face in preparer.prepare(first_visits(), clock):
            affines.append(None if face is None else face.affine)
            yield frame, face
        if not replayed:
            return
        source_index, frame = replayed.pop()
        affine = affines[source_index]
        if affine is None:
            yield frame, None
        else:
            with clock.section("align"), one_torch_thread():
                face = preparer.align(frame, affine)
            yield frame, face
