"""The offset curve of a `SyncScore` as an image (`plot_offsets`), drawn with OpenCV (no matplotlib)."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ConfigError
from .score import SyncScore

_WHITE, _BLACK, _GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
_CURVE, _BEST = (31, 119, 180), (214, 39, 40)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _dashed_line(image: np.ndarray, start: tuple[int, int], end: tuple[int, int], color, dash: int = 6) -> None:
    length = max(abs(end[0] - start[0]), abs(end[1] - start[1]))
    for first in range(0, length, 2 * dash):
        a, b = first / length, min(first + dash, length) / length
        p = (round(start[0] + a * (end[0] - start[0])), round(start[1] + a * (end[1] - start[1])))
        q = (round(start[0] + b * (end[0] - start[0])), round(start[1] + b * (end[1] - start[1])))
        cv2.line(image, p, q, color, 1, cv2.LINE_AA)


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, color, anchor: str = "left") -> None:
    """Text with its baseline at ``origin``; ``anchor`` ``left`` / ``centre`` / ``right`` places it horizontally."""
    (width, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
    shift = {"left": 0, "centre": width // 2, "right": width}[anchor]
    cv2.putText(image, text, (origin[0] - shift, origin[1]), _FONT, scale, color, 1, cv2.LINE_AA)


def plot_offsets(score: SyncScore, width: int = 640, height: int = 400) -> np.ndarray:
    """Mean distance against audio offset, drawn with OpenCV (no matplotlib).

    The curve with a dot per offset, the minimum marked in red (with a vertical line), a dashed line at offset 0
    and one at the median distance (confidence = median - minimum), and a title with the numbers.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    if width < 320 or height < 200:
        raise ConfigError(f"The plot needs at least 320x200 pixels, got {width}x{height}.")
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 70, width - 20, 50, height - 50

    # 1. scales: x over the offsets, y over the distances with a 10 % margin
    offsets, distances = score.offsets.astype(np.float64), score.mean_distances
    low, high = float(distances.min()), float(distances.max())
    margin = max((high - low) * 0.1, 1e-4)
    low, high = low - margin, high + margin
    span = max(offsets[-1] - offsets[0], 1.0)

    def to_pixel(offset: float, distance: float) -> tuple[int, int]:
        x = left + (offset - offsets[0]) / span * (right - left)
        y = bottom - (distance - low) / (high - low) * (bottom - top)
        return round(x), round(y)

    # 2. axes, ticks and labels
    cv2.rectangle(image, (left, top), (right, bottom), _BLACK, 1)
    tick_step = 5 if span > 10 else 1
    for offset in range(int(offsets[0]), int(offsets[-1]) + 1):
        if offset % tick_step == 0:
            x = to_pixel(offset, low)[0]
            cv2.line(image, (x, bottom), (x, bottom + 5), _BLACK, 1)
            _text(image, f"{offset:d}", (x, bottom + 20), 0.4, _BLACK, "centre")
    for fraction in np.linspace(0.0, 1.0, 5):
        distance = low + fraction * (high - low)
        y = to_pixel(offsets[0], distance)[1]
        cv2.line(image, (left - 5, y), (left, y), _BLACK, 1)
        _text(image, f"{distance:.3f}", (left - 8, y + 4), 0.4, _BLACK, "right")
    axis_label = "audio offset (frames at 25 fps; > 0: audio lags)"
    _text(image, axis_label, ((left + right) // 2, height - 10), 0.45, _BLACK, "centre")
    _text(image, "distance", (8, top - 10), 0.45, _BLACK)

    # 3. reference lines: offset 0, median distance
    if offsets[0] <= 0 <= offsets[-1]:
        _dashed_line(image, to_pixel(0, low), to_pixel(0, high), _GREY)
    median = float(np.median(distances))
    _dashed_line(image, to_pixel(offsets[0], median), to_pixel(offsets[-1], median), _GREY)
    _text(image, "median", (right - 4, to_pixel(offsets[-1], median)[1] - 4), 0.35, _GREY, "right")

    # 4. curve, points, best offset
    points = np.array([to_pixel(o, d) for o, d in zip(offsets, distances)], dtype=np.int32)
    cv2.polylines(image, [points], False, _CURVE, 2, cv2.LINE_AA)
    for point in points:
        cv2.circle(image, tuple(int(v) for v in point), 3, _CURVE, -1, cv2.LINE_AA)
    best = to_pixel(score.best_offset, score.min_distance)
    cv2.line(image, (best[0], top), (best[0], bottom), _BEST, 1, cv2.LINE_AA)
    cv2.circle(image, best, 6, _BEST, 2, cv2.LINE_AA)

    # 5. title
    title = (
        f"confidence {score.confidence:.3f}   min distance {score.min_distance:.3f}   "
        f"best offset {score.best_offset:+d}"
    )
    _text(image, title, (width // 2, 28), 0.5, _BLACK, "centre")
    return image
