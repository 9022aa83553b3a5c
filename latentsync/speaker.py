"""Who speaks: which face tracks to lip-sync, in which frames, with which audio.

The result is a `SyncPlan`: one `FaceVoice` per face (track) and voice, with the frames where that face is
re-synced with that voice. Faces and frames that no entry covers pass through unchanged. Plans come from:

* a `SpeakerChoice` (``--speaker``): ``largest`` (the largest face of every frame, the reference's rule), a track
  id, ``point:X,Y[@T]`` / ``box:X0,Y0,X1,Y1[@T]`` (the face at that place, at ``T`` seconds or over the clip),
  ``all`` faces, or ``auto``;
* ``auto``: active-speaker detection. Each track's mouth is scored against the video's own sound with the SyncNet
  (`ActiveSpeakerScorer`, sync confidence of sliding windows); per frame the face with the highest confidence
  speaks, and a timeline with segments of at least ``min_segment`` seconds decides who is re-synced when
  (`speaker_timeline`). With one face, without the video's own sound or without a SyncNet, ``auto`` is
  ``largest``, and the plan says so;
* a speaker map (``--speaker-map``, `load_speaker_map`): per face (id, point or box) an audio file, and optionally
  a time segment, so each face of a dubbed dialogue gets its own voice.

Tracks come from `latentsync.face.tracks.FaceTrackSet`, indexed at the frame rate they were tracked at.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .conventions import MODEL_FPS
from .errors import ConfigError, NoFaceError
from .face.align import FaceAligner
from .face.search import box_iou
from .face.tracks import FaceTrack
from .models.syncnet import StableSyncNet
from .score import FaceWindowEmbedder, FrameAlignedMel, SyncNetInput, offset_score

logger = logging.getLogger(__name__)

SPEAKER_MODES = ("auto", "largest", "all")
SPEAKER_HELP = "auto | largest | all | ID | point:X,Y[@SECONDS] | box:X0,Y0,X1,Y1[@SECONDS]"
# Active-speaker scoring: audio offsets -K..K frame the confidence (median over offsets minus the distance in
# sync); windows start every `stride` frames; the timeline keeps segments of at least `min_segment` seconds.
AUTO_MAX_OFFSET = 6
AUTO_STRIDE = 4
AUTO_MIN_SEGMENT = 1.0


# ----------------------------------------------------------------------------------------------------------
# Choices


@dataclass(frozen=True)
class SpeakerChoice:
    """A parsed ``--speaker`` value.

    Attributes:
        mode: ``"auto"``, ``"largest"``, ``"all"``, ``"id"``, ``"point"`` or ``"box"``.
        track_id: the track of ``"id"``.
        where: ``(x, y)`` of ``"point"`` or ``(x0, y0, x1, y1)`` of ``"box"``, in frame pixels.
        seconds: the time ``where`` refers to (None: over the whole clip).
    """

    mode: str
    track_id: int | None = None
    where: tuple[float, ...] | None = None
    seconds: float | None = None

    def __str__(self) -> str:
        if self.mode == "id":
            return str(self.track_id)
        if self.mode in SPEAKER_MODES:
            return self.mode
        text = f"{self.mode}:{','.join(f'{v:g}' for v in self.where)}"
        return text if self.seconds is None else f"{text}@{self.seconds:g}"


_PLACE = re.compile(r"^(point|box):([^@]+)(?:@(.+))?$")


def parse_speaker(text: str | int | SpeakerChoice) -> SpeakerChoice:
    """``"auto"``, ``"largest"``, ``"all"``, ``"3"``, ``"point:320,180"``, ``"box:10,20,200,240@1.5"`` → a choice.

    Raises:
        ConfigError: anything else, with the accepted forms.
    """
    if isinstance(text, SpeakerChoice):
        return text
    value = str(text).strip().lower()
    if value in SPEAKER_MODES:
        return SpeakerChoice(value)
    if value.isdigit():
        return SpeakerChoice("id", track_id=int(value))
    match = _PLACE.match(value)
    if match:
        kind, numbers, seconds = match.groups()
        try:
            where = tuple(float(v) for v in numbers.split(","))
            time = None if seconds is None else float(seconds)
        except ValueError:
            where, time = (), None
        if len(where) == (2 if kind == "point" else 4) and (time is None or time >= 0):
            if kind == "box" and not (where[0] < where[2] and where[1] < where[3]):
                raise ConfigError(f"speaker box {value!r} must have x0 < x1 and y0 < y1")
            return SpeakerChoice(kind, where=where, seconds=time)
    raise ConfigError(f"speaker must be one of {SPEAKER_HELP} (pixels, seconds), got {text!r}")


def track_at(choice: SpeakerChoice, tracks: Sequence[FaceTrack], fps: Fraction) -> FaceTrack:
    """The track an ``id`` / ``point`` / ``box`` choice names.

    A point picks the face whose box holds it (the nearest centre if several), a box the face overlapping it most,
    at ``choice.seconds`` or, without a time, summed over every frame.

    Raises:
        NoFaceError: no such track, or no face there (naming the tracks there are).
    """
    if choice.mode == "id":
        for track in tracks:
            if track.track_id == choice.track_id:
                return track
        raise NoFaceError(f"there is no face track {choice.track_id}; the tracks are {_ids(tracks)} (see faces VIDEO)")
    frame = None if choice.seconds is None else round(choice.seconds * fps)
    best, best_score = None, 0.0
    for track in tracks:
        points = track.points if frame is None else [p for p in [track.at(frame)] if p is not None]
        score = sum(_place_score(choice, point.box) for point in points)
        if score > best_score:
            best, best_score = track, score
    if best is None:
        when = "in any frame" if frame is None else f"at {choice.seconds:g} s (frame {frame})"
        raise NoFaceError(f"no face at {choice} {when}; the tracks are {_ids(tracks)} (see faces VIDEO)")
    return best


def _place_score(choice: SpeakerChoice, box: np.ndarray) -> float:
    """How well ``box`` fits a point (1 / (1 + centre distance) when inside) or a box (IoU)."""
    if choice.mode == "box":
        return box_iou(np.asarray(choice.where), box)
    x, y = choice.where
    if not (box[0] <= x <= box[2] and box[1] <= y <= box[3]):
        return 0.0
    return 1.0 / (1.0 + math.hypot(x - (box[0] + box[2]) / 2, y - (box[1] + box[3]) / 2))


def _ids(tracks: Sequence[FaceTrack]) -> str:
    return ", ".join(str(track.track_id) for track in tracks) or "none"


# ----------------------------------------------------------------------------------------------------------
# Plans


@dataclass
class FaceVoice:
    """One face re-synced with one voice.

    Attributes:
        track: the face.
        frames: ``(num_frames,)`` bool, the frames (of the tracking frame rate) where it is re-synced.
        audio: the voice's audio file; None for the run's audio.
    """

    track: FaceTrack
    frames: np.ndarray
    audio: Path | None = None


@dataclass
class SyncPlan:
    """Which faces to re-sync with which audio, frame by frame, and why (``reason``, for the log)."""

    voices: list[FaceVoice] = field(default_factory=list)
    reason: str = ""

    def frames_with_a_face(self, num_frames: int) -> np.ndarray:
        """``(num_frames,)`` bool: frames that at least one voice re-syncs."""
        covered = np.zeros(num_frames, bool)
        for voice in self.voices:
            covered |= voice.frames[:num_frames]
        return covered


def presence(track: FaceTrack, num_frames: int) -> np.ndarray:
    """``(num_frames,)`` bool: the frames where ``track`` has a face (detected or bridged)."""
    mask = np.zeros(num_frames, bool)
    mask[[point.frame for point in track.points if point.frame < num_frames]] = True
    return mask


def largest_plan(tracks: Sequence[FaceTrack], num_frames: int, reason: str = "the largest face") -> SyncPlan:
    """Each frame's largest face (the reference's rule): one voice per track that is the largest somewhere."""
    if not tracks:
        return SyncPlan([], f"{reason}: no face found")
    heights = np.zeros((len(tracks), num_frames))
    for row, track in enumerate(tracks):
        for point in track.points:
            if point.frame < num_frames:
                heights[row, point.frame] = point.height
    largest = heights.argmax(axis=0)
    has_face = heights.max(axis=0, initial=0) > 0
    voices = []
    for row, track in enumerate(tracks):
        frames = has_face & (largest == row)
        if frames.any():
            voices.append(FaceVoice(track, frames))
    return SyncPlan(voices, reason)


def plan_choice(choice: SpeakerChoice, tracks: Sequence[FaceTrack], num_frames: int, fps: Fraction) -> SyncPlan:
    """The plan of a choice other than ``auto``."""
    if choice.mode == "largest":
        return largest_plan(tracks, num_frames)
    if choice.mode == "all":
        return SyncPlan([FaceVoice(t, presence(t, num_frames)) for t in tracks], f"all {len(tracks)} faces")
    if choice.mode == "auto":
        raise ConfigError("speaker auto needs the active-speaker scores: use plan_auto")
    track = track_at(choice, tracks, fps)
    return SyncPlan([FaceVoice(track, presence(track, num_frames))], f"face {track.track_id} ({choice})")


# ----------------------------------------------------------------------------------------------------------
# Active speaker


class ActiveSpeakerScorer:
    """Embeds every track's mouth windows as the frames stream by (pass 1), then scores them against the audio.

    Per track it keeps a `FaceAligner` (at the SyncNet's resolution) and a `FaceWindowEmbedder`, which holds fewer
    than ``num_frames + batch_size * stride`` faces: memory stays bounded whatever the clip length.

    Args:
        syncnet: a pixel-space StableSyncNet.
        fps: frame rate of the frames fed; faces are repeated or dropped to 25 fps as the model frames map.
        stride: frames between scored windows.
    """

    def __init__(self, syncnet: StableSyncNet, fps: Fraction, stride: int = AUTO_STRIDE, batch_size: int = 8):
        self.syncnet = syncnet
        self.spec = SyncNetInput.for_model(syncnet)
        self.fps = Fraction(fps)
        self.stride, self.batch_size = stride, batch_size
        self._aligners: dict[int, FaceAligner] = {}
        self._embedders: dict[int, FaceWindowEmbedder] = {}
        self._num_model_frames = 0
        self.num_frames = 0

    def push(self, frame: np.ndarray, tracks: Sequence[FaceTrack]) -> None:
        """The next frame and the tracks (their points of this frame, if any, are used; tracks may be complete
        or still growing)."""
        index = self.num_frames
        self.num_frames += 1
        repeats = math.ceil((index + 1) * MODEL_FPS / self.fps) - math.ceil(index * MODEL_FPS / self.fps)
        for track in tracks:
            point = track.at(index)
            embedder = self._embedder(track.track_id)
            aligner = self._aligners[track.track_id]
            face = None
            if point is not None:
                face = self.spec.face(aligner, frame, point.points3)
            else:
                aligner.reset()
            for _ in range(repeats):
                embedder.push(face)
        self._num_model_frames += repeats

    @property
    def num_buffered_faces(self) -> int:
        """Faces held right now, over all tracks (each track fewer than ``num_frames + batch_size * stride``)."""
        return sum(embedder.num_buffered_faces for embedder in self._embedders.values())

    def _embedder(self, track_id: int) -> FaceWindowEmbedder:
        if track_id not in self._embedders:
            self._aligners[track_id] = FaceAligner(self.spec.align_resolution, smooth=True)
            embedder = FaceWindowEmbedder(self.syncnet, self.spec, AUTO_MAX_OFFSET, None, self.stride, self.batch_size)
            for _ in range(self._num_model_frames):  # a new track: no face before it appeared
                embedder.push(None)
            self._embedders[track_id] = embedder
        return self._embedders[track_id]

    def confidences(self, waveform: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per track id, ``(window_starts (w,), confidence (w,))``: each window's median distance over the audio
        offsets minus its distance in sync (offset 0); higher means the lips follow this audio.

        Args:
            waveform: the video's own sound, 16 kHz mono, sample 0 at frame 0.
        """
        audio = FrameAlignedMel(waveform)
        last_start = audio.num_windows(self.spec.num_frames) - 1 - AUTO_MAX_OFFSET
        result = {}
        for track_id, embedder in self._embedders.items():
            starts, embeds = embedder.finish()
            keep = starts <= last_start
            if not keep.any():
                continue
            score = offset_score(
                self.syncnet, starts[keep], embeds[keep], audio, self.spec.num_frames, AUTO_MAX_OFFSET
            )
            distances = score.window_distances
            result[track_id] = (starts[keep], np.median(distances, axis=1) - distances[:, AUTO_MAX_OFFSET])
        return result


def speaker_timeline(
    confidences: dict[int, tuple[np.ndarray, np.ndarray]],
    num_frames: int,
    window: int,
    min_segment_frames: int,
) -> np.ndarray:
    """``(num_frames,)`` int: the speaking track per 25 fps frame (-1 where nobody was scored).

    A frame's confidence per track is the mean over the windows covering the ``min_segment_frames`` frames
    centred on it (a turn lasts at least that long, so its evidence is pooled over that span: one window's
    confidence is noisy); the track with the highest speaks. Frames no window covers take the nearest decision;
    segments shorter than ``min_segment_frames`` join the segment before them (or after, at the start).
    """
    ids = sorted(confidences)
    total = np.zeros((len(ids), num_frames))
    count = np.zeros((len(ids), num_frames))
    for row, track_id in enumerate(ids):
        for start, confidence in zip(*confidences[track_id]):
            total[row, start : start + window] += confidence
            count[row, start : start + window] += 1
    span = np.ones(max(min_segment_frames, 1))
    total = np.stack([np.convolve(row, span, mode="same") for row in total])
    count = np.stack([np.convolve(row, span, mode="same") for row in count])
    mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    speaker = np.where(np.isfinite(mean.max(axis=0, initial=-np.inf)), np.array(ids + [-1])[mean.argmax(axis=0)], -1)
    decided = np.flatnonzero(speaker >= 0)
    if not len(decided):
        return speaker
    nearest = decided[np.clip(np.searchsorted(decided, np.arange(num_frames)), 0, len(decided) - 1)]
    before = decided[np.clip(np.searchsorted(decided, np.arange(num_frames), side="right") - 1, 0, None)]
    fill = np.where(np.abs(before - np.arange(num_frames)) <= np.abs(nearest - np.arange(num_frames)), before, nearest)
    speaker = speaker[fill]
    # merge short segments into their neighbour
    changed = True
    while changed:
        changed = False
        edges = np.flatnonzero(np.diff(speaker)) + 1
        bounds = [0, *edges, num_frames]
        for first, last in zip(bounds, bounds[1:]):
            if last - first < min_segment_frames and len(bounds) > 2:
                speaker[first:last] = speaker[first - 1] if first > 0 else speaker[last]
                changed = True
                break
    return speaker


def plan_auto(
    tracks: Sequence[FaceTrack],
    num_frames: int,
    fps: Fraction,
    scorer: ActiveSpeakerScorer | None,
    waveform: np.ndarray | None,
    min_segment: float = AUTO_MIN_SEGMENT,
) -> SyncPlan:
    """``--speaker auto``: the speaker timeline from the SyncNet scores; the largest face when there is one face,
    no own sound (``waveform`` None) or no SyncNet (``scorer`` None)."""
    if len(tracks) <= 1 or waveform is None or scorer is None:
        why = "one face" if len(tracks) <= 1 else "no sound of its own" if waveform is None else "no SyncNet"
        return largest_plan(tracks, num_frames, f"speaker auto: the video has {why}, so the largest face speaks")
    confidences = scorer.confidences(waveform)
    if not confidences:
        return largest_plan(tracks, num_frames, "speaker auto: no face was long enough to score, the largest speaks")
    num_model_frames = math.ceil(num_frames * MODEL_FPS / fps)
    window = scorer.spec.num_frames
    timeline = speaker_timeline(confidences, num_model_frames, window, round(min_segment * MODEL_FPS))
    model_frame = np.floor(np.arange(num_frames) * MODEL_FPS / fps).astype(int)  # the mouth each frame shows
    voices, segments = [], []
    for track in tracks:
        frames = presence(track, num_frames) & (timeline[model_frame] == track.track_id)
        if frames.any():
            voices.append(FaceVoice(track, frames))
    edges = [0, *(np.flatnonzero(np.diff(timeline)) + 1), len(timeline)]
    for first, last in zip(edges, edges[1:]):
        segments.append(f"{first / 25:.2f}-{last / 25:.2f} s: face {timeline[first]}")
    return SyncPlan(voices, "speaker auto (SyncNet on the video's own sound): " + "; ".join(segments))


# ----------------------------------------------------------------------------------------------------------
# Speaker map


@dataclass(frozen=True)
class MapEntry:
    """One row of a speaker map: a face (as ``--speaker`` names one), its voice, and the time it covers."""

    face: SpeakerChoice
    audio: Path | None = None
    start: float | None = None
    end: float | None = None


def load_speaker_map(path: str | os.PathLike) -> list[MapEntry]:
    """Read a speaker map: JSON (a list of objects, or ``{"faces": [...]}``) or CSV with a header, each entry with
    ``face`` (``ID``, ``point:X,Y[@T]`` or ``box:X0,Y0,X1,Y1[@T]``) and optional ``audio`` (a file, relative to the
    map's folder; empty: the run's audio), ``start`` and ``end`` (seconds).

    Raises:
        ConfigError: unreadable file, unknown columns, bad values, a missing audio file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the speaker map {path}: {error}") from error
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            rows = data.get("faces") if isinstance(data, dict) else data
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                raise ConfigError('a JSON speaker map is a list of {"face": ..., "audio": ...} objects')
        elif path.suffix.lower() == ".csv":
            rows = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(text.splitlines())]
        else:
            raise ConfigError(f"a speaker map is a .json or .csv file, got {path.name}")
    except (json.JSONDecodeError, csv.Error) as error:
        raise ConfigError(f"{path} is not valid {path.suffix[1:].upper()}: {error}") from error
    entries = []
    for number, row in enumerate(rows, start=1):
        unknown = set(row) - {"face", "audio", "start", "end"}
        if unknown or "face" not in row:
            raise ConfigError(f"{path}: entry {number} needs a 'face' and may have audio, start, end; got {sorted(row)}")
        audio = row.get("audio") or None
        if audio is not None:
            audio = (path.parent / audio).resolve()
            if not audio.is_file():
                raise ConfigError(f"{path}: entry {number}: the audio file {audio} does not exist")
        try:
            start = None if row.get("start") in (None, "") else float(row["start"])
            end = None if row.get("end") in (None, "") else float(row["end"])
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{path}: entry {number}: start and end are seconds ({error})") from error
        if start is not None and end is not None and end <= start:
            raise ConfigError(f"{path}: entry {number}: end ({end}) must come after start ({start})")
        face = parse_speaker(row["face"])
        if face.mode in SPEAKER_MODES:
            raise ConfigError(f"{path}: entry {number}: a face is an ID, point:X,Y or box:X0,Y0,X1,Y1, got {face}")
        entries.append(MapEntry(face, audio, start, end))
    if not entries:
        raise ConfigError(f"the speaker map {path} has no entries")
    return entries


def plan_map(entries: Sequence[MapEntry], tracks: Sequence[FaceTrack], num_frames: int, fps: Fraction) -> SyncPlan:
    """One voice per (face, audio) of the map, over the entries' time segments (the whole clip without one).

    Raises:
        NoFaceError: an entry names no face.
        ConfigError: one face given two voices at the same time.
    """
    voices: dict[tuple[int, Path | None], FaceVoice] = {}
    for entry in entries:
        track = track_at(entry.face, tracks, fps)
        frames = presence(track, num_frames)
        times = np.arange(num_frames) / float(fps)
        if entry.start is not None:
            frames &= times >= entry.start
        if entry.end is not None:
            frames &= times < entry.end
        voice = voices.setdefault((track.track_id, entry.audio), FaceVoice(track, np.zeros(num_frames, bool), entry.audio))
        voice.frames |= frames
    by_track: dict[int, np.ndarray] = {}
    for (track_id, _), voice in voices.items():
        covered = by_track.setdefault(track_id, np.zeros(num_frames, bool))
        if (covered & voice.frames).any():
            raise ConfigError(f"the speaker map gives face {track_id} two voices at the same time; split the times")
        covered |= voice.frames
    described = ", ".join(f"face {t} ← {a.name if a else 'the run audio'}" for t, a in voices)
    return SyncPlan(list(voices.values()), f"speaker map: {described}")
