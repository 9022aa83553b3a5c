"""The reference's detector: InsightFace ``buffalo_l`` (SCRFD ``det_10g.onnx`` + ``2d106det.onnx``) on ONNX Runtime.

The user supplies the two files (we never download them); ``onnxruntime`` (or ``onnxruntime-gpu``) is an optional
dependency imported only when this detector is built. The decoding below follows InsightFace's ``FaceAnalysis``
with ``allowed_modules=["detection", "landmark_2d_106"]`` and ``det_size=(512, 512)``, as the reference uses it:

  1. SCRFD: the frame is scaled to fit 512x512 (top-left aligned, zero padded), normalised to
     ``(x - 127.5) / 128``; per stride 8 / 16 / 32 there are 2 anchors per cell, each predicting a score,
     distances to the box sides and 5 keypoints (all in stride units); score >= 0.5, then NMS at IoU 0.4.
  2. 2d106: a 192x192 crop centred on the box, 1.5x its longer side, unnormalised pixels; the 212 outputs are
     ``(x, y)`` in ``[-1, 1]`` of the crop, mapped back to the frame.
  3. The three points are means of landmarks (43, 48, 49, 51, 50), (101..105) and (74, 77, 83, 86), taken from
     the landmarks rounded to integers, as the reference does (it rounds the three points once more; that is
     left to the aligner, after any smoothing).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ...errors import CheckpointError
from .base import Face, FaceDetector, FaceFilter, MissingDependencyError, mean_points

DETECTION_MODEL_FILE = "det_10g.onnx"
LANDMARK_MODEL_FILE = "2d106det.onnx"
DETECTION_SIZE = 512  # the reference's INSIGHTFACE_DETECT_SIZE
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS_PER_CELL = 2
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0
LANDMARK_CROP_SCALE = 1.5
LANDMARK_NUM_POINTS = 106
# 2d106det normalises inside its graph (its first nodes subtract 0 and multiply by 1 after an mxnet export), so
# InsightFace feeds it raw 0..255 pixels.
LANDMARK_MEAN, LANDMARK_STD = 0.0, 1.0

# Landmarks averaged into the three alignment points (fixture README section 7):
# image-left eyebrow centre, image-right eyebrow centre, nose centre.
POINT3_106_GROUPS = ((43, 48, 49, 51, 50), (101, 102, 103, 104, 105), (74, 77, 83, 86))

_PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependencyError(
            "the 'insightface' face detector runs on ONNX Runtime, which is not installed: "
            "pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from error
    return onnxruntime


class OnnxModel:
    """An ONNX Runtime session over one model file, with its single image input."""

    def __init__(self, path: Path, providers: list[str] | None):
        onnxruntime = _import_onnxruntime()
        if not path.is_file():
            raise CheckpointError(
                f"{path} does not exist. The 'insightface' detector needs InsightFace's buffalo_l files "
                f"{DETECTION_MODEL_FILE} and {LANDMARK_MODEL_FILE} in one folder (model_dir); "
                "they are not downloaded automatically"
            )
        if providers is None:
            available = onnxruntime.get_available_providers()
            providers = [provider for provider in _PREFERRED_PROVIDERS if provider in available]
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # ONNX Runtime raises its own exception types for unreadable graphs
            raise CheckpointError(f"{path} is not a loadable ONNX model: {error}") from error
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = model_input.shape
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, blob: np.ndarray) -> list[np.ndarray]:
        """Run on a ``(1, 3, h, w)`` float32 blob; returns every output in the model's order."""
        return self.session.run(self.output_names, {self.input_name: blob})


