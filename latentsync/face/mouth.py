"""How open a mouth is: the gap between the inner lips over the height of the face, from face-mesh landmarks.

A closed mouth measures about 0.0, a wide-open one about 0.2. `mouth_openings` measures the largest face of every
frame of a clip, bridging frames without a face, so a clip's lip movement becomes one number per frame.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError, NoFaceError
from .detectors import Face, FaceDetector

# MediaPipe face-mesh (468 points) indices: the middle of the upper and lower inner lip, the top of the forehead
# and the bottom of the chin.
MESH_NUM_LANDMARKS = 468
MESH_UPPER_INNER_LIP = 13
MESH_LOWER_INNER_LIP = 14
MESH_FOREHEAD = 10
MESH_CHIN = 152


def mouth_opening(face: Face) -> float:
    """The inner-lip gap of ``face`` divided by its forehead-to-chin height.

    Raises:
        ConfigError: the face has no 468-point face mesh (the ``mediapipe`` detector gives one).
    """
    landmarks = face.landmarks
    if landmarks is None or len(landmarks) != MESH_NUM_LANDMARKS:
        found = "no landmarks" if landmarks is None else f"{len(landmarks)} landmarks"
        raise ConfigError(
            f"Measuring the mouth needs the {MESH_NUM_LANDMARKS}-point face mesh, but the face has {found}; "
            "use the 'mediapipe' face detector."
        )
    gap = np.linalg.norm(landmarks[MESH_UPPER_INNER_LIP] - landmarks[MESH_LOWER_INNER_LIP])
    height = np.linalg.norm(landmarks[MESH_FOREHEAD] - landmarks[MESH_CHIN])
    return float(gap / max(height, 1e-9))


def mouth_openings(frames: Iterable[np.ndarray], detector: FaceDetector) -> np.ndarray:
    """The `mouth_opening` of the largest face of each frame, ``(num_frames,)`` float64; frames without a face take
    the value interpolated between their neighbours (held at the clip's ends).

    Args:
        frames: ``(h, w, 3)`` uint8 RGB frames of one clip.
        detector: a detector that gives face-mesh landmarks.

    Raises:
        NoFaceError: no frame has a face.
    """
    openings = []
    for frame in frames:
        faces = detector.detect(frame)
        openings.append(mouth_opening(faces[0]) if faces else np.nan)
    openings = np.asarray(openings, dtype=np.float64)
    found = ~np.isnan(openings)
    if not found.any():
        raise NoFaceError(f"No face in any of the {len(openings)} frames, so there is no mouth to measure.")
    index = np.arange(len(openings))
    return np.interp(index, index[found], openings[found])
