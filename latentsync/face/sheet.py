"""Pictures of face tracks: frames with numbered boxes, and a contact sheet of a few frames of a clip."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX
# One colour per track id (cycled), RGB.
TRACK_COLOURS = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def draw_tracks(image: np.ndarray, boxes: Sequence[tuple[int, np.ndarray]], label: str | None = None) -> np.ndarray:
    """A copy of ``image`` ``(h, w, 3)`` uint8 RGB with each ``(track_id, box)`` drawn as a box numbered with its id,
    and ``label`` (e.g. the frame number) in the top-left corner."""
    image = np.ascontiguousarray(image).copy()
    thickness = max(1, round(min(image.shape[:2]) / 240))
    scale = max(0.4, min(image.shape[:2]) / 480)
    for track_id, box in boxes:
        colour = TRACK_COLOURS[track_id % len(TRACK_COLOURS)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        text = str(track_id)
        (width, height), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
        top = max(y1 - height - baseline - 2, 0)
        cv2.rectangle(image, (x1, top), (x1 + width + 4, top + height + baseline + 2), colour, -1)
        cv2.putText(image, text, (x1 + 2, top + height + 1), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    if label:
        (width, height), baseline = cv2.getTextSize(label, _FONT, scale, thickness)
        cv2.rectangle(image, (0, 0), (width + 8, height + baseline + 6), (0, 0, 0), -1)
        cv2.putText(image, label, (4, height + 3), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def thumbnail(image: np.ndarray, longer_side: int) -> tuple[np.ndarray, float]:
    """``image`` shrunk so its longer side is at most ``longer_side`` pixels, and the scale applied."""
    scale = min(1.0, longer_side / max(image.shape[:2]))
    if scale == 1.0:
        return image.copy(), 1.0
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def contact_sheet(images: Sequence[np.ndarray], columns: int = 4, gap: int = 4) -> np.ndarray:
    """``images`` (same size) on a grid of ``columns``, ``gap`` black pixels apart: ``(H, W, 3)`` uint8."""
    height, width = images[0].shape[:2]
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = np.zeros((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        sheet[top : top + height, left : left + width] = image
    return sheet
