"""Lip sync with several faces: a first pass finds and scores every face, a `SyncPlan` says which face speaks
with which voice in which frames, and the synthesis pass re-syncs each (face, voice) in turn.

Pass 1 (`analyse_faces`): decode, detect (`FaceSearch`: tiles for small faces), track (`FaceTrackSet`) and, for
``--speaker auto``, embed each track's mouth windows with the SyncNet (`ActiveSpeakerScorer`). It keeps one
`TrackPoint` per face and frame (~150 bytes) and, per track being scored, fewer than ``num_frames + batch * stride``
SyncNet-sized faces: memory grows by ~13 MB per face per hour of 25 fps video and never holds frames.

Pass 2 (`LipSyncPipeline.sync_plan`): the frames stream through one `sync_frames` stage per voice, chained: each
stage aligns its face from the plan's points (`PlannedFaces`, no detection), generates its mouth with its own
audio features and pastes it; frames it does not cover pass through it untouched. A face no voice covers is
never pasted on, so its pixels stay bit-identical to the decoded source. Each stage holds at most its pending
windows, so memory is that of one run per voice.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..conventions import MODEL_SAMPLE_RATE
from ..errors import ConfigError
from ..face.align import FaceAligner
from ..face.search import FaceSearch
from ..face.tracks import FaceTrack, FaceTrackSet
from ..media.audio import load_audio
from ..media.video import VideoReader
from ..speaker import (
    ActiveSpeakerScorer,
    FaceVoice,
    MapEntry,
    SpeakerChoice,
    SyncPlan,
    parse_speaker,
    plan_auto,
    plan_choice,
    plan_map,
)
from .faces import PreparedFace
from .progress import WorkCounter
from .stream import no_face_error
from .threads import one_torch_thread
from .timing import StageClock

logger = logging.getLogger(__name__)


class PlannedFaces:
    """The faces of one or more `FaceVoice` s whose frames do not overlap, aligned from the plan's points: a face
    preparer for `sync_frames` (one voice per synthesis stage), or the faces of Face Prepare.

    Frames are numbered in the order they are first fed (0, 1, 2, ..., across calls of `prepare`), matching the
    frame numbers of the tracks. Each voice has its own aligner (smoothing state), reset where it has no face.

    Raises:
        ConfigError: two voices cover the same frame.
    """

    def __init__(self, voices: Sequence[FaceVoice], resolution: int):
        frames = [voice.frames for voice in voices]
        if len(frames) > 1 and (np.sum([np.pad(f, (0, max(map(len, frames)) - len(f))) for f in frames], 0) > 1).any():
            raise ConfigError("these faces are re-synced at the same time; one face per frame is possible here")
        self.voices = list(voices)
        self.aligners = [FaceAligner(resolution, smooth=True) for _ in self.voices]
        self.num_frames = 0

    def prepare(
        self, frames: Iterable[np.ndarray], clock: StageClock | None = None
    ) -> Iterator[tuple[np.ndarray, PreparedFace | None]]:
        clock = clock or StageClock()
        for frame in frames:
            index = self.num_frames
            self.num_frames += 1
            face = None
            for voice, aligner in zip(self.voices, self.aligners):
                point = voice.track.at(index) if index < len(voice.frames) and voice.frames[index] else None
                if point is None:
                    aligner.reset()
                    continue
                with clock.section("align"), one_torch_thread():
                    affine = aligner.estimate_affine(point.points3)
                    face = PreparedFace(affine, aligner.align(frame, affine))
            yield frame, face

    def align(self, frame: np.ndarray, affine: np.ndarray) -> PreparedFace:
        return PreparedFace(affine, self.aligners[0].align(frame, affine))


@dataclass
class FaceAnalysis:
    """Pass 1's result: the tracks, the number of frames they are indexed over (at ``fps``), and the plan."""

    tracks: list[FaceTrack]
    num_frames: int
    fps: Fraction
    plan: SyncPlan


def analyse_faces(
    video_path: Path,
    fps: Fraction,
    search: FaceSearch,
    speaker: str,
    speaker_map: list[MapEntry] | None = None,
    syncnet=None,
    landmark_filter: bool = True,
    clock: StageClock | None = None,
    counter: WorkCounter | None = None,
) -> FaceAnalysis:
    """Pass 1 over a file: track every face of ``video_path`` decoded at ``fps`` and make the plan
    (`analyse_frames`; the video's own sound, if any, is what ``speaker="auto"`` listens to)."""
    clock = clock or StageClock()
    own_sound = None
    if speaker_map is None and parse_speaker(speaker).mode == "auto" and syncnet is not None:
        with VideoReader(video_path) as reader:
            has_audio = reader.has_audio
        if has_audio:
            with clock.section("audio"):
                own_sound = load_audio(video_path, MODEL_SAMPLE_RATE)
    with VideoReader(video_path) as reader:
        frames = (frame for _, frame in reader.frames_at_fps(fps))
        return analyse_frames(
            frames, fps, search, speaker, speaker_map, syncnet, own_sound, landmark_filter, clock, counter
        )


