"""Fitting a video to an audio track of another length: which source frame each output frame shows.

Pure functions of frame counts, durations and a `Fraction` frame rate; nothing here reads files. Output frame
i lasts from i / fps to (i + 1) / fps. The audio length in frames is round(audio_duration * fps), so every
policy's output duration is within half a frame of its target (the audio, or the video for "pad").

Policies when the audio is longer than the video (`long_audio`):
    "pingpong"  0, 1, ..., n-1, n-1, ..., 1, 0, 0, 1, ...  (the reference's `loop_video`: forward, then
                reversed, so the turning frames are shown twice)
    "loop"      0, 1, ..., n-1, 0, 1, ...
    "hold"      0, 1, ..., n-1, n-1, n-1, ...
Policies when the audio is shorter (`short_audio`):
    "trim"      stop with the audio: the output has as many frames as the audio lasts
    "pad"       keep the whole video; the audio is padded with silence
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import ConfigError, MediaError

LONG_AUDIO_POLICIES = ("pingpong", "loop", "hold")
SHORT_AUDIO_POLICIES = ("trim", "pad")


# A frame rate given as a float (29.97, 29.97002997 ...) is read as the nearest fraction with at most this denominator
# (29.97002997 -> 30000/1001); text ("30000/1001", "29.97") and exact numbers are read exactly.
_MAX_FPS_DENOMINATOR = 10_000


def parse_fps(value: float | int | str | Fraction, name: str = "fps") -> Fraction:
    """A frame rate as an exact positive `Fraction`: the one parser of every fps the library, the command line and
    the nodes are given.

    Raises:
        ConfigError: not a finite positive number (``name`` says which setting).
    """
    try:
        fps = Fraction(value)
        if isinstance(value, float):
            fps = fps.limit_denominator(_MAX_FPS_DENOMINATOR)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        raise ConfigError(f"{name} must be a number such as 25, 29.97 or 30000/1001, got {value!r}") from None
    if fps <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return fps


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def samples_for_frames(num_frames: int, fps: Fraction, sample_rate: int) -> int:
    """Audio samples at `sample_rate` that last as long as `num_frames` at `fps` (rounded half up)."""
    return _round_half_up(num_frames / parse_fps(fps) * sample_rate)


@dataclass(frozen=True)
class Timeline:
    """The output of fitting `num_video_frames` source frames at `fps` to `audio_duration` seconds of audio."""

    num_video_frames: int
    num_output_frames: int
    fps: Fraction
    audio_duration: Fraction
    long_audio: str
    short_audio: str

    @property
    def duration(self) -> Fraction:
        """Output duration in seconds, exactly."""
        return self.num_output_frames / self.fps

    @property
    def video_seconds_cut(self) -> Fraction:
        """Seconds of video left out because the audio ends first ("trim"); 0 when the whole video is used."""
        return max(self.num_video_frames - self.num_output_frames, 0) / self.fps

    @property
    def revisits_source(self) -> bool:
        """Whether some output frame shows an earlier source frame again (the reader must go back or cache)."""
        return self.num_output_frames > self.num_video_frames and self.long_audio != "hold"

    def source_index(self, i: int) -> int:
        """Index of the source frame shown as output frame `i`."""
        if not 0 <= i < self.num_output_frames:
            raise IndexError(f"output frame {i} is outside 0..{self.num_output_frames - 1}")
        n = self.num_video_frames
        if i < n:
            return i
        if self.long_audio == "hold" or n == 1:
            return n - 1
        if self.long_audio == "loop":
            return i % n
        phase = i % (2 * n)  # pingpong: one period is the video forward, then reversed
        return phase if phase < n else 2 * n - 1 - phase

    def source_indices(self) -> Iterator[int]:
        """`source_index(i)` for every output frame, in order."""
        return (self.source_index(i) for i in range(self.num_output_frames))

    def num_audio_samples(self, sample_rate: int) -> int:
        """Audio samples that cover the output exactly: round(duration * sample_rate)."""
        return samples_for_frames(self.num_output_frames, self.fps, sample_rate)

    def audio_pad_samples(self, sample_rate: int) -> int:
        """Silent samples to append to the audio (0 when it is long enough)."""
        return max(0, self.num_audio_samples(sample_rate) - _round_half_up(self.audio_duration * sample_rate))

    def fit_audio(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Trim, or pad with silence, `samples` of shape (..., n) at `sample_rate` to the output duration."""
        target = self.num_audio_samples(sample_rate)
        samples = samples[..., :target]
        padding = [(0, 0)] * (samples.ndim - 1) + [(0, target - samples.shape[-1])]
        return np.pad(samples, padding)


def plan_timeline(
    num_video_frames: int,
    audio_duration_s: float | Fraction,
    fps: Fraction | int,
    long_audio: str = "pingpong",
    short_audio: str = "trim",
) -> Timeline:
    """Decide the output length and the source frame of every output frame (see the module docstring)."""
    if long_audio not in LONG_AUDIO_POLICIES:
        raise ConfigError(f"long_audio must be one of {LONG_AUDIO_POLICIES}, got {long_audio!r}")
    if short_audio not in SHORT_AUDIO_POLICIES:
        raise ConfigError(f"short_audio must be one of {SHORT_AUDIO_POLICIES}, got {short_audio!r}")
    fps = parse_fps(fps)
    if num_video_frames < 1:
        raise MediaError("The video has no frames; give a video with at least one frame.")
    audio_duration = Fraction(audio_duration_s)
    num_audio_frames = _round_half_up(audio_duration * fps)
    if num_audio_frames < 1:
        raise MediaError(
            f"The audio lasts {float(audio_duration):.4f} s, less than half a frame at {fps} fps; give longer audio."
        )
    if num_audio_frames >= num_video_frames or short_audio == "trim":
        num_output_frames = num_audio_frames
    else:
        num_output_frames = num_video_frames
    return Timeline(num_video_frames, num_output_frames, fps, audio_duration, long_audio, short_audio)
