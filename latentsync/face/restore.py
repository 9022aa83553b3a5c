"""Paste a generated face back into its frame, as LatentSync's ``AlignRestore.restore_img`` does.

Procedure (fixture README §7): the ``R x R`` face in ``[-1, 1]`` is resized to the crop size with antialiased
bicubic interpolation, warped back into the frame with the inverse affine (fill 127) and mapped to ``[0, 255]``;
a ones-mask of the crop is warped back the same way and eroded with a 2x2 kernel (the hard mask); with
``w_edge = int(sqrt(hard mask area)) // 20`` the hard mask is eroded again with a ``2 w_edge`` square kernel and
Gaussian-blurred (kernel ``2 w_edge + 1``, OpenCV's default sigma, reflect border) into the soft mask; the result
``soft * (hard * face) + (1 - soft) * frame`` is truncated to uint8.

All of it runs in torch on the frames' device, restricted to a window around the face: every step is local and
the masks are exactly zero outside the warped crop, so the window gives the same values as the whole frame and
the rest of the frame is returned untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MediaError
from .align import CROP_FILL_VALUE, as_affine_batch, check_frames, crop_size, invert_affine, warp_affine

# w_edge = int(sqrt(mask area)) // EDGE_DIVISOR sets the width of the soft edge.
EDGE_DIVISOR = 20


def resize_face(faces: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize (torchvision's ``resize(..., BICUBIC, antialias=True)``), in float32.

    Args:
        faces: ``(b, 3, h, w)`` tensor.
        size: ``(height, width)``; a face already of that size is returned as it is, as torchvision does.

    Returns:
        ``(b, 3, height, width)`` float32 tensor.
    """
    faces = faces.float()
    if tuple(faces.shape[-2:]) == tuple(size):
        return faces
    return F.interpolate(faces, size=size, mode="bicubic", align_corners=False, antialias=True)


