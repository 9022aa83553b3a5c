"""A face detector that runs another on shrunk frames (the ``detect_size`` speed switch)."""

from __future__ import annotations

from .base import Face, FaceDetector


class ResizedDetection(FaceDetector):
    """Runs ``detector`` on frames shrunk so their longer side is at most ``detect_size`` pixels (points are mapped
    back to the full frame by `FaceDetector.detect`), whatever size the caller asks for."""

    def __init__(self, detector: FaceDetector, detect_size: int):
        super().__init__(detector.face_filter)
        self.detector = detector
        self.detect_size = detect_size
        self.name = f"{detector.name}@{detect_size}"

    def detect(self, image, detect_size: int | None = None) -> list[Face]:
        return self.detector.detect(image, self.detect_size)

    def _find_faces(self, image) -> list[Face]:
        return self.detector.detect(image)


def resized_detection(detector: FaceDetector, detect_size: int | None) -> FaceDetector:
    """`ResizedDetection` of ``detector`` when ``detect_size`` is set (the ``detect_size`` speed switch), else
    ``detector``."""
    if detect_size is None:
        return detector
    return ResizedDetection(detector, detect_size)
