"""Writing the result video with PyAV: H.264 (libx264, yuv420p, BT.709) plus the original audio as AAC.

H.264 in 4:2:0 (yuv420p, what every player takes) stores only even sizes: its frame cropping works in steps of two
pixels, so an odd width or height cannot be stored in 4:2:0 at all. Odd sizes are written in 4:4:4 (yuv444p, H.264
High 4:4:4), which keeps the source's size exactly and plays in FFmpeg-based players (VLC, mpv, ComfyUI); browsers
and QuickTime do not decode 4:4:4.

The file is written under a hidden temporary name in the destination folder and renamed into place when the
writer closes without error; on error the temporary file is deleted, so a failed run leaves nothing behind.
Frames and audio are encoded as they arrive (audio interleaved with video), so memory does not grow with
the length of the clip.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import MediaError
from ..files import create_temporary
from .audio import decode_audio, probe_audio
from .timeline import samples_for_frames

logger = logging.getLogger(__name__)

VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"
AAC_FRAME_SIZE = 1024  # samples per AAC-LC frame; the encoder takes exactly this many (the last may be fewer)
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
FALLBACK_AUDIO_RATE = 48000  # used when the source rate is not one AAC can store
CONTAINER_SUFFIXES = (".mp4", ".mov", ".mkv")
# H.264 quality of the output (lower is better; 18 is visually lossless for most content).
OUTPUT_CRF = 18
# Tag of the temporary file a video is written to until it is complete (`latentsync.files.create_temporary`).
PARTIAL_TAG = "partial"
BT709 = 1  # FFmpeg's enum value for ITU-R BT.709 colourspace, primaries and transfer
LIMITED_RANGE = 1  # FFmpeg's AVCOL_RANGE_MPEG (16..235)
# FFmpeg's default layout per channel count, for sources whose channel order is unspecified ("2 channels").
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


class AudioSource(ABC):
    """Audio to mux into a written video, streamed at its own rate and channel layout."""

    sample_rate: int
    layout: str  # FFmpeg channel layout name, e.g. "mono", "stereo", "5.1"

    @abstractmethod
    def chunks(self, sample_rate: int) -> Iterator[np.ndarray]:
        """The whole signal as float32 chunks of shape (channels, n) at `sample_rate`, in this source's layout."""


