"""Face alignment: three landmarks → similarity transform → warped face crop, as LatentSync does it.

The reference (``latentsync/utils/affine_transform.py``, fixture README §7) fits a similarity transform from
three points of the frame (image-left eyebrow centre, image-right eyebrow centre, nose centre) to a fixed
template, smooths its translation over the frames of a video, warps the frame into a ``280 x 210`` crop
(at ``R = 256``) with kornia's bilinear ``warp_affine`` and resizes the crop to ``R x R`` with OpenCV Lanczos-4.

Everything here reproduces those numerics without kornia: `warp_affine` builds the same sampling grid with the
same float32 operations and calls ``torch.nn.functional.grid_sample``, so the uint8 crops match the reference
exactly on CPU (and to within ±1 on GPUs, whose kernels may fuse multiply-adds).

Matrices map frame pixels to crop pixels, ``[x', y'] = M[:, :2] @ [x, y] + M[:, 2]``, where pixel ``(x, y)`` is
the centre of ``image[y, x]``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, MediaError, NoFaceError

SUPPORTED_RESOLUTIONS = (256, 512)

# The reference template in units of its crop ratio: eyebrow centres and nose centre, (x, y).
_TEMPLATE_UNITS = np.array([[19.0 - 2.0, 30.0 - 10.0], [56.0 + 2.0, 30.0 - 10.0], [37.5, 45.0 - 5.0]])

# Value of crop pixels whose source lies outside the frame (on every channel, before truncation).
CROP_FILL_VALUE = 127.0

# Smoothing: the translation bias of a frame is this much the previous frame's bias plus the rest its own.
SMOOTHING_PREVIOUS_WEIGHT = 0.2


def check_resolution(resolution: int) -> int:
    """``resolution`` if it is a supported face resolution, else a `ConfigError`."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ConfigError(f"face resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    return resolution


def _crop_ratio(resolution: int) -> float:
    return check_resolution(resolution) / 256 * 2.8


def face_template(resolution: int) -> np.ndarray:
    """``(3, 2)`` float64 template points ``(x, y)`` in crop pixels: eyebrow centres and nose centre."""
    return _TEMPLATE_UNITS * _crop_ratio(resolution)


def crop_size(resolution: int) -> tuple[int, int]:
    """``(height, width)`` of the aligned crop before its resize to ``resolution x resolution``."""
    ratio = _crop_ratio(resolution)
    return int(100 * ratio), int(75 * ratio)


def resize_faces(pixels: torch.Tensor, resolution: int) -> torch.Tensor:
    """``(n, c, h, w)`` float faces resized to ``(n, c, R, R)`` (bicubic, antialiased), as they are if already so.

    Training feeds a model smaller faces than the aligner's 256 this way, and scoring does the same.
    """
    if pixels.shape[-2:] == (resolution, resolution):
        return pixels
    return F.interpolate(pixels, size=(resolution, resolution), mode="bicubic", antialias=True)


FACE_TEMPLATE_256 = face_template(256)  # [[47.6, 56], [162.4, 56], [105, 112]]
FACE_TEMPLATE_512 = face_template(512)
CROP_SIZE_256 = crop_size(256)  # (280, 210)
CROP_SIZE_512 = crop_size(512)  # (560, 420)