def analyse_frames(
    frames: Iterable[np.ndarray],
    fps: Fraction,
    search: FaceSearch,
    speaker: str,
    speaker_map: list[MapEntry] | None = None,
    syncnet=None,
    own_sound: np.ndarray | None = None,
    landmark_filter: bool = True,
    clock: StageClock | None = None,
    counter: WorkCounter | None = None,
) -> FaceAnalysis:
    """Pass 1: track every face of ``frames`` (RGB uint8, at ``fps``) and make the plan.

    Args:
        speaker: a ``--speaker`` value (`latentsync.speaker.parse_speaker`); ignored with a ``speaker_map``.
        speaker_map: entries of a speaker map (`latentsync.speaker.load_speaker_map`).
        syncnet: the StableSyncNet of ``speaker="auto"`` (None: auto is the largest face).
        own_sound: the clip's own sound, 16 kHz mono from frame 0 (None: auto is the largest face).
        landmark_filter: smooth each track's points with a `OneEuroFilter`.
        counter: counts each frame tracked (`WorkCounter.frames`) and asks its cancel callback.

    Raises:
        Cancelled: the counter's ``cancel()`` returned True.
    """
    clock = clock or StageClock()
    choice = parse_speaker(speaker)
    auto = speaker_map is None and choice.mode == "auto" and syncnet is not None and own_sound is not None
    scorer = ActiveSpeakerScorer(syncnet, fps) if auto else None
    tracker = FaceTrackSet(search, fps=float(fps), smoothing=landmark_filter)
    for frame in clock.iterate(frames, "decode"):
        with clock.section("detect"):
            tracker.update(frame)
        if scorer is not None:
            with clock.section("speaker"):
                scorer.push(frame, tracker.tracks)
        if counter is not None:
            counter.advance(1)
    tracks, num_frames = tracker.tracks, tracker.num_frames
    with clock.section("speaker"):
        plan = plan_speakers(tracks, num_frames, fps, choice, speaker_map, scorer, own_sound)
    return FaceAnalysis(tracks, num_frames, fps, plan)


def plan_speakers(
    tracks: Sequence[FaceTrack],
    num_frames: int,
    fps: Fraction,
    speaker: str | SpeakerChoice,
    speaker_map: Sequence[MapEntry] | None = None,
    scorer: ActiveSpeakerScorer | None = None,
    own_sound: np.ndarray | None = None,
) -> SyncPlan:
    """The plan of a speaker map, else of ``speaker`` (``auto`` with the ``scorer`` that has seen the frames and
    the clip's ``own_sound``; without them, the largest face). Logs the plan's reason."""
    choice = parse_speaker(speaker)
    if speaker_map is not None:
        plan = plan_map(speaker_map, tracks, num_frames, fps)
    elif choice.mode == "auto":
        plan = plan_auto(tracks, num_frames, fps, scorer, None if scorer is None else own_sound)
    else:
        plan = plan_choice(choice, tracks, num_frames, fps)
    logger.info("%d face tracks; %s", len(tracks), plan.reason)
    return plan


def check_every_frame_has_a_face(plan: SyncPlan, source_indices: Iterable[int], fps: Fraction) -> None:
    """``no_face="error"``: raise at the first output frame whose source frame no voice re-syncs."""
    covered = plan.frames_with_a_face(max(max((len(v.frames) for v in plan.voices), default=0), 1))
    for index, source_index in enumerate(source_indices):
        if source_index >= len(covered) or not covered[source_index]:
            raise no_face_error(index, fps)


class SourceIndexTap:
    """Passes ``(source_index, frame)`` pairs through and remembers the source indices not yet matched with an
    output, so that the frames a stage yields can be fed to the next stage with their source index."""

    def __init__(self, frames: Iterable[tuple[int, np.ndarray]]):
        self.frames = frames
        self.waiting: deque[int] = deque()

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for source_index, frame in self.frames:
            self.waiting.append(source_index)
            yield source_index, frame

    def pair(self, outputs: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """``(source_index, output)`` for the outputs of a stage fed from this tap (one output per input, in order)."""
        for output in outputs:
            yield self.waiting.popleft(), output
