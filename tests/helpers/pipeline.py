"""Helpers for the pipeline tests: stand-in models, a synthetic talking "face" clip and a detector for it.

The clip is drawn, not filmed: a smooth background, a skin-coloured ellipse with eyes and a mouth (the face, present
in the frames asked for), and the frame's index as eight black/white blocks along the top edge, far from the face,
so the order of the output frames can be read back after H.264. `SyntheticFaceDetector` finds the ellipse by its
colour and returns points at fixed offsets from its centre, so the pipeline's alignment sees a steady face.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from latentsync.face.detectors import Face, FaceDetector
from latentsync.media.video import VideoReader

SKIN = np.array([224, 172, 150], dtype=np.uint8)
INDEX_BITS = 8
INDEX_BLOCK = 8  # pixels per index block (side)
# Offsets of the three alignment points from the face centre (x, y): eyebrow centres and nose.
POINT_OFFSETS = np.array([[-22.0, -24.0], [22.0, -24.0], [0.0, 4.0]])
FACE_HALF_SIZE = (34, 50)  # (half width, half height) of the ellipse


def face_frame(index: int, size: tuple[int, int] = (160, 160), face: bool = True, marks: bool = True) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 frame of the synthetic clip (``size`` is (width, height)); ``marks`` draws
    the index blocks."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.stack([60 + 60 * x / width, 50 + 50 * y / height, np.full_like(x, 90)], axis=-1)
    if face:
        cx, cy = width / 2, height / 2 + 12
        half_w, half_h = FACE_HALF_SIZE
        inside = ((x - cx) / half_w) ** 2 + ((y - cy) / half_h) ** 2 <= 1
        frame[inside] = SKIN
        for eye_x in (cx - 14, cx + 14):
            frame[(np.abs(x - eye_x) < 4) & (np.abs(y - (cy - 14)) < 3)] = (40, 30, 30)
        mouth_open = 2 + 3 * (index % 4)
        frame[(np.abs(x - cx) < 12) & (np.abs(y - (cy + 24)) < mouth_open)] = (120, 40, 50)
    for bit in range(INDEX_BITS if marks else 0):
        left = 4 + bit * INDEX_BLOCK
        frame[2 : 2 + INDEX_BLOCK, left : left + INDEX_BLOCK] = 255 if (index >> bit) & 1 else 0
    return frame.astype(np.uint8)


def read_index(frame: np.ndarray) -> int:
    """The index `face_frame` drew into a decoded frame."""
    bits = [frame[4:8, 6 + bit * INDEX_BLOCK : 10 + bit * INDEX_BLOCK].mean() > 128 for bit in range(INDEX_BITS)]
    return sum(1 << bit for bit, on in enumerate(bits) if on)


class SyntheticFaceDetector(FaceDetector):
    """Finds the skin-coloured ellipse of `face_frame`; its three points sit at fixed offsets from its centre."""

    name = "synthetic"

    def _find_faces(self, image: np.ndarray) -> list[Face]:
        skin = np.all(np.abs(image.astype(np.int16) - SKIN) < 24, axis=-1)
        if skin.sum() < 500:
            return []
        ys, xs = np.nonzero(skin)
        centre = np.array([xs.mean(), ys.mean()])
        half = np.array(FACE_HALF_SIZE, dtype=np.float64)
        box = np.concatenate([centre - half - 6, centre + half + 6])
        return [Face(box=box, score=0.99, points3=centre + POINT_OFFSETS)]


class ZeroNoiseUNet(torch.nn.Module):
    """Stands in for the UNet where a test checks mechanics, not generation: it predicts zero noise, so DDIM only
    rescales the initial noise and the VAE decodes noise into the mouth region, at no UNet cost."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the pipeline a device and a dtype

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(sample[:, :4])


class PoolingCodec:
    """A `LatentCodec` without weights: 8x average pooling into 4 channels and nearest upsampling back. Stands in
    for the VAE where only the pipeline's own work and buffers are measured."""

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(pixels.float(), 8)
        return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(latents[:, :3].float(), scale_factor=8, mode="nearest")


def write_clip(
    path: Path,
    num_frames: int,
    fps: Fraction = Fraction(25),
    size: tuple[int, int] = (160, 160),
    has_face: Callable[[int], bool] = lambda index: True,
    times: Sequence[Fraction] | None = None,
    audio: np.ndarray | None = None,
    audio_rate: int = 48000,
    marks: bool = True,
) -> Path:
    """Write the synthetic clip as H.264 (near-lossless) with optional AAC audio ``(channels, n)``.

    ``times`` (seconds, one more entry than frames: the last one ends the last frame) makes it variable-frame-rate.
    """
    width, height = size
    time_base = Fraction(1, 1000) if times is not None else 1 / Fraction(fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.codec_context.options = {"crf": "8", "preset": "ultrafast"}
        audio_stream = None
        if audio is not None:
            layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            audio_stream = container.add_stream("aac", rate=audio_rate, layout=layout)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(face_frame(index, size, has_face(index), marks), format="rgb24")
            frame.time_base = time_base
            if times is None:
                frame.pts, frame.duration = index, 1
            else:
                frame.pts = round(times[index] * 1000)
                frame.duration = round(times[index + 1] * 1000) - frame.pts
            container.mux(stream.encode(frame.reformat(format="yuv420p")))
        container.mux(stream.encode(None))
        if audio_stream is not None:
            for start in range(0, audio.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(audio[:, start : start + 1024]), format="fltp", layout=layout
                )
                chunk.sample_rate, chunk.pts, chunk.time_base = audio_rate, start, Fraction(1, audio_rate)
                container.mux(audio_stream.encode(chunk))
            container.mux(audio_stream.encode(None))
    return Path(path)


def speech(seconds: float, sample_rate: int = 16000, channels: int = 1) -> np.ndarray:
    """Syllable-like bursts of a harmonic voice, ``(channels, n)`` float32."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 10))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2
    mono = (0.3 * envelope * voice / np.abs(voice).max()).astype(np.float32)
    return np.repeat(mono[None], channels, axis=0)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 16000) -> Path:
    """PCM16 WAV of ``(channels, n)`` float samples."""
    layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray((samples.T * 32767).astype(np.int16).reshape(1, -1)), format="s16", layout=layout
        )
        frame.sample_rate = sample_rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


def decode_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a (short) video as RGB uint8, decoded as the pipeline decodes its input."""
    with VideoReader(path) as reader:
        return [rgb for _, rgb in reader.frames()]
