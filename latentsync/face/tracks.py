"""Every face of a clip, each with a stable id: `FaceTrackSet` follows all faces at once and keeps a small record
per face and frame, from which the track table and the per-frame plans of the lip-sync pipeline are made.

Per frame (`FaceTrackSet.update`):

1. **Find.** `FaceSearch.find` on the whole frame; every ``scan_interval`` frames also on tiles (not in close-ups),
   so a new small face is found within that many frames. A track whose face is small for the whole-frame pass
   (under 1/16 of the frame's longer side) and was not found in it gets a zoomed pass around its last box.
2. **Match.** Detections are matched to the live tracks (seen within ``max_gap_frames``) by box overlap, best pairs
   first (IoU >= ``min_iou``), then by distance for faces that moved fast (centres within half a face height).
3. **Re-find.** A detection left over that appears near where a lost track was last seen (centre within
   ``reentry_distance`` face heights, size within a factor 2) continues that track: a face that left the frame or
   was hidden for longer keeps its id when it comes back. Otherwise it starts a new track.
4. **Smooth.** Each track's three points go through its own `OneEuroFilter` (reset after a gap longer than
   ``max_gap_frames``).

A short gap (at most ``max_gap_frames`` missing frames between two detections) is bridged by linear
interpolation when the face is found again. `track_video` runs all this over a file and keeps a few thumbnails
for a contact sheet (`latentsync.face.sheet`).

Memory: one `TrackPoint` per face and frame (about 150 bytes: box, three points, flags), so about 13 MB per face
and hour at 25 fps; no frame and no image is kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ..errors import ConfigError
from ..media.video import VideoReader
from .detectors.base import Face
from .search import FaceSearch, box_iou
from .sheet import contact_sheet, draw_tracks, thumbnail
from .tracking import OneEuroFilter

# A face below this fraction of the frame's longer side is small for the whole-frame pass (12 px of 192).
SMALL_FACE_FRACTION = 1 / 16


@dataclass
class TrackPoint:
    """One face of one frame.

    Attributes:
        frame: frame index.
        box: ``(4,)`` float64 ``x1, y1, x2, y2`` as detected (interpolated in a bridged gap).
        points3: ``(3, 2)`` float64 smoothed alignment points (image-left eyebrow, image-right eyebrow, nose).
        detected: False for frames of a short gap, bridged by interpolation.
    """

    frame: int
    box: np.ndarray
    points3: np.ndarray
    detected: bool = True

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2


@dataclass
class FaceTrack:
    """One face through the clip: its id and its `TrackPoint` per frame where it is present, in frame order."""

    track_id: int
    points: list[TrackPoint] = field(default_factory=list)

    @property
    def first_frame(self) -> int:
        return self.points[0].frame

    @property
    def last_frame(self) -> int:
        return self.points[-1].frame

    @property
    def num_frames(self) -> int:
        """Frames in which the face is present (detected or bridged)."""
        return len(self.points)

    @property
    def mean_height(self) -> float:
        return float(np.mean([point.height for point in self.points]))

    @property
    def mean_centre(self) -> np.ndarray:
        return np.mean([point.centre for point in self.points], axis=0)

    def at(self, frame: int) -> TrackPoint | None:
        """The point of ``frame``, or None when the face is absent there."""
        low, high = 0, len(self.points)
        while low < high:
            middle = (low + high) // 2
            if self.points[middle].frame < frame:
                low = middle + 1
            else:
                high = middle
        return self.points[low] if low < len(self.points) and self.points[low].frame == frame else None

    def row(self) -> dict:
        """The track table row: id, first and last frame, frames present, mean face height and centre (pixels)."""
        x, y = self.mean_centre
        return {
            "id": self.track_id,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames": self.num_frames,
            "mean_height": round(self.mean_height, 1),
            "mean_x": round(float(x), 1),
            "mean_y": round(float(y), 1),
        }


def track_table(tracks: Iterable[FaceTrack]) -> str:
    """The tracks as an aligned text table, one row per track."""
    header = f"{'id':>4} {'first':>6} {'last':>6} {'frames':>7} {'height':>7} {'x':>7} {'y':>7}"
    lines = [header]
    for track in tracks:
        row = track.row()
        lines.append(
            f"{row['id']:>4} {row['first_frame']:>6} {row['last_frame']:>6} {row['frames']:>7} "
            f"{row['mean_height']:>7.1f} {row['mean_x']:>7.1f} {row['mean_y']:>7.1f}"
        )
    return "\n".join(lines)


@dataclass
class _LiveTrack:
    track: FaceTrack
    smoothing: OneEuroFilter | None
    last_seen: int  # frame of the last detection

    @property
    def last(self) -> TrackPoint:
        return self.track.points[-1]


class FaceTrackSet:
    """Follows every face of a clip fed frame by frame, giving each a stable id (0, 1, 2, ... in order of appearance).

    Args:
        search: the `FaceSearch` (detector, tiles) run on each frame.
        max_gap_frames: a face missing for at most this many frames keeps its track and the gap is bridged.
        scan_interval: frames between tile scans (1: every frame); 0 switches tiles off.
        reentry_distance: a lost face that reappears with its centre within this many face heights of where it
            was last seen keeps its id (0: never).
        min_iou: least box overlap to match a detection with a track.
        smoothing: ``True`` for `OneEuroFilter` at ``fps``, ``False`` for raw points.
        fps: frame rate of the frames fed (for the smoothing's time step).
    """

    def __init__(
        self,
        search: FaceSearch,
        max_gap_frames: int = 5,
        scan_interval: int = 10,
        reentry_distance: float = 1.5,
        min_iou: float = 0.3,
        smoothing: bool = True,
        fps: float = 25.0,
    ):
        if max_gap_frames < 0 or scan_interval < 0 or reentry_distance < 0:
            raise ConfigError(
                "max_gap_frames, scan_interval and reentry_distance must be >= 0, got "
                f"{max_gap_frames}, {scan_interval}, {reentry_distance}"
            )
        self.search = search
        self.max_gap_frames = max_gap_frames
        self.scan_interval = scan_interval
        self.reentry_distance = reentry_distance
        self.min_iou = min_iou
        self.smoothing = smoothing
        self.fps = float(fps)
        self.tracks: list[FaceTrack] = []
        self._live: list[_LiveTrack] = []
        self._lost: list[_LiveTrack] = []
        self.num_frames = 0

    def update(self, frame: np.ndarray) -> list[tuple[int, Face]]:
        """Feed the next ``(h, w, 3)`` uint8 RGB frame; returns ``(track_id, face)`` of the faces detected in it."""
        index = self.num_frames
        self.num_frames += 1
        scan = self.scan_interval > 0 and index % self.scan_interval == 0
        faces = self.search.find(frame, tiles=scan)
        matches = self._match(faces, self._live)

        # 1. zoomed passes for small faces the whole-frame pass missed
        small = max(frame.shape[:2]) * SMALL_FACE_FRACTION
        matched = {id(live) for live, _ in matches}
        for live in self._live:
            if id(live) not in matched and live.last.height < small:
                near = [face for face in self.search.find_near(frame, live.last.box) if not _taken(face, faces)]
                found = self._match(near, [live])
                matches += found
                faces += [face for _, face in found]

        # 2. faces left over: a lost track that left near here, or a new track
        taken = {id(face) for _, face in matches}
        for face in faces:
            if id(face) in taken:
                continue
            live = self._reentry(face)
            if live is None:
                track = FaceTrack(len(self.tracks))
                self.tracks.append(track)
                smoothing = OneEuroFilter(fps=self.fps) if self.smoothing else None
                live = _LiveTrack(track, smoothing, index)
                self._live.append(live)
            matches.append((live, face))

        # 3. record, then retire tracks missing too long
        for live, face in matches:
            self._record(live, face, index)
        for live in [live for live in self._live if index - live.last_seen > self.max_gap_frames]:
            self._live.remove(live)
            self._lost.append(live)
        return [(live.track.track_id, face) for live, face in matches]

    # -- internals ------------------------------------------------------------------------------------------

    def _match(self, faces: list[Face], candidates: list[_LiveTrack]) -> list[tuple[_LiveTrack, Face]]:
        """Greedy matching: highest box overlap first, then nearest centre (within half a face height)."""
        pairs = []
        for live in candidates:
            for face in faces:
                iou = box_iou(live.last.box, face.box)
                distance = np.linalg.norm((face.box[:2] + face.box[2:]) / 2 - live.last.centre) / live.last.height
                if iou >= self.min_iou or distance <= 0.5:
                    pairs.append((-iou, distance, live, face))
        matches, used_tracks, used_faces = [], set(), set()
        for _, _, live, face in sorted(pairs, key=lambda pair: pair[:2]):
            if id(live) in used_tracks or id(face) in used_faces:
                continue
            used_tracks.add(id(live))
            used_faces.add(id(face))
            matches.append((live, face))
        return matches

    def _reentry(self, face: Face) -> _LiveTrack | None:
        """The lost track last seen nearest to ``face`` (within ``reentry_distance`` heights, size within 2x)."""
        best, best_distance = None, self.reentry_distance
        height = float(face.box[3] - face.box[1])
        for lost in self._lost:
            ratio = height / lost.last.height
            distance = np.linalg.norm((face.box[:2] + face.box[2:]) / 2 - lost.last.centre) / lost.last.height
            if 0.5 <= ratio <= 2 and distance <= best_distance:
                best, best_distance = lost, distance
        if best is not None:
            self._lost.remove(best)
            self._live.append(best)
            if best.smoothing is not None:
                best.smoothing.reset()
        return best

    def _record(self, live: _LiveTrack, face: Face, index: int) -> None:
        """Add the detection of frame ``index``, bridging a short gap since the last one."""
        points = face.points3 if live.smoothing is None else live.smoothing(face.points3, index)
        gap = index - live.last_seen - 1
        if live.track.points and 0 < gap <= self.max_gap_frames:
            before = live.last
            for step in range(1, gap + 1):
                weight = step / (gap + 1)
                live.track.points.append(
                    TrackPoint(
                        before.frame + step,
                        before.box + (face.box - before.box) * weight,
                        before.points3 + (points - before.points3) * weight,
                        detected=False,
                    )
                )
        live.track.points.append(TrackPoint(index, face.box.astype(np.float64), points))
        live.last_seen = index


def _taken(face: Face, faces: list[Face]) -> bool:
    """Whether ``face`` is one of ``faces`` already (boxes overlapping by more than 0.3)."""
    return any(box_iou(face.box, other.box) > 0.3 for other in faces)


@dataclass
class TrackedVideo:
    """What `track_video` found: the tracks, the frame rate and count they are indexed at, and a contact sheet
    ``(H, W, 3)`` uint8 RGB of evenly spaced frames with numbered boxes."""

    tracks: list[FaceTrack]
    fps: Fraction
    num_frames: int
    width: int
    height: int
    sheet: np.ndarray | None


def track_video(
    path: str | os.PathLike,
    search: FaceSearch,
    fps: Fraction | None = None,
    sheet_frames: int = 8,
    thumbnail_size: int = 360,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> TrackedVideo:
    """Track every face of the video at ``path``, decoded at ``fps`` (default: its own rate).

    Args:
        search: detector and tiles.
        sheet_frames: frames on the contact sheet (0: none), evenly spaced; only their thumbnails are kept.
        thumbnail_size: longer side of each thumbnail in pixels.
        progress: ``progress(frames_done, frames_total)``.
        options: `FaceTrackSet` options (``max_gap_frames``, ``scan_interval``, ...).
    """
    with VideoReader(path) as reader:
        fps = Fraction(fps or reader.fps)
        total = reader.num_frames_at_fps(fps)
        tracker = FaceTrackSet(search, fps=float(fps), **options)
        chosen = {round(i * (total - 1) / max(sheet_frames - 1, 1)) for i in range(sheet_frames)} if total else set()
        thumbnails = []
        for index, (_, frame) in enumerate(reader.frames_at_fps(fps)):
            found = tracker.update(frame)
            if index in chosen:
                small, scale = thumbnail(frame, thumbnail_size)
                boxes = [(track_id, face.box * scale) for track_id, face in found]
                thumbnails.append(draw_tracks(small, boxes, f"frame {index}"))
            if progress is not None:
                progress(index + 1, max(total, index + 1))
        sheet = contact_sheet(thumbnails) if thumbnails else None
        return TrackedVideo(tracker.tracks, fps, tracker.num_frames, reader.width, reader.height, sheet)
