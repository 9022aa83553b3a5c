"""Reading audio with PyAV: any file FFmpeg can demux (wav, mp3, flac, m4a, aac, ogg, the sound of a video).

`load_audio` returns the whole signal at the model's rate (16 kHz mono float32 is 64 kB per second); the
writer streams original-quality audio separately (`latentsync.media.writer.AudioSource`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..conventions import MODEL_SAMPLE_RATE
from ..errors import MediaError
from .video import decode_stream, describe_streams, open_media

# File suffixes of audio-only files (any video with sound can serve as audio too).
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".wma")


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a file as stored: rate (Hz), channel count, duration (seconds), codec name,
    and FFmpeg channel layout name (e.g. "stereo")."""

    sample_rate: int
    channels: int
    duration: float
    codec: str
    layout: str


def _audio_stream(container: av.container.InputContainer, path: Path) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise MediaError(
            f"{path} has no audio track (it contains: {describe_streams(container)}). "
            "Give an audio file (.wav, .mp3, .flac, .m4a, ...) or a video that has sound."
        )
    return container.streams.audio[0]


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Rate, channels, duration and codec of the first audio stream of `path` (reads headers only).

    The duration is the container's; for formats without an index (raw .aac, some .mp3) it is an estimate.
    """
    path = Path(path)
    with open_media(path) as container:
        stream = _audio_stream(container, path)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        return AudioInfo(
            sample_rate=stream.codec_context.sample_rate,
            channels=stream.codec_context.channels,
            duration=duration,
            codec=stream.codec_context.name,
            layout=stream.codec_context.layout.name,
        )


def decode_audio(path: str | os.PathLike, sample_rate: int | None = None) -> Iterator[tuple[Fraction, np.ndarray]]:
    """Stream the first audio track of `path` as float32 chunks of shape (channels, n), all channels kept.

    Yields `(input_seconds, chunk)`: the exact duration of the decoded input behind this chunk, and the chunk
    converted to `sample_rate` (the file's rate when None). The resampler's tail comes last, with
    `input_seconds == 0`. Undecodable packets are skipped (up to a bound, see `decode_stream`).
    """
    path = Path(path)
    with open_media(path) as container:
        stream = _audio_stream(container, path)
        resampler: av.AudioResampler | None = None
        for frame in decode_stream(container.demux(stream), stream, path):
            if resampler is None:
                # Planar float keeps every channel apart; the layout (and so the channel count) is the file's.
                resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sample_rate or frame.sample_rate)
            converted = resampler.resample(frame)
            yield Fraction(frame.samples, frame.sample_rate), _planar(converted, frame.layout.nb_channels)
        if resampler is not None:
            yield Fraction(0), _planar(resampler.resample(None), resampler.layout.nb_channels)


def _planar(frames: list[av.AudioFrame], channels: int) -> np.ndarray:
    """Concatenate planar float frames into one array of shape (channels, n)."""
    if not frames:
        return np.zeros((channels, 0), dtype=np.float32)
    return np.concatenate([frame.to_ndarray() for frame in frames], axis=1).astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, sample_rate: int = MODEL_SAMPLE_RATE, mono: bool = True) -> np.ndarray:
    """Decode the first audio track of `path`, resampled to `sample_rate`.

    Returns float32 in [-1, 1] of shape (n,) when `mono` (channels averaged), else (channels, n). The length is
    exactly round(decoded_input_seconds * sample_rate), so it matches the decoded duration to the
    sample; that duration may exceed the container's by the codec's padding (up to about a packet for AAC
    in MP4, more for raw .aac, which stores no padding information). Works for any input rate, channel count
    and sample format. PCM16 input at `sample_rate` comes back as exactly int16 / 32768.

    Raises `MediaError` when the file is missing or unreadable, has no audio track, or holds no samples.
    """
    input_seconds = Fraction(0)
    chunks = []
    for decoded_seconds, chunk in decode_audio(path, sample_rate):
        input_seconds += decoded_seconds
        chunks.append(chunk.mean(axis=0) if mono else chunk)
    if input_seconds == 0:
        raise MediaError(f"{path} has an audio track but it holds no samples (zero length). Use a file with sound.")
    expected = round(input_seconds * sample_rate)
    samples = np.concatenate(chunks, axis=-1)[..., :expected]
    if samples.shape[-1] < expected:
        padding = [(0, 0)] * (samples.ndim - 1) + [(0, expected - samples.shape[-1])]
        samples = np.pad(samples, padding)
    return np.ascontiguousarray(samples, dtype=np.float32)
