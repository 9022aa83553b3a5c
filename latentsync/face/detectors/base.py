"""What every face detector returns, and the rules shared by all of them.

A detector takes one RGB frame and returns the faces in it, largest first. Each face carries the three
points the aligner needs (image-left eyebrow centre, image-right eyebrow centre, nose centre) in frame
pixels, where pixel ``(x, y)`` is the centre of ``image[y, x]``.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import cv2
import numpy as np

from ...errors import LatentSyncError, MediaError


class MissingDependencyError(LatentSyncError, ImportError):
    """An optional package that the chosen detector runs on is not installed."""


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: ``(4,)`` float64 ``x1, y1, x2, y2`` in frame pixels.
        score: detection confidence in ``[0, 1]``.
        points3: ``(3, 2)`` float64 ``(x, y)`` of the image-left eyebrow centre, the image-right eyebrow centre
            and the nose centre, in frame pixels (not rounded).
        landmarks: ``(n, 2)`` float64 landmarks of the model the points come from (468 for the MediaPipe face
            mesh, 106 for InsightFace 2d106), or ``None``.
    """

    box: np.ndarray
    score: float
    points3: np.ndarray
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> float:
        width, height = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(max(width, 0.0) * max(height, 0.0))


@dataclass(frozen=True)
class FaceFilter:
    """The reference's rules for a usable face (``latentsync/utils/face_detector.py``).

    The box is truncated to integers first, as the reference does, then a face is kept when its width is at
    least ``min_width``, its height at least ``min_height``, ``min_aspect <= width / height <= max_aspect``
    and its score at least ``min_score``.
    """

    min_width: int = 50
    min_height: int = 80
    min_aspect: float = 0.2
    max_aspect: float = 1.5
    min_score: float = 0.5

    @classmethod
    def for_min_height(cls, min_height: int) -> FaceFilter:
        """The reference's rules with faces from ``min_height`` pixels tall (width at the reference's 50 : 80)."""
        return cls(min_width=math.ceil(min_height * 50 / 80), min_height=min_height)

    def accepts(self, face: Face) -> bool:
        x1, y1, x2, y2 = face.box.astype(np.int64)
        width, height = int(x2 - x1), int(y2 - y1)
        if width < self.min_width or height < self.min_height:
            return False
        return self.min_aspect <= width / height <= self.max_aspect and face.score >= self.min_score


def check_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a C-contiguous ``(h, w, 3)`` uint8 array, or raise `MediaError` saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise MediaError(f"a face detector needs a numpy array of shape (h, w, 3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise MediaError(f"a face detector needs an RGB image of shape (h, w, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise MediaError(f"a face detector needs a uint8 image (values 0..255), got dtype {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise MediaError(f"the image is too small to hold a face: shape {image.shape}")
    return np.ascontiguousarray(image)


class FaceDetector(ABC):
    """Finds faces and their alignment points in RGB frames.

    Subclasses implement `_find_faces`; `detect` checks the input, applies the `FaceFilter` and sorts.
    """

    name: ClassVar[str]

    def __init__(self, face_filter: FaceFilter | None = None):
        self.face_filter = FaceFilter() if face_filter is None else face_filter

    def with_filter(self, face_filter: FaceFilter) -> FaceDetector:
        """This detector (sharing its models) with another `FaceFilter`."""
        detector = copy.copy(self)
        detector.face_filter = face_filter
        return detector

    def detect(self, image: np.ndarray, detect_size: int | None = None) -> list[Face]:
        """Faces in ``image``, largest box first.

        Args:
            image: ``(h, w, 3)`` uint8 RGB frame.
            detect_size: if set, the backend works on a copy whose longer side is at most this many pixels
                (faster, less precise); the results are mapped back to ``image``'s pixels before filtering.

        Returns:
            the faces that pass ``self.face_filter``, sorted by box area, largest first (empty when none).
        """
        image = check_image(image)
        height, width = image.shape[:2]
        if detect_size is None or max(height, width) <= detect_size:
            faces = self._find_faces(image)
        else:
            scale = detect_size / max(height, width)
            small = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
            factor = np.array([width / small.shape[1], height / small.shape[0]])
            faces = [_scale_face(face, factor) for face in self._find_faces(small)]
        faces = [face for face in faces if self.face_filter.accepts(face)]
        return sorted(faces, key=lambda face: face.area, reverse=True)

    @abstractmethod
    def _find_faces(self, image: np.ndarray) -> list[Face]:
        """All faces the backend finds in a checked ``(h, w, 3)`` uint8 RGB image, in any order."""


def _scale_face(face: Face, factor: np.ndarray) -> Face:
    """``face`` found on a resized image, in the pixels of an image ``factor`` = ``(sx, sy)`` times larger."""

    def scale(points: np.ndarray) -> np.ndarray:  # pixel centres of the small image -> of the large one
        return (points.reshape(-1, 2) + 0.5) * factor - 0.5

    landmarks = None if face.landmarks is None else scale(face.landmarks)
    return replace(face, box=scale(face.box).ravel(), points3=scale(face.points3), landmarks=landmarks)


def mean_points(landmarks: np.ndarray, groups: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """``(len(groups), 2)`` float64: the mean of ``landmarks[group]`` for each group of indices."""
    return np.stack([landmarks[list(group)].mean(axis=0) for group in groups]).astype(np.float64)
