"""Synthetic clips for the media tests, written with PyAV.

Every video frame carries its own index as eight black/white columns in its lower half (`frame_index` reads it
back, robust to lossy coding), a moving bar in the upper half, and a white marker in the top-left corner so a
wrong rotation or flip is visible. Audio is a sine per channel or a speech-like harmonic signal.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from latentsync.conventions import SAMPLES_PER_MODEL_FRAME

INDEX_BITS = 8
# Containers and encoders exercised by the decoding tests: (file suffix, video codec, pixel format).
VIDEO_FORMATS = (
    (".mp4", "libx264", "yuv420p"),
    (".mkv", "libx264", "yuv420p"),
    (".mov", "mpeg4", "yuv420p"),
    (".webm", "libvpx-vp9", "yuv420p"),
    (".avi", "mjpeg", "yuvj420p"),
)
# Audio containers by suffix: (container format, codec, sample format the encoder takes).
AUDIO_FORMATS = {
    ".wav": ("wav", "pcm_s16le", "s16"),
    ".flac": ("flac", "flac", "s16"),
    ".mp3": ("mp3", "libmp3lame", "fltp"),
    ".m4a": ("ipod", "aac", "fltp"),
    ".aac": ("adts", "aac", "fltp"),
    ".ogg": ("ogg", "libopus", "flt"),
}


def pattern_frame(index: int, width: int, height: int) -> np.ndarray:
    """A test frame of shape (height, width, 3), uint8, that encodes `index` (0..255)."""
    frame = np.full((height, width, 3), 48, dtype=np.uint8)
    half, quarter = height // 2, height // 4
    frame[:quarter, : width // 4] = 255  # orientation marker: top-left corner only
    bar_x = (index * 3) % max(width - width // 4 - 4, 1) + width // 4
    frame[quarter:half, bar_x : bar_x + 4] = (255, 64, 0)
    column_edges = np.linspace(0, width, INDEX_BITS + 1).round().astype(int)
    for bit in range(INDEX_BITS):
        if (index >> bit) & 1:
            frame[half:, column_edges[bit] : column_edges[bit + 1]] = 255
        else:
            frame[half:, column_edges[bit] : column_edges[bit + 1]] = 0
    return frame


def frame_index(frame: np.ndarray) -> int:
    """The index `pattern_frame` encoded into an upright decoded frame of shape (h, w, 3)."""
    height, width = frame.shape[:2]
    column_edges = np.linspace(0, width, INDEX_BITS + 1).round().astype(int)
    lower = frame[height // 2 + 2 :].astype(np.float32).mean(axis=(0, 2))
    bits = [lower[column_edges[b] + 1 : column_edges[b + 1] - 1].mean() > 128 for b in range(INDEX_BITS)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def sine(frequency: float | Sequence[float], seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """Sines of shape (channels, n), float32; one channel per entry of `frequency`."""
    frequencies = [frequency] if np.isscalar(frequency) else list(frequency)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return np.stack([amplitude * np.sin(2 * np.pi * f * t) for f in frequencies]).astype(np.float32)


def delay(wave: np.ndarray, frames: int) -> np.ndarray:
    """``wave`` delayed by ``frames`` 25 fps frames (silence in front), or advanced (cut) when negative."""
    if frames >= 0:
        return np.concatenate([np.zeros(frames * SAMPLES_PER_MODEL_FRAME, np.float32), wave])
    return wave[-frames * SAMPLES_PER_MODEL_FRAME :]


def speech_like(seconds: float, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Syllable-like bursts (4 Hz envelope) of a 120 Hz harmonic voice, shape (channels, n), float32."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    voice = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    mono = (0.3 * envelope * voice / np.abs(voice).max()).astype(np.float32)
    return np.repeat(mono[None], channels, axis=0)


def dominant_frequency(samples: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the largest spectral peak of a 1-D signal, refined by parabolic interpolation."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = int(np.argmax(spectrum[1:-1])) + 1
    left, centre, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
    offset = 0.5 * (left - right) / (left - 2 * centre + right)
    return (peak + offset) * sample_rate / len(samples)


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}[channels]


def _encode_audio(container, stream, samples: np.ndarray, sample_rate: int, sample_format: str) -> None:
    """Encode planar float samples (channels, n) through `stream` in 1024-sample frames."""
    resampler = av.AudioResampler(format=sample_format, layout=_layout(samples.shape[0]), rate=sample_rate)
    for start in range(0, samples.shape[1], 1024):
        chunk = np.ascontiguousarray(samples[:, start : start + 1024])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=_layout(samples.shape[0]))
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        for converted in resampler.resample(frame):
            container.mux(stream.encode(converted))
    for converted in resampler.resample(None):
        container.mux(stream.encode(converted))
    container.mux(stream.encode(None))


def write_audio(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write planar float samples (channels, n) to `path`; the suffix picks the format (see `AUDIO_FORMATS`)."""
    container_format, codec, sample_format = AUDIO_FORMATS[Path(path).suffix]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=_layout(samples.shape[0]))
        _encode_audio(container, stream, samples, sample_rate, sample_format)
    return Path(path)


def write_empty_wav(path: Path, sample_rate: int = 16000) -> Path:
    """A valid WAV header with zero samples."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
    return Path(path)


def write_video(
    path: Path,
    num_frames: int = 30,
    fps: Fraction = Fraction(30),
    size: tuple[int, int] = (64, 48),
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    times: Sequence[Fraction] | None = None,
    rotation: int = 0,
    gop_size: int | None = None,
    audio: np.ndarray | None = None,
    audio_rate: int = 48000,
) -> Path:
    """Write a pattern clip; `size` is (width, height) as stored (before any rotation metadata).

    `times` (seconds, increasing, one more entry than frames: the last is the end of the last frame) makes a
    variable-frame-rate clip with millisecond timestamps; otherwise frame k starts at k / fps. `rotation` is the
    display-matrix angle in degrees, counter-clockwise (FFmpeg's convention). `audio` (channels, n) adds an AAC
    track at `audio_rate`.
    """
    width, height = size
    time_base = Fraction(1, 1000) if times is not None else 1 / Fraction(fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        if codec == "libx264":
            stream.codec_context.options = {"crf": "12", "preset": "ultrafast"}
        elif codec == "libvpx-vp9":
            stream.codec_context.options = {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        else:
            stream.codec_context.qscale = 2
            stream.codec_context.flags |= av.codec.context.Flags.qscale
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=audio_rate, layout=_layout(audio.shape[0]))
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(k, width, height), format="rgb24")
            frame.time_base = time_base
            if times is None:
                frame.pts = k
                frame.duration = 1
            else:
                frame.pts = round(times[k] * 1000)
                frame.duration = round(times[k + 1] * 1000) - frame.pts
            container.mux(stream.encode(frame.reformat(format=pix_fmt)))
        container.mux(stream.encode(None))
        if audio_stream is not None:
            _encode_audio(container, audio_stream, audio, audio_rate, "fltp")
    return Path(path)
