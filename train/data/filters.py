"""Measures of an aligned training clip that the data pipeline filters on; none needs downloaded weights.

* `face_quality`: sharpness (variance of the Laplacian), brightness (mean luma) of the aligned face;
* `mean_flow`: how much the face moves (OpenCV Farneback optical flow);
* `text_fraction`: how much of the frame burnt-in text covers (a heuristic, see its docstring).

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
# Text: frames sampled per clip.
TEXT_SAMPLES = 5


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


def text_fraction(frames: Iterable[np.ndarray], num_frames: int) -> float:
    """Share of the frame covered by text-like strokes, the largest over `TEXT_SAMPLES` frames spread over the clip.

    A heuristic, not OCR: small, high-contrast components grouped into horizontal lines that stay in place while
    the face moves (burnt-in captions, logos with lettering). It misses text that moves and can take a still,
    striped background for text.
    """
    import cv2

    picks = set(np.linspace(0, max(num_frames - 1, 0), TEXT_SAMPLES).round().astype(int).tolist())
    grays = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for index, frame in enumerate(frames) if index in picks]
    if len(grays) < 2:
        return 0.0
    # burnt-in text stays where it is while the face moves: keep pixels that vary little over the samples
    still = np.std(np.stack(grays).astype(np.float32), axis=0) < 6
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    worst = 0.0
    for gray in grays:
        gradient = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, kernel)
        _, strokes = cv2.threshold(gradient, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        lines = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (9, 1)))
        count, _, stats, _ = cv2.connectedComponentsWithStats(lines)
        mask = np.zeros_like(gray, dtype=bool)
        for x, y, w, h, area in stats[1:count]:
            if 6 <= h <= gray.shape[0] // 10 and w >= 3 * h and area >= 0.4 * w * h:
                mask[y : y + h, x : x + w] = True
        worst = max(worst, float((mask & still).mean()))
    return worst