def image_to_blob(image: np.ndarray, mean: float, std: float, swap_rb: bool) -> np.ndarray:
    """``(h, w, 3)`` uint8 -> ``(1, 3, h, w)`` float32 ``(x - mean) / std``, channels reversed if ``swap_rb``."""
    pixels = image[..., ::-1] if swap_rb else image
    return ((pixels.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None]


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """``(height * width * 2, 2)`` anchor centres ``(x, y)`` in input pixels, row-major, 2 anchors per cell."""
    grid_y, grid_x = np.mgrid[:height, :width]
    centres = np.stack([grid_x, grid_y], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, SCRFD_ANCHORS_PER_CELL, axis=0)


def decode_scrfd(outputs: list[np.ndarray], input_size: tuple[int, int], threshold: float) -> tuple[np.ndarray, ...]:
    """Candidate faces from SCRFD's 9 outputs (scores, box distances, keypoint offsets for strides 8, 16, 32).

    Args:
        outputs: ``(n_s, 1)``, ``(n_s, 4)``, ``(n_s, 10)`` per stride, in the order scores x3, boxes x3, keypoints x3
            (a leading batch axis of 1 is accepted).
        input_size: ``(height, width)`` of the network input.
        threshold: minimum score.

    Returns:
        ``scores (m,)``, ``boxes (m, 4)`` x1, y1, x2, y2 and ``keypoints (m, 5, 2)``, in input pixels.
    """
    levels = len(SCRFD_STRIDES)
    scores, boxes, keypoints = [], [], []
    for level, stride in enumerate(SCRFD_STRIDES):
        level_scores, distances, offsets = (
            np.asarray(outputs[level + k * levels]).reshape(-1, width) for k, width in enumerate((1, 4, 10))
        )
        centres = anchor_centres(input_size[0] // stride, input_size[1] // stride, stride)
        if len(centres) != len(level_scores):
            raise CheckpointError(
                f"the detection model gives {len(level_scores)} scores at stride {stride} for a "
                f"{input_size[1]}x{input_size[0]} input, expected {len(centres)}; is it an SCRFD model with keypoints?"
            )
        keep = level_scores[:, 0] >= threshold
        centres, distances, offsets = centres[keep], distances[keep] * stride, offsets[keep] * stride
        scores.append(level_scores[keep, 0])
        boxes.append(np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1))
        keypoints.append(offsets.reshape(-1, 5, 2) + centres[:, None])
    return np.concatenate(scores), np.concatenate(boxes), np.concatenate(keypoints)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first (InsightFace's ``+1`` pixel areas)."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(best)
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.prod(np.maximum(0.0, bottom_right - top_left + 1), axis=1)
        order = rest[inter / (areas[best] + areas[rest] - inter) <= iou_threshold]
    return np.array(kept, dtype=np.int64)


def landmark_crop_transform(box: np.ndarray, crop_size: int) -> np.ndarray:
    """``(2, 3)`` affine from frame pixels to the 2d106 crop: centred on ``box``, 1.5x its longer side."""
    centre = (box[:2] + box[2:]) / 2
    scale = crop_size / (max(box[2] - box[0], box[3] - box[1]) * LANDMARK_CROP_SCALE)
    return np.array([[scale, 0.0, crop_size / 2 - centre[0] * scale], [0.0, scale, crop_size / 2 - centre[1] * scale]])


class InsightFaceDetector(FaceDetector):
    """SCRFD + 2d106 landmarks from InsightFace's ``buffalo_l`` files, the reference's detector.

    Args:
        model_dir: folder with ``det_10g.onnx`` and ``2d106det.onnx`` (e.g. ComfyUI's
            ``models/insightface/models/buffalo_l``).
        det_size: the square SCRFD input size (the reference uses 512).
        score_threshold: minimum SCRFD score (InsightFace's default 0.5).
        nms_threshold: IoU above which lower-scored SCRFD boxes are dropped (0.4).
        reference_channel_order: the reference hands RGB frames to InsightFace, which expects BGR and swaps
            them, so its networks see BGR. True reproduces that (what the LatentSync models were trained
            with); False gives the networks RGB, the order they were trained on.
        providers: ONNX Runtime execution providers (default: CUDA if available, else CPU).
        face_filter: the size / aspect / score rules a face must pass (the reference's by default).
    """

    name = "insightface"

    def __init__(
        self,
        model_dir: str | Path,
        det_size: int = DETECTION_SIZE,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        reference_channel_order: bool = True,
        providers: list[str] | None = None,
        face_filter: FaceFilter | None = None,
    ):
        super().__init__(face_filter)
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise CheckpointError(
                f"InsightFace model folder {model_dir} does not exist; it must hold buffalo_l's "
                f"{DETECTION_MODEL_FILE} and {LANDMARK_MODEL_FILE}"
            )
        self.det_size = det_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        # the networks want RGB; a blob built from our RGB frame with a swap matches the reference's BGR feed
        self.swap_rb = reference_channel_order
        self.detector = OnnxModel(model_dir / DETECTION_MODEL_FILE, providers)
        if len(self.detector.output_names) != 3 * len(SCRFD_STRIDES):
            raise CheckpointError(
                f"{model_dir / DETECTION_MODEL_FILE} has {len(self.detector.output_names)} outputs; an SCRFD model "
                f"with keypoints (det_10g) has {3 * len(SCRFD_STRIDES)}"
            )
        self.landmarker = OnnxModel(model_dir / LANDMARK_MODEL_FILE, providers)
        self.landmark_size = self.landmarker.input_shape[2]
        if not isinstance(self.landmark_size, int):
            raise CheckpointError(f"{model_dir / LANDMARK_MODEL_FILE} has no fixed input size; is it 2d106det?")

    def _find_faces(self, image: np.ndarray) -> list[Face]:
        return [self._landmarks(image, box, score) for box, score in zip(*self._boxes(image))]

    def _boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SCRFD boxes ``(m, 4)`` in frame pixels and their scores ``(m,)``, after NMS."""
        # 1. fit the frame into det_size x det_size, top-left aligned
        height, width = image.shape[:2]
        if height / width > 1:
            new_h, new_w = self.det_size, int(self.det_size * width / height)
        else:
            new_w, new_h = self.det_size, int(self.det_size * height / width)
        det_scale = new_h / height
        canvas = np.zeros((self.det_size, self.det_size, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))

        # 2. run and decode, back to frame pixels, suppress overlaps
        outputs = self.detector(image_to_blob(canvas, SCRFD_MEAN, SCRFD_STD, self.swap_rb))
        scores, boxes, _ = decode_scrfd(outputs, (self.det_size, self.det_size), self.score_threshold)
        keep = nms(boxes / det_scale, scores, self.nms_threshold)
        return (boxes / det_scale)[keep].astype(np.float64), scores[keep]

    def _landmarks(self, image: np.ndarray, box: np.ndarray, score: float) -> Face:
        """The 106 landmarks of the face in ``box`` and its three alignment points."""
        frame_to_crop = landmark_crop_transform(box, self.landmark_size)
        crop = cv2.warpAffine(image, frame_to_crop, (self.landmark_size, self.landmark_size), borderValue=0.0)
        raw = self.landmarker(image_to_blob(crop, LANDMARK_MEAN, LANDMARK_STD, self.swap_rb))[0]
        crop_points = (raw.reshape(-1, 2)[-LANDMARK_NUM_POINTS:].astype(np.float64) + 1) * (self.landmark_size // 2)
        crop_to_frame = cv2.invertAffineTransform(frame_to_crop)
        landmarks = crop_points @ crop_to_frame[:, :2].T + crop_to_frame[:, 2]
        points3 = mean_points(np.round(landmarks), POINT3_106_GROUPS)
        return Face(box, float(score), points3, landmarks)