def _normalise_points(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre ``(3, 2)`` points and divide by the unbiased std of all 6 centred coordinates.

    Returns:
        ``(normalised (3, 2), centre (2,), std ())``.
    """
    centre = points.mean(dim=0)
    centred = points - centre
    std = centred.std()
    return centred / std, centre, std


def _as_points(points, name: str) -> torch.Tensor:
    array = np.asarray(points, dtype=np.float64)
    if array.shape != (3, 2):
        raise ValueError(f"{name} must have shape (3, 2) (three (x, y) points), got {array.shape}")
    if not np.isfinite(array).all():
        raise NoFaceError(f"{name} contains non-finite coordinates: {array.tolist()}")
    return torch.tensor(array, dtype=torch.float32)


def similarity_transform(src_points, dst_points) -> np.ndarray:
    """The similarity transform (rotation, uniform scale, translation) that best maps three points onto three others.

    Computed in float32 as the reference does: both point sets are centred and scaled by the unbiased standard
    deviation of their 6 centred coordinates; with ``U S Vᵀ = P_srcᵀ P_dst`` the rotation is ``R = V Uᵀ``
    (``V``'s last column negated when ``det R < 0``), and ``M = [s R | c_dst - s R c_src]`` with
    ``s = std_dst / std_src``.

    Args:
        src_points: ``(3, 2)`` points ``(x, y)`` in the source image.
        dst_points: ``(3, 2)`` points ``(x, y)`` they should land on.

    Returns:
        ``(2, 3)`` float64 matrix holding the float32 result, mapping source pixels to destination pixels.
    """
    matrix, _, _ = _fit_similarity(_as_points(src_points, "src_points"), _as_points(dst_points, "dst_points"))
    return matrix.double().numpy()


def _fit_similarity(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`similarity_transform` on float32 tensors; also returns both normalised point sets."""
    src_normalised, src_centre, src_std = _normalise_points(src)
    dst_normalised, dst_centre, dst_std = _normalise_points(dst)
    if not bool(src_std > 0):
        raise NoFaceError(f"the three face points coincide, no transform can be fitted: {src.tolist()}")

    covariance = src_normalised.T @ dst_normalised
    u, _, vh = torch.linalg.svd(covariance)
    v = vh.T.clone()
    rotation = v @ u.T
    if torch.det(rotation) < 0:
        v[:, -1] = -v[:, -1]
        rotation = v @ u.T

    scaled_rotation = (dst_std / src_std) * rotation
    translation = dst_centre.reshape(2, 1) - (dst_std / src_std) * (rotation @ src_centre.reshape(2, 1))
    return torch.cat((scaled_rotation, translation), dim=1), src_normalised, dst_normalised


def _pixel_to_normalised(height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``(3, 3)``: pixel coordinates → grid_sample coordinates in ``[-1, 1]`` (align_corners=True)."""
    return torch.tensor([[2.0 / (width - 1), 0.0, -1.0], [0.0, 2.0 / (height - 1), -1.0], [0.0, 0.0, 1.0]], dtype=dtype)


def _inverse_3x3(matrices: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` inverse by the adjugate (rows are cross products of columns), as kornia's warp computes it."""
    col_a, col_b, col_c = matrices[..., :, 0], matrices[..., :, 1], matrices[..., :, 2]
    row_0 = torch.linalg.cross(col_b, col_c, dim=-1)
    row_1 = torch.linalg.cross(col_c, col_a, dim=-1)
    row_2 = torch.linalg.cross(col_a, col_b, dim=-1)
    determinant = (col_a * row_0).sum(-1)
    return torch.stack([row_0, row_1, row_2], dim=-2) / determinant[..., None, None]


def _to_homogeneous(matrices: torch.Tensor) -> torch.Tensor:
    """``(b, 2, 3)`` → ``(b, 3, 3)`` with the row ``[0, 0, 1]`` appended."""
    bottom = torch.zeros_like(matrices[:, :1])
    bottom[..., 2] = 1.0
    return torch.cat([matrices, bottom], dim=1)


def as_affine_batch(affines, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(b, 2, 3)`` float32 CPU tensor of the given matrices rounded to ``dtype`` (float16 reproduces the reference's
    half-precision pipeline, whose matrices are float16).

    Args:
        affines: ``(2, 3)`` or ``(b, 2, 3)`` array or tensor (any device).
    """
    matrices = torch.as_tensor(affines).detach().to(device="cpu", dtype=torch.float64)
    if matrices.ndim == 2:
        matrices = matrices[None]
    if matrices.ndim != 3 or matrices.shape[1:] != (2, 3):
        raise ValueError(f"affine matrices must have shape (2, 3) or (b, 2, 3), got {tuple(matrices.shape)}")
    return matrices.to(dtype).float()


def invert_affine(affines: torch.Tensor) -> torch.Tensor:
    """``(b, 2, 3)`` inverses of ``(b, 2, 3)`` affine matrices (float32 ``torch.linalg.inv`` of the 3x3 form,
    as kornia's ``invert_affine_transform``)."""
    return torch.linalg.inv(_to_homogeneous(affines))[:, :2, :3]


def warp_affine(
    images: torch.Tensor,
    affines: torch.Tensor,
    out_size: tuple[int, int],
    fill_value: float | None = None,
    window: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Warp images with pixel affine matrices: kornia's ``warp_affine`` (bilinear, align_corners=True).

    The matrix is carried to grid_sample's normalised coordinates and inverted exactly as kornia does it, in the
    images' dtype on the CPU (3x3 algebra only; no TF32 or device-dependent rounding), and the sampling grid is
    built from ``linspace(-1, 1)`` with the same multiply-adds.

    Args:
        images: ``(b, c, h, w)`` float tensor.
        affines: ``(b, 2, 3)`` source → output pixel matrices.
        out_size: ``(height, width)`` of the full output.
        fill_value: value of output pixels whose source lies outside the image, blended in proportion to the
            missing bilinear weight (kornia's ``padding_mode="fill"``); ``None`` for zeros.
        window: ``(top, left, height, width)`` part of the output to compute (its values equal those of the full
            warp there), or ``None`` for all of it.

    Returns:
        ``(b, c, height, width)`` tensor (the window's size when ``window`` is given).
    """
    batch, _, in_height, in_width = images.shape
    out_height, out_width = out_size
    dtype = images.dtype

    # 1. output-normalised → source-normalised coordinates
    pixel_matrices = _to_homogeneous(affines.to(device="cpu", dtype=dtype))
    src_to_normalised = _pixel_to_normalised(in_height, in_width, dtype)[None]
    dst_to_normalised = _pixel_to_normalised(out_height, out_width, dtype)[None]
    normalised = dst_to_normalised @ (pixel_matrices @ _inverse_3x3(src_to_normalised))
    sampling = _inverse_3x3(normalised).to(images.device)

    # 2. sampling grid
    grid_x = torch.linspace(-1.0, 1.0, out_width, device=images.device, dtype=dtype)
    grid_y = torch.linspace(-1.0, 1.0, out_height, device=images.device, dtype=dtype)
    if window is not None:
        top, left, height, width = window
        grid_x, grid_y = grid_x[left : left + width], grid_y[top : top + height]
    base_y, base_x = torch.meshgrid(grid_y, grid_x, indexing="ij")
    m = sampling[..., None, None]  # (b, 3, 3, 1, 1)
    source_x = m[:, 0, 0] * base_x + m[:, 0, 1] * base_y + m[:, 0, 2]
    source_y = m[:, 1, 0] * base_x + m[:, 1, 1] * base_y + m[:, 1, 2]
    grid = torch.stack([source_x, source_y], dim=-1)  # (b, height, width, 2)

    # 3. sample
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if fill_value is None:
        return warped
    ones = torch.ones((batch, 1, in_height, in_width), device=images.device, dtype=dtype)
    coverage = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped + (1 - coverage) * fill_value


def check_frames(frames: torch.Tensor) -> None:
    """Raise `MediaError` unless ``frames`` is a ``(b, h, w, 3)`` uint8 tensor of at least 2 x 2 pixels."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"frames must be RGB of shape (b, h, w, 3), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise MediaError(f"frames must be uint8 (values 0..255), got {frames.dtype}")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise MediaError(f"frames are too small to hold a face: shape {tuple(frames.shape)}")


class FaceAligner:
    """Aligns the face of each frame of one video to the LatentSync template.

    The translation smoothing of the reference keeps state from frame to frame: use one aligner per video, feed
    it the frames in order, or call `reset` before the next video.

    Args:
        resolution: side of the aligned face, 256 or 512 (template and crop scale with it).
        smooth: apply the reference's translation smoothing (on in the reference pipeline).
    """

    def __init__(self, resolution: int = 256, smooth: bool = True):
        self.resolution = resolution
        self.template = face_template(resolution)
        self.crop_size = crop_size(resolution)
        self.smooth = smooth
        self._template_points = torch.tensor(self.template, dtype=torch.float32)
        self._previous_bias: torch.Tensor | None = None

    @property
    def smoothing_bias(self) -> np.ndarray | None:
        """``(2,)`` float64 translation bias added to the last matrix (float32 values), or ``None`` before the first."""
        return None if self._previous_bias is None else self._previous_bias.double().numpy()

    def reset(self) -> None:
        """Forget the smoothing state (start of a new video)."""
        self._previous_bias = None

    def estimate_affine(self, landmarks3) -> np.ndarray:
        """The frame → crop matrix for the next frame of the video.

        The points are rounded to whole pixels first (as the reference rounds them). With smoothing, the bias
        ``(normalised template nose) - (normalised frame nose)`` is mixed with the previous frame's bias
        (``0.2 * previous + 0.8 * current``; the first frame uses its own), stored, and added to the translation.

        Args:
            landmarks3: ``(3, 2)`` ``(x, y)`` of the image-left eyebrow centre, the image-right eyebrow centre and
                the nose centre, in frame pixels.

        Returns:
            ``(2, 3)`` float64 matrix (float32 values, computed in float32 like the reference).
        """
        points = _as_points(np.round(np.asarray(landmarks3, dtype=np.float64)), "landmarks3")
        matrix, points_normalised, template_normalised = _fit_similarity(points, self._template_points)
        if self.smooth:
            bias = template_normalised[2] - points_normalised[2]
            if self._previous_bias is not None:
                bias = self._previous_bias * SMOOTHING_PREVIOUS_WEIGHT + bias * (1 - SMOOTHING_PREVIOUS_WEIGHT)
            self._previous_bias = bias
            matrix[:, 2] = matrix[:, 2] + bias
        return matrix.double().numpy()

    def warp_crops(self, frames: torch.Tensor, affines, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Warp frames into ``crop_size`` face crops (fill 127), truncated to uint8 like the reference.

        Args:
            frames: ``(b, h, w, 3)`` uint8 RGB tensor on any device.
            affines: ``(b, 2, 3)`` frame → crop matrices (`estimate_affine`).
            dtype: precision of the reference run to reproduce: ``torch.float32``, or ``torch.float16`` for its
                half-precision pipeline (matrix and warped values rounded to float16; the warp itself is float32).

        Returns:
            ``(b, crop_h, crop_w, 3)`` uint8 tensor on ``frames.device``.
        """
        check_frames(frames)
        matrices = as_affine_batch(affines, dtype)
        if matrices.shape[0] != frames.shape[0]:
            raise ValueError(f"got {frames.shape[0]} frames but {matrices.shape[0]} affine matrices")
        images = frames.permute(0, 3, 1, 2).float()
        crops = warp_affine(images, matrices, self.crop_size, fill_value=CROP_FILL_VALUE)
        # values are in [0, 255] up to rounding, so the clamp only guards the float → uint8 cast
        crops = crops.to(dtype).float().clamp_(0, 255).to(torch.uint8)
        return crops.permute(0, 2, 3, 1)

    def align_batch(self, frames: torch.Tensor, affines, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Aligned ``R x R`` faces of a batch of frames: warp on ``frames.device``, Lanczos-4 resize with OpenCV.

        Args and ``dtype``: as `warp_crops`.

        Returns:
            ``(b, R, R, 3)`` uint8 tensor on ``frames.device``.
        """
        crops = self.warp_crops(frames, affines, dtype).cpu().numpy()
        size = (self.resolution, self.resolution)
        faces = [cv2.resize(crop, size, interpolation=cv2.INTER_LANCZOS4) for crop in crops]
        return torch.from_numpy(np.stack(faces)).to(frames.device)

    def align(self, frame: np.ndarray, affine, dtype: torch.dtype = torch.float32) -> np.ndarray:
        """The aligned ``(R, R, 3)`` uint8 face of one ``(h, w, 3)`` uint8 RGB frame (see `align_batch`)."""
        if not isinstance(frame, np.ndarray):
            raise MediaError(f"frame must be a numpy array of shape (h, w, 3), got {type(frame).__name__}")
        return self.align_batch(torch.from_numpy(np.ascontiguousarray(frame))[None], affine, dtype)[0].numpy()
