"""Reading video files with PyAV: probing, streaming upright RGB frames, and resampling them to a frame rate.

Frames are decoded one at a time by a single persistent decoder per `VideoReader` (so B-frame reordering
buffers are only flushed by an explicit seek) and never collected into a list: memory does not grow with the
length of the clip. Timestamps are exact `Fraction`s internally and seconds (`float`) at the interface.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import Interpolation
import numpy as np

from ..errors import MediaError

logger = logging.getLogger(__name__)

# File suffixes of the videos and of the still images (held for the length of the speech) that can be lip-synced.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".flv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Undecodable packets in a row that are skipped (with a warning) before reading gives up.
MAX_CONSECUTIVE_DECODE_FAILURES = 10
# Packets whose timestamps are inspected when the reader opens, to flag a variable frame rate.
VFR_PROBE_PACKETS = 300
# A clip whose decoded frames end this much earlier than its header says is reported as probably truncated.
TRUNCATION_WARNING_SECONDS = 0.5
# Decoded frames `SourceFrameCursor` keeps by default (about 43 frames of 1080x1920 RGB).
DEFAULT_CURSOR_CACHE_BYTES = 256 * 2**20


def open_media(path: str | os.PathLike) -> av.container.InputContainer:
    """Open a media file for reading, turning every way this can fail into a `MediaError` that says what to do."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"Media file not found: {path}. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise MediaError(f"{path} is a folder; give the path of a video or audio file inside it.")
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is empty (0 bytes); it was probably not fully copied or downloaded. Copy it again.")
    try:
        return av.open(str(path))
    except PermissionError as error:
        raise MediaError(f"{path} cannot be read: permission denied. Make the file readable.") from error
    except av.FFmpegError as error:
        raise MediaError(
            f"{path} is not a readable video or audio file ({error}). It is damaged or not media at all; "
            "re-export it, e.g. as MP4 (H.264 + AAC) or WAV."
        ) from error


def describe_streams(container: av.container.InputContainer) -> str:
    """What a container holds, for error messages, e.g. `"audio (aac), video (h264)"`."""
    kinds = [f"{stream.type} ({stream.codec_context.name})" for stream in container.streams]
    return ", ".join(kinds) or "no streams at all"


