"""The fixed mouth mask: which pixels of the aligned face the UNet regenerates.

``assets/mask.png`` is the reference's ``latentsync/utils/mask.png`` (256 x 256, values 0 and 255, Apache-2.0):
255 keeps a pixel, 0 marks the lower face to regenerate. It is loaded as the reference loads it (fixture README
§7): read, BGR → RGB, resized to ``R x R`` with OpenCV Lanczos-4 (a no-op at 256), divided by 255 in float64.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import VAE_SCALE_FACTOR
from ..errors import MediaError
from .align import check_resolution

MASK_PATH = Path(__file__).resolve().parent / "assets" / "mask.png"


def read_mask_image(resolution: int, path: str | Path = MASK_PATH) -> np.ndarray:
    """``(R, R, 3)`` uint8 RGB mask image resized to ``resolution`` with Lanczos-4 (255 keep, 0 regenerate)."""
    path = Path(path)
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise MediaError(f"cannot read the mouth mask image {path}: {error}") from error
    image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"{path} is not a readable image; the mouth mask must be a PNG like assets/mask.png")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)


class MouthMask:
    """The fixed mouth mask at one face resolution.

    Args:
        resolution: side of the aligned face, 256 or 512.
        path: mask image to use instead of the packaged one.

    Attributes:
        pixel: ``(3, R, R)`` float64 in ``[0, 1]``: 1 keeps a pixel, 0 regenerates it (at 512 the resized edges
            take values in between).
    """

    def __init__(self, resolution: int = 256, path: str | Path = MASK_PATH):
        self.resolution = check_resolution(resolution)
        image = read_mask_image(resolution, path)
        self.pixel = torch.from_numpy(image / 255.0).permute(2, 0, 1).contiguous()

    def latent(self, latent_size: int | None = None) -> torch.Tensor:
        """``(1, h, w)`` float64 mask channel for the UNet: channel 0 resized with PyTorch ``nearest``, which picks
        pixel ``(8 i, 8 j)`` at the default ``latent_size = R / 8``."""
        size = self.resolution // VAE_SCALE_FACTOR if latent_size is None else latent_size
        return F.interpolate(self.pixel[None, 0:1], size=(size, size), mode="nearest")[0]

    def mask_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Blank the region to regenerate: ``pixels * mask``.

        Args:
            pixels: ``(..., 3, R, R)`` face pixels in ``[-1, 1]`` (``(img / 255 - 0.5) / 0.5``).

        Returns:
            tensor of the same shape, float64 as in the reference (the mask is float64).
        """
        if pixels.shape[-3:] != self.pixel.shape:
            raise ValueError(f"pixels must end with shape {tuple(self.pixel.shape)}, got {tuple(pixels.shape)}")
        return pixels * self.pixel.to(pixels.device)
