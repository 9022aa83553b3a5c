"""Numbers and conventions every layer shares: the models' audio and frame rates, the VAE's factors, the pixel range.

Each is defined here once; the modules that use one import it from here.
"""

from __future__ import annotations

from fractions import Fraction

import torch

MODEL_SAMPLE_RATE = 16_000
"""Hz of the audio the models hear (Whisper features, the SyncNet mel); inputs are resampled to it."""

MODEL_FPS = Fraction(25)
"""Frames per second the models work at: one video frame and two Whisper feature rows per 1/25 s."""

SAMPLES_PER_MODEL_FRAME = int(MODEL_SAMPLE_RATE / MODEL_FPS)
"""Audio samples per model frame (640)."""

VAE_SCALE_FACTOR = 8
"""Pixels per latent along each side (the SD-1.5 VAE halves the size three times)."""

VAE_SCALING_FACTOR = 0.18215
"""``sd-vae-ft-mse`` latents are multiplied by this before they reach the UNet (shift factor 0)."""


def signed_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``0..255`` -> float32 ``[-1, 1]`` as the reference computes it, ``(x / 255 - 0.5) / 0.5``; any shape."""
    return (images.float() / 255.0 - 0.5) / 0.5