def _erode(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Minimum over a ``size x size`` square anchored at ``size // 2`` (OpenCV's and kornia's erosion; pixels
    outside the image are ignored).

    Args:
        masks: ``(b, 1, h, w)`` float tensor.
    """
    before, after = size // 2, size - size // 2 - 1
    padded = F.pad(masks, (before, after, before, after), value=math.inf)
    rows = -F.max_pool2d(-padded, kernel_size=(1, size), stride=1)
    return -F.max_pool2d(-rows, kernel_size=(size, 1), stride=1)


def _gaussian_kernel(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(size,)`` normalised Gaussian with OpenCV's default sigma for that size, computed as kornia does."""
    sigma = torch.tensor(0.3 * ((size - 1) * 0.5 - 1) + 0.8, dtype=dtype, device=device)
    offsets = torch.arange(size, dtype=dtype, device=device) - float(size // 2)
    weights = torch.exp(-offsets.pow(2.0) / (2 * sigma.pow(2.0)))
    return weights / weights.sum()


def _gaussian_blur(masks: torch.Tensor, size: int, rounded: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Separable Gaussian blur (rows first, then columns) with reflect borders, kornia's ``gaussian_blur2d``.

    Args:
        masks: ``(b, 1, h, w)`` float tensor.
        rounded: rounding of the kernel and of each pass's result to the precision being reproduced.
    """
    kernel = rounded(_gaussian_kernel(size, masks.dtype, masks.device))
    radius = size // 2
    rows = rounded(F.conv2d(F.pad(masks, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, size)))
    return rounded(F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, size, 1)))


def _paste_window(
    inverse: torch.Tensor, face_size: tuple[int, int], frame_size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """``(top, left, height, width)`` frame window holding every pixel the paste can change, or ``None``.

    Bilinear sampling of the crop's ones-mask is non-zero only where the crop coordinate lies within one pixel
    of the crop, i.e. inside the image of ``[-1, w] x [-1, h]``. The margin covers the blur radius (``w_edge`` is
    at most the window's extent / 20) plus a few pixels, so that zero-padding and reflect borders at the window's
    edges only ever see zeros, as the whole frame would.
    """
    face_height, face_width = face_size
    corners = torch.tensor(
        [[-1.0, -1.0, 1.0], [face_width, -1.0, 1.0], [-1.0, face_height, 1.0], [face_width, face_height, 1.0]],
        dtype=torch.float64,
    )
    frame_corners = corners @ inverse.double().T
    x_min, y_min = frame_corners.min(dim=0).values.tolist()
    x_max, y_max = frame_corners.max(dim=0).values.tolist()
    margin = int(max(x_max - x_min, y_max - y_min)) // EDGE_DIVISOR + 4
    frame_height, frame_width = frame_size
    top, left = max(math.floor(y_min) - margin, 0), max(math.floor(x_min) - margin, 0)
    bottom, right = min(math.ceil(y_max) + margin + 1, frame_height), min(math.ceil(x_max) + margin + 1, frame_width)
    if bottom <= top or right <= left:
        return None
    return top, left, bottom - top, right - left


def _paste_one(frame: torch.Tensor, face: torch.Tensor, affine: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Paste one ``(3, crop_h, crop_w)`` float32 face into one ``(h, w, 3)`` uint8 frame with a ``(1, 2, 3)`` affine.

    The arithmetic is float32; with ``dtype=torch.float16`` each intermediate result is rounded to float16 where
    the reference's half-precision run stores one.
    """

    def rounded(values: torch.Tensor) -> torch.Tensor:
        return values.to(dtype).float()

    frame_size = (frame.shape[0], frame.shape[1])
    inverse = rounded(invert_affine(affine))
    window = _paste_window(inverse[0], tuple(face.shape[-2:]), frame_size)
    if window is None:
        return frame
    top, left, height, width = window

    # 1. face back into the frame, in [0, 255]
    warped = rounded(warp_affine(face[None], inverse, frame_size, fill_value=CROP_FILL_VALUE, window=window))
    warped = rounded(rounded(rounded(warped / 2) + 0.5).clamp(0, 1) * 255)

    # 2. hard mask: where the crop lands, eroded by 2x2
    ones = torch.ones((1, 1, *face.shape[-2:]), device=face.device, dtype=face.dtype)
    hard_mask = _erode(rounded(warp_affine(ones, inverse, frame_size, window=window)), 2)

    # 3. soft mask: eroded by 2 w_edge (OpenCV takes an empty kernel as 3x3), then blurred
    w_edge = int(hard_mask.sum() ** 0.5) // EDGE_DIVISOR
    soft_mask = _gaussian_blur(_erode(hard_mask, 2 * w_edge or 3), 2 * w_edge + 1, rounded)

    # 4. blend and truncate
    region = frame[top : top + height, left : left + width].permute(2, 0, 1)[None].float()
    face_part = rounded(soft_mask * rounded(hard_mask * warped))
    frame_part = rounded(rounded(1 - soft_mask) * region)
    blended = rounded(face_part + frame_part).clamp_(0, 255)
    pasted = frame.clone()
    pasted[top : top + height, left : left + width] = blended.to(torch.uint8)[0].permute(1, 2, 0)
    return pasted


def paste_back_batch(
    frames: torch.Tensor,
    faces: torch.Tensor,
    affines,
    face_crop_size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Paste generated faces back into their frames.

    Args:
        frames: ``(b, h, w, 3)`` uint8 RGB tensor (any device; the work happens there).
        faces: ``(b, 3, R, R)`` generated faces in ``[-1, 1]``.
        affines: ``(b, 2, 3)`` frame → crop matrices the faces were aligned with.
        face_crop_size: ``(height, width)`` of the aligned crop; default from ``R`` (280 x 210 at 256).
        dtype: precision of the reference run to reproduce: ``torch.float32``, or ``torch.float16`` for its
            half-precision pipeline (the matrix, the resized face and every intermediate result are rounded to
            float16; the arithmetic itself is float32).

    Returns:
        ``(b, h, w, 3)`` uint8 tensor on ``frames.device``.
    """
    check_frames(frames)
    if faces.ndim != 4 or faces.shape[1] != 3:
        raise MediaError(f"faces must have shape (b, 3, R, R), got {tuple(faces.shape)}")
    if face_crop_size is None:
        if faces.shape[-1] != faces.shape[-2]:
            raise ValueError(f"faces must be square to derive the crop size, got {tuple(faces.shape)}")
        face_crop_size = crop_size(faces.shape[-1])
    matrices = as_affine_batch(affines, dtype)
    if not frames.shape[0] == faces.shape[0] == matrices.shape[0]:
        raise ValueError(
            f"got {frames.shape[0]} frames, {faces.shape[0]} faces and {matrices.shape[0]} affine matrices"
        )
    crops = resize_face(faces.to(frames.device), face_crop_size).to(dtype).float()
    pasted = [_paste_one(frame, crop, matrix[None], dtype) for frame, crop, matrix in zip(frames, crops, matrices)]
    return torch.stack(pasted)


def paste_back(
    frame: np.ndarray,
    face: torch.Tensor,
    affine,
    face_crop_size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Paste one generated face back into its frame (see `paste_back_batch`).

    Args:
        frame: ``(h, w, 3)`` uint8 RGB frame.
        face: ``(3, R, R)`` generated face in ``[-1, 1]``.
        affine: ``(2, 3)`` frame → crop matrix the face was aligned with.

    Returns:
        ``(h, w, 3)`` uint8 frame; pixels away from the face equal the input.
    """
    if not isinstance(frame, np.ndarray):
        raise MediaError(f"frame must be a numpy array of shape (h, w, 3), got {type(frame).__name__}")
    frames = torch.from_numpy(np.ascontiguousarray(frame))[None]
    return paste_back_batch(frames, torch.as_tensor(face)[None], affine, face_crop_size, dtype)[0].numpy()
