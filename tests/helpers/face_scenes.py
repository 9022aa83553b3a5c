"""Scenes with several faces, made from the real demo clips: each demo's talking head is cut out around its face,
scaled to a chosen face height and placed on a plain background, so the faces move and speak as in the demos.

`head_frames` reads the heads, `compose` places them in a frame, `write_scene` writes a clip of such frames with a
sound track (PyAV).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from latentsync.media import VideoReader
from .media import _encode_audio

# The face box of frame 0 of each demo clip (1080 x 1920, MediaPipe's BlazeFace), and how much around it a head
# cut-out keeps (demo2 moves more).
DEMO_FACE_BOXES = {"demo1": (499, 623, 702, 826), "demo2": (415, 330, 690, 604)}
HEAD_MARGIN = 1.1  # the cut-out reaches this many face heights beyond the box on every side
BACKGROUND = (96, 104, 112)
SAMPLE_RATE = 16000


@dataclass
class Head:
    """The cut-out frames of one demo clip: ``frames`` ``(n, H, W, 3)`` uint8 and the face box in them."""

    frames: np.ndarray
    box: np.ndarray  # (4,) x1, y1, x2, y2 of the face in frame 0 of the cut-out

    @property
    def face_height(self) -> float:
        return float(self.box[3] - self.box[1])


def head_frames(assets_dir: Path, name: str, num_frames: int, start: int = 0) -> Head:
    """``num_frames`` frames of ``{name}_video.mp4`` (25 fps) from frame ``start``, cut around the face of frame 0
    (the faces stay within the cut-out through both clips)."""
    x1, y1, x2, y2 = DEMO_FACE_BOXES[name]
    margin = HEAD_MARGIN * (y2 - y1)
    left, top = int(x1 - margin), int(y1 - margin)
    right, bottom = int(x2 + margin), int(y2 + margin)
    frames = []
    with VideoReader(assets_dir / f"{name}_video.mp4") as reader:
        for _, frame in reader.frames_at_fps(25, start_index=start):
            frames.append(frame[max(top, 0) : bottom, max(left, 0) : right])
            if len(frames) == num_frames:
                break
    box = np.array([x1 - max(left, 0), y1 - max(top, 0), x2 - max(left, 0), y2 - max(top, 0)], np.float64)
    return Head(np.stack(frames), box)


@dataclass
class Placement:
    """One head in a scene frame: its face ``height`` in pixels and the face centre ``(x, y)``; ``None`` height
    means it is not in this frame."""

    height: float | None
    centre: tuple[float, float] = (0.0, 0.0)


def compose(size: tuple[int, int], heads: Sequence[tuple[np.ndarray, Head, Placement]]) -> tuple[np.ndarray, list]:
    """A ``(h, w, 3)`` frame of ``size = (w, h)`` with each head frame scaled and pasted (later ones on top).

    Returns:
        the frame and, per head, the placed face box ``(4,)`` in frame pixels (``None`` when not placed).
    """
    width, height = size
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = BACKGROUND
    boxes = []
    for image, head, placement in heads:
        if placement.height is None:
            boxes.append(None)
            continue
        scale = placement.height / head.face_height
        scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        box = head.box * scale
        offset = np.round(np.array(placement.centre) - (box[:2] + box[2:]) / 2).astype(int)
        top, left = offset[1], offset[0]
        src_top, src_left = max(-top, 0), max(-left, 0)
        dst_top, dst_left = max(top, 0), max(left, 0)
        rows = min(scaled.shape[0] - src_top, height - dst_top)
        cols = min(scaled.shape[1] - src_left, width - dst_left)
        if rows > 0 and cols > 0:
            frame[dst_top : dst_top + rows, dst_left : dst_left + cols] = scaled[
                src_top : src_top + rows, src_left : src_left + cols
            ]
        boxes.append(box + np.tile(offset, 2))
    return frame, boxes


def write_scene(path: Path, frames: Sequence[np.ndarray], audio: np.ndarray | None, fps: int = 25) -> Path:
    """Write RGB ``frames`` as H.264 (crf 12) with ``audio`` (16 kHz mono float ``(n,)``, or None) as AAC."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        video.codec_context.options = {"crf": "12", "preset": "ultrafast"}
        sound = None if audio is None else container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(video.encode(None))
        if sound is not None:
            _encode_audio(container, sound, audio.astype(np.float32)[None], SAMPLE_RATE, "fltp")
    return path


def two_face_scene(
    assets_dir: Path,
    num_frames: int,
    size: tuple[int, int] = (480, 270),
    heights: tuple[float, float] = (90.0, 60.0),
    absent: range = range(0),
    starts: tuple[int, int] = (0, 0),
) -> tuple[list[np.ndarray], list[list]]:
    """demo1 on the left and demo2 on the right, speaking as in their clips; demo2 leaves the frame (walks out to the
    right and is not there) during the frames ``absent`` and comes back to its place.

    Returns:
        the frames and, per frame, the true face boxes ``[demo1, demo2]`` (``None`` when absent).
    """
    heads = [head_frames(assets_dir, name, num_frames, start) for name, start in zip(("demo1", "demo2"), starts)]
    width, height = size
    places = [(0.3 * width, 0.5 * height), (0.72 * width, 0.45 * height)]
    frames, boxes = [], []
    for index in range(num_frames):
        placements = [Placement(heights[0], places[0]), Placement(heights[1], places[1])]
        if index in absent:
            placements[1] = Placement(None)
        frame, frame_boxes = compose(size, [(h.frames[index], h, p) for h, p in zip(heads, placements)])
        frames.append(frame)
        boxes.append(frame_boxes)
    return frames, boxes


def speaking_in_turns(
    assets_dir: Path, num_frames: int, speakers: Sequence[int], starts: tuple[int, int] = (0, 0), size=(480, 270)
):
    """`two_face_scene` with a sound track in which face ``speakers[k]`` (0: demo1, 1: demo2) is heard in the k-th
    of ``len(speakers)`` equal parts: each part is the voice of that face's own lips at the same times
    (`latentsync.demo.lip_voice`; the demo clips' own sound does not follow their lips), so the face heard is in
    sync with its lips and the other is not.

    Returns:
        the frames and the 16 kHz mono audio.
    """
    from latentsync.demo import lip_voice
    from latentsync.face.detectors import create_face_detector
    from latentsync.face.mouth import mouth_openings

    frames, _ = two_face_scene(assets_dir, num_frames, size, starts=starts)
    detector = create_face_detector()
    voices = [lip_voice(mouth_openings(head_frames(assets_dir, name, num_frames, start).frames, detector))
              for name, start in zip(("demo1", "demo2"), starts)]  # fmt: skip
    audio = np.zeros(num_frames * (SAMPLE_RATE // 25), np.float32)
    edges = np.linspace(0, len(audio), len(speakers) + 1).astype(int)
    for speaker, first, last in zip(speakers, edges, edges[1:]):
        audio[first:last] = voices[speaker][first:last]
    return frames, audio