class AudioFile(AudioSource):
    """The first audio track of a file (an audio file, or the original video), decoded as it is muxed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        info = probe_audio(self.path)
        self.sample_rate = info.sample_rate
        self.layout = DEFAULT_LAYOUTS.get(info.channels, info.layout) if "channels" in info.layout else info.layout

    def chunks(self, sample_rate: int) -> Iterator[np.ndarray]:
        for _, chunk in decode_audio(self.path, sample_rate):
            yield chunk


class AudioArray(AudioSource):
    """Samples in memory of shape (channels, n) or (n,), float in [-1, 1] (e.g. a ComfyUI AUDIO waveform)."""

    def __init__(self, samples: np.ndarray, sample_rate: int):
        samples = np.asarray(samples, dtype=np.float32)
        self.samples = samples[None] if samples.ndim == 1 else samples
        if self.samples.ndim != 2 or self.samples.shape[0] not in DEFAULT_LAYOUTS:
            raise MediaError(
                f"Audio samples must have shape (n,) or (channels, n) with 1 to 8 channels, got {samples.shape}."
            )
        if sample_rate <= 0:
            raise MediaError(f"The audio sample rate must be positive, got {sample_rate}.")
        self.sample_rate = int(sample_rate)
        self.layout = DEFAULT_LAYOUTS[self.samples.shape[0]]

    def chunks(self, sample_rate: int) -> Iterator[np.ndarray]:
        if sample_rate == self.sample_rate:
            yield self.samples
            return
        resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=sample_rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(self.samples), format="fltp", layout=self.layout)
        frame.sample_rate = self.sample_rate
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            yield converted.to_ndarray()


class _AudioTrack:
    """Encodes an `AudioSource` into an AAC stream, trimmed or padded with silence to a given sample count."""

    def __init__(self, container: av.container.OutputContainer, source: AudioSource, bitrate: int):
        self.sample_rate = source.sample_rate if source.sample_rate in AAC_SAMPLE_RATES else FALLBACK_AUDIO_RATE
        self.layout = source.layout
        self.stream = container.add_stream(AUDIO_CODEC, rate=self.sample_rate, layout=self.layout)
        self.stream.bit_rate = bitrate
        self._container = container
        self._chunks = source.chunks(self.sample_rate)
        self._pending = np.zeros((av.AudioLayout(self.layout).nb_channels, 0), dtype=np.float32)
        self.samples_written = 0

    def _take(self, count: int) -> np.ndarray:
        """The next `count` samples of shape (channels, count), silence once the source has run out."""
        while self._pending.shape[1] < count:
            chunk = next(self._chunks, None)
            if chunk is None:
                silence = np.zeros((self._pending.shape[0], count - self._pending.shape[1]), dtype=np.float32)
                self._pending = np.concatenate([self._pending, silence], axis=1)
            else:
                self._pending = np.concatenate([self._pending, chunk], axis=1)
        taken, self._pending = self._pending[:, :count], self._pending[:, count:]
        return np.ascontiguousarray(taken)

    def write_until(self, num_samples: int, final: bool) -> None:
        """Encode up to `num_samples` in total: whole AAC frames only, unless `final` (then flush the encoder)."""
        while self.samples_written + AAC_FRAME_SIZE <= num_samples or (final and self.samples_written < num_samples):
            count = min(AAC_FRAME_SIZE, num_samples - self.samples_written)
            frame = av.AudioFrame.from_ndarray(self._take(count), format="fltp", layout=self.layout)
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self.samples_written
            self._container.mux(self.stream.encode(frame))
            self.samples_written += count
        if final:
            self._container.mux(self.stream.encode(None))


class VideoWriter:
    """Write RGB frames to an H.264 (crf `crf`, yuv420p, BT.709) video, with an optional AAC audio track.

    Use as a context manager; `write_frame` takes arrays of shape (height, width, 3), uint8. The output plays
    at exactly `fps` (a `Fraction`; pass the source's rate to keep timing) and has exactly `width` x `height`
    pixels: yuv420p when both are even, yuv444p when one is odd (`pixel_format`; see the module docstring).

    The audio (`AudioFile` or `AudioArray`) keeps its own rate and channels (a rate AAC cannot store becomes
    48 kHz) and is cut, or padded with silence, to the video's duration, frames_written / fps, to the sample.
    With a `Timeline`, that is the timeline's duration: "trim" cuts the audio's sub-frame remainder, "pad"
    adds silence after it; looping the video never loops the audio.

    Raises `MediaError` before encoding anything when the folder is missing or not writable, the suffix is not
    one of `CONTAINER_SUFFIXES`, or the encoder cannot be set up.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: Fraction | int,
        width: int,
        height: int,
        crf: int = OUTPUT_CRF,
        audio: AudioSource | None = None,
        *,
        preset: str = "medium",
        audio_bitrate: int = 192_000,
    ):
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.width, self.height = int(width), int(height)
        if self.fps <= 0 or self.width < 1 or self.height < 1:
            raise MediaError(f"Cannot write a {width}x{height} video at {fps} fps; size and fps must be positive.")
        if not 0 <= crf <= 51:
            raise MediaError(f"crf must be between 0 (lossless) and 51, got {crf}.")
        if self.path.suffix.lower() not in CONTAINER_SUFFIXES:
            suffixes = ", ".join(CONTAINER_SUFFIXES)
            raise MediaError(f"Cannot write {self.path.name}: use one of the file types {suffixes}.")
        folder = self.path.parent
        if not folder.is_dir():
            raise MediaError(f"Output folder {folder} does not exist (or is not a folder); create it first.")
        self.pixel_format = "yuv420p" if self.width % 2 == 0 and self.height % 2 == 0 else "yuv444p"
        if self.pixel_format != "yuv420p":
            logger.info(
                "%dx%d has an odd side, which H.264 4:2:0 cannot store: writing 4:4:4 (yuv444p) to keep the size",
                self.width, self.height,
            )  # fmt: skip
        self.frames_written = 0
        try:
            self.temp_path = create_temporary(self.path, tag=PARTIAL_TAG)
        except OSError as error:
            raise MediaError(
                f"Cannot write to the output folder {folder} ({error}); choose a writable folder."
            ) from error
        try:
            self._open(crf, preset, audio, audio_bitrate)
        except BaseException as error:
            self.temp_path.unlink(missing_ok=True)
            if isinstance(error, (av.FFmpegError, ValueError)):
                raise MediaError(f"Cannot set up the encoder for {self.path} ({error}).") from error
            raise

    def _open(self, crf: int, preset: str, audio: AudioSource | None, audio_bitrate: int) -> None:
        container_options = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov") else {}
        self._container = av.open(str(self.temp_path), "w", options=container_options)
        try:
            stream = self._container.add_stream(VIDEO_CODEC, rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pixel_format
            stream.time_base = 1 / self.fps
            stream.codec_context.options = {"crf": str(crf), "preset": preset}
            context = stream.codec_context
            context.colorspace = context.color_primaries = context.color_trc = BT709
            context.color_range = LIMITED_RANGE
            self._video = stream
            self._audio = _AudioTrack(self._container, audio, audio_bitrate) if audio is not None else None
            self._container.start_encoding()  # opens the encoders now, so a bad setting fails before any work
        except BaseException:
            self._container.close()
            raise

    @property
    def duration(self) -> Fraction:
        """Seconds written so far, exactly."""
        return self.frames_written / self.fps

    def write_frame(self, rgb: np.ndarray) -> None:
        """Append one frame of shape (height, width, 3), uint8."""
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise MediaError(
                f"write_frame expects a ({self.height}, {self.width}, 3) uint8 array, got {rgb.shape} {rgb.dtype}."
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format=self.pixel_format, dst_colorspace=BT709, dst_color_range=LIMITED_RANGE)
        frame.pts = self.frames_written
        frame.time_base = 1 / self.fps  # the stream's own time base changes once the muxer starts
        self._container.mux(self._video.encode(frame))
        self.frames_written += 1
        if self._audio is not None:
            self._audio.write_until(self._audio_samples(), final=False)

    def _audio_samples(self) -> int:
        """Audio samples that cover the frames written so far."""
        return samples_for_frames(self.frames_written, self.fps, self._audio.sample_rate)

    def close(self) -> None:
        """Flush the encoders, finish the file and move it to `path` (replacing any file there)."""
        try:
            if self.frames_written == 0:
                raise MediaError(f"No frames were written to {self.path}; nothing to save.")
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.write_until(self._audio_samples(), final=True)
            self._container.close()
            os.replace(self.temp_path, self.path)
        except BaseException as error:
            self.abort()
            if isinstance(error, (av.FFmpegError, OSError)):
                raise MediaError(f"Could not finish writing {self.path} ({error}).") from error
            raise

    def abort(self) -> None:
        """Stop writing and delete the temporary file; `path` is left untouched."""
        try:
            self._container.close()
        except (av.FFmpegError, OSError) as error:
            logger.debug("closing the aborted output %s failed: %s", self.temp_path, error)
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> Path:
    """Write ``(channels, n)`` float samples losslessly as a 32-bit float WAV at ``sample_rate``; returns the path."""
    path = Path(path)
    samples = np.ascontiguousarray(np.asarray(samples, dtype=np.float32).reshape(-1, np.shape(samples)[-1]))
    layout = DEFAULT_LAYOUTS[samples.shape[0]]
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path
