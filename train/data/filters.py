"""Measures of an aligned training clip that the data pipeline filters on; none needs downloaded weights.

* `face_quality`: sharpness (variance of the Laplacian), brightness (mean luma) of the aligned face;
* `mean_flow`: how much the face moves (OpenCV Farneback optical flow);
* `text_fraction`: how much of the frame text covers (PaddleOCR's models as the ``rapidocr_onnxruntime`` package
  ships them; the only measure that needs an optional package).

Each takes the clip's ``(h, w, 3)`` uint8 RGB frames in order (any iterable) and reads each frame once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# Quality: every QUALITY_FRAME_STEP-th frame is measured.
QUALITY_FRAME_STEP = 5
# Motion: flow between frames this far apart, on frames shrunk to this size.
MOTION_FRAME_STEP = 5
MOTION_SIZE = 128
# Text: frames read per clip.
TEXT_SAMPLES = 3


@dataclass
class FaceQuality:
    """Median over the measured frames of the aligned face's numbers.

    Attributes:
        sharpness: variance of the Laplacian of the grey face (higher = sharper; blur and heavy compression lower it).
        brightness: mean luma, 0-255.
    """

    sharpness: float
    brightness: float


def face_quality(frames: Iterable[np.ndarray]) -> FaceQuality:
    """Sharpness and brightness of an aligned face clip (every `QUALITY_FRAME_STEP`-th frame)."""
    import cv2

    sharpness, brightness = [], []
    for index, frame in enumerate(frames):
        if index % QUALITY_FRAME_STEP:
            continue
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        sharpness.append(float(cv2.Laplacian(gray, cv2.CV_64F).var()))
        brightness.append(float(gray.mean()))
    if not sharpness:
        return FaceQuality(0.0, 0.0)
    return FaceQuality(float(np.median(sharpness)), float(np.median(brightness)))


def mean_flow(frames: Iterable[np.ndarray]) -> float:
    """Mean optical-flow magnitude (pixels at 128 x 128) between frames ``MOTION_FRAME_STEP`` apart."""
    import cv2

    previous, magnitudes = None, []
    for index, frame in enumerate(frames):
        if index % MOTION_FRAME_STEP:
            continue
        gray = cv2.cvtColor(cv2.resize(frame, (MOTION_SIZE, MOTION_SIZE)), cv2.COLOR_RGB2GRAY)
        if previous is not None:
            flow = cv2.calcOpticalFlowFarneback(previous, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            magnitudes.append(float(np.linalg.norm(flow, axis=2).mean()))
        previous = gray
    return float(np.mean(magnitudes)) if magnitudes else 0.0


def text_reader_class():
    """RapidOCR: PaddleOCR's PP-OCRv4 text detector and recogniser on ONNX Runtime, with the models the
    ``rapidocr_onnxruntime`` package ships (nothing is downloaded).

    Raises:
        ConfigError: the package (or one of its dependencies) is not installed.
    """
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as error:
        from latentsync.errors import ConfigError

        raise ConfigError(
            f"The text filter needs the rapidocr_onnxruntime package ({error}): pip install onnxruntime pyclipper "
            'shapely six pillow && pip install --no-deps "rapidocr_onnxruntime>=1.3" (--no-deps keeps it from '
            "installing opencv-python beside opencv-python-headless)."
        ) from None
    return RapidOCR


def load_text_reader():
    """A RapidOCR reader (`text_reader_class`) on one CPU thread."""
    return text_reader_class()(intra_op_num_threads=1)


def text_fraction(frames: Iterable[np.ndarray], num_frames: int, reader) -> float:
    """Share of the frame covered by text, the largest over `TEXT_SAMPLES` frames spread over the clip.

    Text is what ``reader`` (`load_text_reader`) reads with a score of at least 0.5: its text boxes are detected by
    PaddleOCR's DB model and kept only when the recogniser reads them, which keeps out the mouths and teeth the
    detector alone takes for text.
    """
    import cv2

    picks = set(np.linspace(0, max(num_frames - 1, 0), TEXT_SAMPLES).round().astype(int).tolist())
    worst = 0.0
    for index, frame in enumerate(frames):
        if index not in picks:
            continue
        lines, _ = reader(np.ascontiguousarray(frame[..., ::-1]))  # the reader takes BGR
        mask = np.zeros(frame.shape[:2], dtype=np.uint8)
        for box, _, _ in lines or []:
            cv2.fillPoly(mask, [np.round(np.asarray(box)).astype(np.int32)], 1)
        worst = max(worst, float(mask.mean()))
    return worst