def decode_stream(
    packets: Iterator[av.Packet], stream: av.stream.Stream, path: Path
) -> Iterator[av.VideoFrame | av.AudioFrame]:
    """Decode `packets` of `stream`, skipping up to `MAX_CONSECUTIVE_DECODE_FAILURES` bad packets in a row."""
    failures = 0
    try:
        for packet in packets:
            try:
                frames = stream.decode(packet)
            except av.FFmpegError as error:
                failures += 1
                if failures > MAX_CONSECUTIVE_DECODE_FAILURES:
                    raise MediaError(
                        f"{path}: {failures} {stream.type} packets in a row could not be decoded (last: {error}). "
                        "The file is badly damaged; re-encode or re-download it."
                    ) from error
                logger.warning(
                    "%s: skipped an undecodable %s packet at pts %s (%s)", path, stream.type, packet.pts, error
                )
                continue
            failures = 0
            yield from frames
    except av.FFmpegError as error:  # raised by the demuxer, not by the decoder
        raise MediaError(
            f"{path}: reading stopped with an error ({error}). Re-encode or re-download the file."
        ) from error


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` knows about a clip without decoding it (beyond its first frame).

    `width` and `height` are those of the upright frames `VideoReader` yields, i.e. after `rotation` (degrees,
    counter-clockwise, a multiple of 90) is applied. `fps` is the average frame rate; `is_vfr` says the
    timestamps of the first `VFR_PROBE_PACKETS` frames are not evenly spaced.
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    is_vfr: bool
    rotation: int
    duration: float
    num_frames_estimate: int
    codec: str
    has_audio: bool


@dataclass(frozen=True)
class _DecodedFrame:
    time: Fraction  # seconds since the start of the video stream
    duration: Fraction
    frame: av.VideoFrame


_ACCURATE_RGB = (
    Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
)


class VideoReader:
    """Stream the frames of a video file as upright RGB arrays, with one persistent decoder.

    Use as a context manager. Each call of `frames()` or `frames_at_fps()` starts a new pass over the file
    (seeking back when needed); iterating an older pass after starting a new one raises `RuntimeError`.
    `frames_decoded` counts the frames the decoder produced over all passes (the cost of seeking included).

    Raises `MediaError` when the file is missing, empty, not media, has no video stream, or no frame of it
    can be decoded.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._container = open_media(self.path)
        try:
            self._stream = self._find_video_stream()
            self._stream.thread_type = "AUTO"
            self._pass = 0
            self.frames_decoded = 0
            self._packets = self._container.demux(self._stream)
            self._decoder = decode_stream(self._packets, self._stream, self.path)
            self._pending = self._first_frames()
            self._at_start = True
            self.info = self._probe(self._pending[0].rotation)
        except BaseException:
            self._container.close()
            raise

    def _find_video_stream(self) -> av.video.stream.VideoStream:
        # Cover art in audio files is stored as a one-picture "video" stream; it is not a video.
        streams = [s for s in self._container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            raise MediaError(
                f"{self.path} has no video stream (it contains: {describe_streams(self._container)}). "
                "Give a video file here (.mp4, .mov, .mkv, ...); audio-only files belong in the audio input."
            )
        return streams[0]

    def _first_frames(self) -> list[av.VideoFrame]:
        """Decode until the first frame appears (it carries the rotation); it is kept for the first pass.

        The same decoder iterator continues the first pass: a threaded decoder can return several frames for one
        packet, and a new iterator would lose the rest of them.
        """
        for frame in self._decoder:
            return [frame]
        raise MediaError(
            f"{self.path} has a video stream ({self._stream.codec_context.name}) but not one frame of it could be "
            "decoded. The file is damaged or uses an unsupported codec; re-encode it as H.264 MP4."
        )

    def _probe(self, frame_rotation: int) -> VideoInfo:
        stream = self._stream
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps:
            raise MediaError(f"{self.path}: the video stream has no frame rate. Re-encode it with a fixed frame rate.")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (self._container.duration or 0) / av.time_base
        quarter_turns = round(frame_rotation / 90) % 4
        width, height = stream.codec_context.width, stream.codec_context.height
        if quarter_turns % 2:
            width, height = height, width
        return VideoInfo(
            path=self.path,
            width=width,
            height=height,
            fps=Fraction(fps),
            is_vfr=self._timestamps_uneven(),
            rotation=quarter_turns * 90,
            duration=duration,
            num_frames_estimate=stream.frames or round(duration * fps),
            codec=stream.codec_context.name,
            has_audio=bool(self._container.streams.audio),
        )

    def _packet_times(self, limit: int | None = None) -> Iterator[tuple[int, int]]:
        """(pts, duration) of the video packets, in stream ticks, read by a separate demuxer (no decoding)."""
        with av.open(str(self.path)) as container:
            stream = container.streams[self._stream.index]
            for count, packet in enumerate(container.demux(stream)):
                if limit is not None and count >= limit:
                    break
                if packet.pts is not None:
                    yield packet.pts, packet.duration or 0

    def _timestamps_uneven(self) -> bool:
        pts = np.sort([pts for pts, _ in self._packet_times(VFR_PROBE_PACKETS)])
        steps = np.diff(pts)
        if len(steps) < 2:
            return False
        # Millisecond time bases round 1/30 s to 33 or 34 ticks: allow one tick, or 1 % of a frame.
        return bool(steps.max() - steps.min() > max(1, 0.01 * np.median(steps)))

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def fps(self) -> Fraction:
        return self.info.fps

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def height(self) -> int:
        return self.info.height

    @property
    def rotation(self) -> int:
        return self.info.rotation

    @property
    def duration(self) -> float:
        return self.info.duration

    @property
    def num_frames_estimate(self) -> int:
        return self.info.num_frames_estimate

    @property
    def has_audio(self) -> bool:
        return self.info.has_audio

    @property
    def is_vfr(self) -> bool:
        return self.info.is_vfr

    # -- decoding ---------------------------------------------------------------------------------------------

    def _origin(self) -> int:
        """Stream ticks of time zero: the stream's start time (0 when the container does not say)."""
        return self._stream.start_time if self._stream.start_time is not None else 0

    def _tolerance(self, fps: Fraction) -> Fraction:
        """Timestamp slack for rounding in the container: one tick, but at most an eighth of an output frame."""
        return min(Fraction(self._stream.time_base), 1 / (8 * fps))

    def _restart(self, start: Fraction) -> None:
        """Position the decoder on the last keyframe at or before `start` seconds (a no-op on a fresh reader)."""
        self._pass += 1
        if self._at_start and start == 0:
            self._at_start = False
            return
        ticks = self._origin() + int(start / self._stream.time_base)
        try:
            self._container.seek(ticks, stream=self._stream, backward=True, any_frame=False)
        except av.FFmpegError as error:
            raise MediaError(
                f"{self.path}: cannot seek to {float(start):.3f} s ({error}). Re-encode it as MP4."
            ) from error
        self._packets = self._container.demux(self._stream)
        self._decoder = decode_stream(self._packets, self._stream, self.path)
        self._pending = []
        self._at_start = False

    def _decoded(self, start: Fraction = Fraction(0)) -> Iterator[_DecodedFrame]:
        """Decoded frames from the last keyframe at or before `start` seconds, in presentation order."""
        self._restart(start)
        pass_id = self._pass
        time_base = Fraction(self._stream.time_base)
        nominal_duration = 1 / self.info.fps
        frames = itertools.chain(self._pending, self._decoder)
        self._pending = []
        previous: _DecodedFrame | None = None
        while True:
            # Checked before every read: an outdated pass must not consume the packets of the current one.
            if self._pass != pass_id:
                raise RuntimeError("a newer pass over this VideoReader was started; this iterator is no longer valid")
            frame = next(frames, None)
            if frame is None:
                break
            self.frames_decoded += 1
            if frame.pts is not None:
                time = (frame.pts - self._origin()) * time_base
            else:
                time = previous.time + previous.duration if previous else Fraction(0)
            duration = frame.duration * time_base if frame.duration else nominal_duration
            if previous is not None and time <= previous.time:
                logger.warning("%s: dropped a frame whose timestamp %.3f s does not increase", self.path, float(time))
                continue
            previous = _DecodedFrame(time, duration, frame)
            yield previous
        if previous is not None and start == 0:
            end = previous.time + previous.duration
            if end < self.info.duration - TRUNCATION_WARNING_SECONDS:
                logger.warning(
                    "%s: frames end at %.2f s but the file says %.2f s; it is probably truncated",
                    self.path, float(end), self.info.duration,
                )

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """An upright RGB array of shape (height, width, 3), uint8.

        swscale's default YUV->RGB path rounds coarsely (1-2 levels of bias, so a decode -> encode -> decode round
        trip cannot reach 45 dB); accurate rounding with full chroma interpolation removes that bias.
        """
        rgb = frame.reformat(
            format="rgb24",
            interpolation=_ACCURATE_RGB,
            src_color_range=frame.color_range,
        ).to_ndarray()
        quarter_turns = self.info.rotation // 90
        return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """Every decoded frame as `(timestamp_seconds, rgb)`; rgb has shape (height, width, 3), uint8, upright.

        Timestamps are presentation times since the start of the video stream.
        """
        for decoded in self._decoded():
            yield float(decoded.time), self._to_rgb(decoded.frame)

    def _spans(self, start: Fraction, tolerance: Fraction) -> Iterator[tuple[_DecodedFrame, Fraction]]:
        """Each decoded frame from `start` seconds on, with the time it stops being shown (the next frame's
        timestamp, or the end of the last frame)."""
        frames = self._decoded(start)
        previous = next(frames, None)
        if start > 0 and previous is not None and previous.time > start + tolerance:
            # The seek landed after `start` (an imprecise index, or a gap before the first frame): start over.
            frames = self._decoded(Fraction(0))
            previous = next(frames, None)
        for decoded in frames:
            yield previous, decoded.time
            previous = decoded
        if previous is not None:
            yield previous, previous.time + previous.duration

    def frames_at_fps(self, fps: Fraction | int, start_index: int = 0) -> Iterator[tuple[float, np.ndarray]]:
        """The clip resampled to `fps`, from output frame `start_index` on, as `(i / fps, rgb)`.

        Output frame i is the source frame displayed at time t = i / fps: the last one whose timestamp is at
        most t (within `_tolerance`). A gap before the first frame shows the first frame. Output frames exist
        while t is before the end of the last source frame. Works for variable frame rates; repeated source
        frames are yielded as separate copies. `start_index > 0` seeks instead of decoding from the start.
        """
        fps = Fraction(fps)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        tolerance = self._tolerance(fps)
        index = start_index
        for decoded, until in self._spans(start_index / fps, tolerance):
            rgb = None
            while index / fps + tolerance < until:
                rgb = self._to_rgb(decoded.frame) if rgb is None else rgb.copy()
                yield float(index / fps), rgb
                index += 1

    def num_frames_at_fps(self, fps: Fraction | int) -> int:
        """How many frames `frames_at_fps(fps)` yields, from packet timestamps alone (reads, does not decode)."""
        fps = Fraction(fps)
        last_pts, last_duration = max(self._packet_times(), default=(None, 0))
        if last_pts is None:
            return 0
        time_base = Fraction(self._stream.time_base)
        duration = last_duration * time_base if last_duration else 1 / self.info.fps
        end = (last_pts - self._origin()) * time_base + duration
        # Output frame i exists while i / fps + tolerance < end.
        return max(0, math.ceil((end - self._tolerance(fps)) * fps))

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class SourceFrameCursor:
    """Frames of `reader.frames_at_fps(fps)` by output index, in any order, in bounded memory.

    A `Timeline` walks the source forward, except that "loop" jumps back to 0 and "pingpong" walks backwards.
    Rather than caching the clip, the cursor keeps the most recently decoded `capacity` frames (LRU) and, on a
    miss behind the decoder, seeks back and decodes again: after a jump it decodes from the target on; during a
    backward walk (a request for `index` right after `index + 1`) it decodes the block of `capacity` frames
    ending at the target, so the next `capacity - 1` backward steps are hits. A backward walk over n frames
    therefore costs about n / capacity seeks, each decoding one block plus the distance from the keyframe
    before it. `passes` counts decoding (re)starts, the first included; `reader.frames_decoded` the frames.

    The cursor owns the reader's decoder: do not iterate `reader` elsewhere while using it.
    """

    def __init__(self, reader: VideoReader, fps: Fraction | int, cache_bytes: int = DEFAULT_CURSOR_CACHE_BYTES):
        self.reader = reader
        self.fps = Fraction(fps)
        self.capacity = max(2, cache_bytes // (reader.width * reader.height * 3))
        self.passes = 0
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._frames: Iterator[tuple[float, np.ndarray]] | None = None
        self._next_index = 0  # output index `_frames` yields next
        self._num_frames: int | None = None  # known once a pass reached the end
        self._last_request: int | None = None

    def _describe(self) -> str:
        return f"{self.reader.path} at {self.fps} fps ({self._num_frames} frames)"

    def __getitem__(self, index: int) -> np.ndarray:
        """Output frame `index` of shape (height, width, 3), uint8. Do not modify it: it may be cached."""
        if index < 0 or (self._num_frames is not None and index >= self._num_frames):
            raise IndexError(f"frame {index} is outside {self._describe()}")
        walking_back = self._last_request == index + 1
        self._last_request = index
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        if self._frames is None or index < self._next_index:
            start = max(0, index - self.capacity + 1) if walking_back else index
            self._frames = self.reader.frames_at_fps(self.fps, start_index=start)
            self._next_index = start
            self.passes += 1
        while self._next_index <= index:
            item = next(self._frames, None)
            if item is None:
                self._num_frames, self._frames = self._next_index, None
                raise IndexError(f"frame {index} is past the end of {self._describe()}")
            self._cache[self._next_index] = item[1]
            self._cache.move_to_end(self._next_index)
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            self._next_index += 1
        return self._cache[index]


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, rate, rotation and duration of a video file (decodes only its first frame)."""
    with VideoReader(path) as reader:
        return reader.info
