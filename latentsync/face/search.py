"""Finding small faces: a detection pass on the whole frame, plus passes on tiles or zoomed regions, merged.

A detector sees a fixed-size copy of the frame (BlazeFace: 192x192), so a face must be about 8 px tall there to be
found: 80 px in a 1920-px frame, 40 px only in frames of at most 960 px. `FaceSearch` finds the small ones:

* `FaceSearch.find` runs the detector on the whole frame and, with ``tiles=True``, on overlapping square tiles of
  ``tile_size`` pixels (each is shrunk to the detector's input like the frame, so a face 40 px tall in a 640-px
  tile is as large for the detector as a 120-px face in a 1920-px frame);
* `FaceSearch.find_near` runs it on a square region around where a face was (a zoomed second pass that follows one
  small face without searching the whole frame);
* faces found more than once (in the frame and a tile, or in two overlapping tiles) are merged by non-maximum
  suppression on their boxes, keeping the one with the higher score.

Each pass maps its faces back to frame pixels before merging, and the detector's `FaceFilter` applies to all of
them; build the detector with `FaceFilter.for_min_height` to accept faces smaller than the reference's 80 px.
Tiles are the expensive part (one detector call per tile); `latentsync.face.tracks.FaceTrackSet` decides when to
run them (see there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ConfigError
from .detectors.base import Face, FaceDetector, check_image

# Tiles overlap by this fraction of their side, so a face up to a quarter of a tile tall lies whole in one tile.
TILE_OVERLAP = 0.25
# A zoomed region is this many times the face's height (at least `MIN_REGION_SIZE` pixels), centred on it.
REGION_SCALE = 4.0
MIN_REGION_SIZE = 96
# Faces whose boxes overlap by more than this are the same face.
MERGE_IOU = 0.3


def box_iou(box: np.ndarray, other: np.ndarray) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes."""
    top_left, bottom_right = np.maximum(box[:2], other[:2]), np.minimum(box[2:], other[2:])
    inter = float(np.prod(np.clip(bottom_right - top_left, 0, None)))
    union = float(np.prod(box[2:] - box[:2]) + np.prod(other[2:] - other[:2])) - inter
    return inter / union if union > 0 else 0.0


def merge_faces(faces: list[Face], iou_threshold: float = MERGE_IOU) -> list[Face]:
    """Non-maximum suppression: of faces whose boxes overlap by more than ``iou_threshold``, the highest score
    stays. Returns the kept faces, largest box first."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda face: -face.score):
        if all(box_iou(face.box, other.box) <= iou_threshold for other in kept):
            kept.append(face)
    return sorted(kept, key=lambda face: face.area, reverse=True)


def tile_origins(length: int, tile_size: int, overlap: int) -> list[int]:
    """Starts of the tiles covering ``0 .. length`` with tiles of ``tile_size`` overlapping by at least
    ``overlap`` pixels, spread evenly, the last one ending at ``length``."""
    if length <= tile_size:
        return [0]
    count = math.ceil((length - overlap) / (tile_size - overlap))
    return [round(i * (length - tile_size) / (count - 1)) for i in range(count)]


def translate_face(face: Face, offset: np.ndarray) -> Face:
    """``face`` found in a crop whose top-left pixel is at ``offset`` = ``(x, y)`` of the frame, in frame pixels."""
    landmarks = None if face.landmarks is None else face.landmarks + offset
    return replace(face, box=face.box + np.tile(offset, 2), points3=face.points3 + offset, landmarks=landmarks)


@dataclass
class FaceSearch:
    """A detector run on the whole frame, on tiles and on zoomed regions, with the results merged.

    Args:
        detector: any `FaceDetector` (its `FaceFilter` decides the smallest face kept).
        tile_size: side of the square tiles in frame pixels; frames no larger than this get no tiles.
        detect_size: the whole-frame pass runs on a copy whose longer side is at most this (None: full size);
            tiles and regions always use full-resolution pixels.
        closeup_fraction: a frame where the whole-frame pass finds a face at least this fraction of the frame's
            shorter side tall is a close-up and gets no tiles, so it costs what one detection costs.
    """

    detector: FaceDetector
    tile_size: int = 640
    detect_size: int | None = None
    closeup_fraction: float = 0.15

    def __post_init__(self):
        if self.tile_size < 128:
            raise ConfigError(f"tile_size must be at least 128 pixels, got {self.tile_size}")

    def needs_tiles(self, image: np.ndarray) -> bool:
        """Whether ``image`` is larger than one tile (smaller frames are searched whole at full detail)."""
        return max(image.shape[:2]) > self.tile_size

    def is_closeup(self, image: np.ndarray, faces: list[Face]) -> bool:
        """Whether the largest of ``faces`` is at least ``closeup_fraction`` of ``image``'s shorter side tall."""
        tallest = max((face.box[3] - face.box[1] for face in faces), default=0.0)
        return tallest >= self.closeup_fraction * min(image.shape[:2])

    def find(self, image: np.ndarray, tiles: bool = True) -> list[Face]:
        """Faces in ``image`` ``(h, w, 3)`` uint8 RGB, largest first: the whole-frame pass, plus every tile when
        ``tiles``, the frame is larger than a tile and not a close-up, merged."""
        image = check_image(image)
        faces = self.detector.detect(image, self.detect_size)
        if not (tiles and self.needs_tiles(image)) or self.is_closeup(image, faces):
            return faces
        height, width = image.shape[:2]
        size, overlap = self.tile_size, round(self.tile_size * TILE_OVERLAP)
        for top in tile_origins(height, size, overlap):
            for left in tile_origins(width, size, overlap):
                faces += self._find_in(image, left, top, left + size, top + size)
        return merge_faces(faces)

    def find_near(self, image: np.ndarray, box: np.ndarray) -> list[Face]:
        """Faces in a square region of ``REGION_SCALE`` times ``box``'s height around it (a zoomed pass)."""
        image = check_image(image)
        centre = (box[:2] + box[2:]) / 2
        half = max(REGION_SCALE * float(box[3] - box[1]), MIN_REGION_SIZE) / 2
        left, top = (int(math.floor(v)) for v in centre - half)
        return merge_faces(self._find_in(image, left, top, left + 2 * round(half), top + 2 * round(half)))

    def _find_in(self, image: np.ndarray, left: int, top: int, right: int, bottom: int) -> list[Face]:
        """Faces of the crop ``[top:bottom, left:right]`` (clipped to the frame), in frame pixels."""
        height, width = image.shape[:2]
        left, top, right, bottom = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
        if right - left < 2 or bottom - top < 2:
            return []
        crop = image[top:bottom, left:right]
        offset = np.array([left, top], np.float64)
        return [translate_face(face, offset) for face in self.detector.detect(crop)]
