"""Conversions between ComfyUI's data types and the library's, and the scratch folder the nodes work in.

Nothing here imports ComfyUI (the unit tests load this module without it)::

    IMAGE  torch (b, h, w, 3) float32 in 0..1                <->  frames (h, w, 3) uint8 RGB
    AUDIO  {"waveform": (1, c, n) float, "sample_rate": sr}   ->   (c, n) float32 at sr, or (n,) float32 at 16 kHz mono
    fps    a float (GetVideoComponents, CreateVideo)          ->   an exact Fraction (29.97002997... -> 30000/1001)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..latentsync.conventions import MODEL_SAMPLE_RATE
from ..latentsync.errors import ConfigError, MediaError
from ..latentsync.media.timeline import parse_fps
from ..latentsync.media.writer import DEFAULT_LAYOUTS, AudioArray, write_wav
from ..latentsync.pipeline.settings import SETTING_SPECS

# Frame rates a node accepts: the library's bounds for an output frame rate.
MIN_FPS = Fraction(SETTING_SPECS["output_fps"].minimum)
MAX_FPS = Fraction(SETTING_SPECS["output_fps"].maximum)


# ----------------------------------------------------------------------------------------------------------
# IMAGE


def check_images(images, name: str = "images") -> None:
    """Raise `MediaError` unless ``images`` is a non-empty IMAGE batch ``(b, h, w, 3)``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise MediaError(f"{name} must be an RGB IMAGE batch of shape (frames, height, width, 3), got {shape}.")
    if images.shape[0] == 0:
        raise MediaError(f"{name} holds no frames.")


def frame_to_uint8(image: torch.Tensor) -> np.ndarray:
    """One IMAGE frame ``(h, w, 3)`` in 0..1 → ``(h, w, 3)`` uint8, rounded (so LoadImage's ``x / 255`` comes back
    exactly; core nodes that truncate lose one level on some values)."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def frame_to_image(frame: np.ndarray) -> torch.Tensor:
    """``(h, w, 3)`` uint8 → one IMAGE frame ``(h, w, 3)`` float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(frame)).float() / 255.0


class Uint8Frames(Sequence):
    """An IMAGE batch seen as a sequence of ``(h, w, 3)`` uint8 frames, converted one at a time when read (the
    batch is not copied; the library's frame iterators take it as is)."""

    def __init__(self, images: torch.Tensor):
        check_images(images)
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} of {len(self)}")
        return frame_to_uint8(self.images[index])


def frames_to_images(frames: np.ndarray) -> torch.Tensor:
    """``(b, h, w, 3)`` uint8 → IMAGE ``(b, h, w, 3)`` float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0


# ----------------------------------------------------------------------------------------------------------
# AUDIO


def audio_samples(audio) -> tuple[np.ndarray, int]:
    """A core AUDIO value as ``(c, n)`` float32 samples (every channel kept) and its sample rate.

    Raises:
        MediaError: not an AUDIO dict, a batch of several clips, no samples, more than 8 channels or non-finite
            samples.
    """
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise MediaError(f"Expected an AUDIO value (waveform and sample_rate), got {type(audio).__name__}.")
    waveform = torch.as_tensor(audio["waveform"])
    if waveform.ndim != 3:
        raise MediaError(f"AUDIO waveform must have shape (batch, channels, samples), got {tuple(waveform.shape)}.")
    batch, channels, length = waveform.shape
    if batch != 1:
        raise MediaError(f"The AUDIO holds a batch of {batch} clips; LatentSync syncs to one. Pass a single clip.")
    if channels not in DEFAULT_LAYOUTS:
        raise MediaError(f"The AUDIO has {channels} channels; 1 to {max(DEFAULT_LAYOUTS)} are supported.")
    if length == 0:
        raise MediaError("The AUDIO is empty (0 samples). Connect audio that has speech in it.")
    sample_rate = int(audio["sample_rate"])
    if sample_rate <= 0:
        raise MediaError(f"The AUDIO sample rate must be positive, got {sample_rate}.")
    samples = np.ascontiguousarray(waveform[0].detach().float().cpu().numpy())
    if not np.isfinite(samples).all():
        raise MediaError("The AUDIO contains NaN or infinite samples.")
    return samples, sample_rate


def audio_duration(audio) -> Fraction:
    """Seconds of an AUDIO value, exactly."""
    samples, sample_rate = audio_samples(audio)
    return Fraction(samples.shape[1], sample_rate)


def model_waveform(audio) -> np.ndarray:
    """An AUDIO value as the models hear it: ``(n,)`` float32 mono at 16 kHz, ``n = round(duration * 16000)``.

    Channels are resampled (PyAV, as `latentsync.media.load_audio` does for files) and then averaged.
    """
    samples, sample_rate = audio_samples(audio)
    chunks = list(AudioArray(samples, sample_rate).chunks(MODEL_SAMPLE_RATE))
    mono = np.concatenate(chunks, axis=1).mean(axis=0)
    length = round(Fraction(samples.shape[1], sample_rate) * MODEL_SAMPLE_RATE)
    mono = np.pad(mono[:length], (0, max(0, length - len(mono))))
    return np.ascontiguousarray(mono, dtype=np.float32)


def save_wav(audio, path: Path) -> Path:
    """Write an AUDIO value losslessly (32-bit float WAV, all channels, its own rate) for the library's file APIs."""
    return write_wav(path, *audio_samples(audio))


# ----------------------------------------------------------------------------------------------------------
# Frame rate


def as_fps(value) -> Fraction:
    """A frame rate from a FLOAT input as an exact `Fraction` within the accepted range.

    Raises:
        ConfigError: not a number, or outside `MIN_FPS` .. `MAX_FPS`.
    """
    fps = parse_fps(value)
    if not MIN_FPS <= fps <= MAX_FPS:
        raise ConfigError(f"fps must be between {MIN_FPS} and {MAX_FPS}, got {float(fps):g}.")
    return fps


# ----------------------------------------------------------------------------------------------------------
# Files


def check_video_path(path: str | os.PathLike, folders: Sequence[str | os.PathLike]) -> Path:
    """The file of a VIDEO input, with links and ``..`` resolved, if it lies inside one of ``folders`` (ComfyUI's
    input, output and temp folders).

    Raises:
        MediaError: it lies elsewhere (an absolute or ``../`` file name, or a link out of the folders).
    """
    resolved = Path(os.path.realpath(path))
    if any(resolved.is_relative_to(os.path.realpath(folder)) for folder in folders):
        return resolved
    raise MediaError(
        f"The video file {Path(path).name!r} is outside ComfyUI's input, output and temp folders, and LatentSync "
        "reads no other files: put the video in ComfyUI's input folder and load it from there."
    )


@contextlib.contextmanager
def scratch_dir(root: str | Path) -> Iterator[Path]:
    """A new folder under ``root`` (ComfyUI's temp directory), deleted with its contents when the block ends,
    whether it ends normally, by an error or by a cancel."""
    path = Path(root) / f"latentsync-{secrets.token_hex(6)}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
