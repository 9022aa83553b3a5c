"""Face detectors: find faces and the three alignment points in RGB frames.

``create_face_detector("mediapipe")`` is the offline default (MediaPipe's BlazeFace + 468-point face mesh on
LiteRT, its model files packaged with the library, nothing downloaded). ``create_face_detector(
"insightface", model_dir=...)`` runs the reference's InsightFace ``buffalo_l`` files on ONNX Runtime.
"""

from __future__ import annotations

import inspect

from ...errors import ConfigError
from .base import Face, FaceDetector, FaceFilter, MissingDependencyError
from .facemesh import MediaPipeFaceDetector
from .insightface import InsightFaceDetector

DEFAULT_FACE_DETECTOR = MediaPipeFaceDetector.name
FACE_DETECTORS: dict[str, type[FaceDetector]] = {
    detector.name: detector for detector in (MediaPipeFaceDetector, InsightFaceDetector)
}


def create_face_detector(name: str = DEFAULT_FACE_DETECTOR, **options) -> FaceDetector:
    """Build the detector called ``name`` (see `FACE_DETECTORS`) with its constructor's keyword ``options``.

    Raises:
        ConfigError: unknown name or option.
        MissingDependencyError: the detector's runtime package is not installed.
        CheckpointError: its model files are missing or unreadable.
    """
    if name not in FACE_DETECTORS:
        raise ConfigError(f"unknown face detector {name!r}; choose one of {sorted(FACE_DETECTORS)}")
    detector_class = FACE_DETECTORS[name]
    try:
        inspect.signature(detector_class).bind(**options)
    except TypeError as error:
        raise ConfigError(f"bad options for the {name!r} face detector: {error}") from error
    return detector_class(**options)


__all__ = [
    "DEFAULT_FACE_DETECTOR",
    "FACE_DETECTORS",
    "Face",
    "FaceDetector",
    "FaceFilter",
    "InsightFaceDetector",
    "MediaPipeFaceDetector",
    "MissingDependencyError",
    "create_face_detector",
]
