"""What the LatentSync nodes pass to each other, and the bookkeeping they share. Nothing here imports ComfyUI
(ComfyUI objects, such as a ModelPatcher, are only held).

Socket types (``io.Custom`` names in `nodes.common`):

    LATENTSYNC_MODEL          `LatentSyncModel`: the UNet in a ModelPatcher, with its face resolution
    LATENTSYNC_AUDIO_ENCODER  a ModelPatcher of `latentsync.audio.WhisperFeatureExtractor`
    LATENTSYNC_AUDIO_EMBEDS   `AudioEmbeds`: Whisper features of one speech clip
    LATENTSYNC_FACE_DETECTOR  a `latentsync.face.detectors.FaceDetector`
    LATENTSYNC_FACES          `PreparedFaces`: the aligned face (or none) of every frame of one clip
    LATENTSYNC_SYNCNET        a ModelPatcher of `latentsync.models.syncnet.StableSyncNet`
    LATENTSYNC_VAE            a ModelPatcher of the diffusers ``AutoencoderKL`` (LatentSync VAE Loader)
    LATENTSYNC_SPEED          a `latentsync.pipeline.speed.SpeedSettings` (LatentSync Speed)

A ModelPatcher manages a `ManagedModule` holding the model (``patcher.model.module``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ..latentsync.conventions import MODEL_SAMPLE_RATE
from ..latentsync.errors import MediaError
from ..latentsync.face.align import FaceAligner, crop_size
from ..latentsync.face.detectors import FaceDetector, FaceFilter
from ..latentsync.face.search import FaceSearch
from ..latentsync.face.sheet import draw_tracks
from ..latentsync.face.tracks import FaceTrack, FaceTrackSet
from ..latentsync.media.timeline import Timeline, samples_for_frames
from ..latentsync.pipeline.faces import PreparedFace
from ..latentsync.pipeline.plan import PlannedFaces, plan_speakers
from ..latentsync.pipeline.settings import DEFAULT_SETTINGS, LARGEST_FACE, SETTING_SPECS
from ..latentsync.speaker import ActiveSpeakerScorer, parse_speaker

# Largest face number the face_index widget offers (faces are counted by size, 0 = largest).
MAX_FACE_INDEX = 16

# ----------------------------------------------------------------------------------------------------------
# Socket values


class ManagedModule(torch.nn.Module):
    """The module a ComfyUI ModelPatcher manages: the model as its one child, ``module`` (state-dict keys get the
    prefix ``module.``). ModelPatcher writes a ``device`` attribute on what it manages, which diffusers models
    (the UNet) have as a read-only property."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


@dataclass(frozen=True)
class LatentSyncModel:
    """``LATENTSYNC_MODEL``.

    Attributes:
        patcher: ``comfy.model_patcher.ModelPatcher`` of the `UNet3DConditionModel` (LoRAs are its weight patches).
        resolution: side of the aligned faces the UNet works on (256: LatentSync 1.5, 512: 1.6).
        resolution_reason: how the resolution was chosen, for the log.
        path: the checkpoint file.
        loras: ``"name@strength"`` of the LoRAs applied, in order.
    """

    patcher: Any
    resolution: int
    resolution_reason: str
    path: Path
    loras: tuple[str, ...] = ()

    @property
    def unet(self) -> torch.nn.Module:
        return self.patcher.model.module


@dataclass(frozen=True)
class AudioEmbeds:
    """``LATENTSYNC_AUDIO_EMBEDS``: Whisper features of one speech clip; row ``k`` covers ``k * 0.02`` s onwards.

    Attributes:
        features: ``(encoded_samples // 320, L, d)`` float32 on the CPU.
        num_samples: samples of the speech itself at 16 kHz (its duration is what the length policies use).
        encoded_samples: samples that were encoded: the speech plus the silence appended to cover a video.
    """

    features: torch.Tensor
    num_samples: int
    encoded_samples: int

    @property
    def duration(self) -> Fraction:
        """Seconds of speech, exactly."""
        return Fraction(self.num_samples, MODEL_SAMPLE_RATE)

    def check_covers(self, timeline: Timeline) -> None:
        """Raise `MediaError` unless the features reach the end of ``timeline`` (up to the half frame that rounding
        the audio to whole frames may add).

        Only ``short_audio="pad"`` outlasts the speech; it needs the silence appended by the Audio Encode node.
        """
        covered_frames = math.floor(Fraction(self.encoded_samples, MODEL_SAMPLE_RATE) * timeline.fps + Fraction(1, 2))
        if timeline.num_output_frames > covered_frames:
            raise MediaError(
                f"The video runs {timeline.num_output_frames} frames ({float(timeline.duration):.2f} s at "
                f"{float(timeline.fps):g} fps) but the audio embeddings cover {covered_frames} frames "
                f"({self.encoded_samples / MODEL_SAMPLE_RATE:.2f} s). short_audio='pad' keeps the whole video: set "
                f"video_frames to {timeline.num_output_frames} and fps to {float(timeline.fps):g} on LatentSync Audio "
                "Encode, or use short_audio='trim'."
            )


def padded_length(num_samples: int, num_frames: int, fps: Fraction) -> int:
    """Samples to encode so the features cover ``num_frames`` video frames at ``fps`` (never fewer than the speech)."""
    return max(num_samples, samples_for_frames(num_frames, fps, MODEL_SAMPLE_RATE))


@dataclass(frozen=True)
class PreparedFaces:
    """``LATENTSYNC_FACES``: the aligned face of every frame of one clip (Face Prepare → Sampler).

    Attributes:
        faces: ``(n, R, R, 3)`` uint8 aligned faces; zeros where ``has_face`` is False.
        affines: ``(n, 2, 3)`` float64 frame → crop matrices; NaN where ``has_face`` is False.
        has_face: ``(n,)`` bool, which frames have a face.
        frame_size: ``(height, width)`` of the frames.
        resolution: ``R``.
        detector: the face detector that found them.
    """

    faces: np.ndarray
    affines: np.ndarray
    has_face: np.ndarray
    frame_size: tuple[int, int]
    resolution: int
    detector: FaceDetector

    @classmethod
    def collect(
        cls,
        prepared: Iterable[tuple[np.ndarray, PreparedFace | None]],
        num_frames: int,
        frame_size: tuple[int, int],
        resolution: int,
        detector: FaceDetector,
        on_frame: Callable[[int], None] | None = None,
    ) -> PreparedFaces:
        """Store the ``(frame, face)`` pairs of `latentsync.pipeline.faces.FacePreparer.prepare` for ``num_frames``
        frames; ``on_frame(count)`` after each."""
        faces = np.zeros((num_frames, resolution, resolution, 3), dtype=np.uint8)
        affines = np.full((num_frames, 2, 3), np.nan)
        has_face = np.zeros(num_frames, dtype=bool)
        count = 0
        for count, (_, face) in enumerate(prepared, start=1):
            if face is not None:
                faces[count - 1], affines[count - 1], has_face[count - 1] = face.face, face.affine, True
            if on_frame is not None:
                on_frame(count)
        if count != num_frames:
            raise MediaError(f"Face preparation returned {count} frames for {num_frames} input frames.")
        return cls(faces, affines, has_face, tuple(frame_size), resolution, detector)

    @property
    def num_frames(self) -> int:
        return len(self.has_face)

    def face(self, index: int) -> PreparedFace | None:
        """The prepared face of frame ``index``, or None."""
        return PreparedFace(self.affines[index], self.faces[index]) if self.has_face[index] else None

    def boxes(self) -> np.ndarray:
        """``(n, 4)`` float64 ``(x1, y1, x2, y2)``: the frame region each aligned face was cut from (NaN rows where
        there is no face)."""
        height, width = crop_size(self.resolution)
        corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], dtype=np.float64)
        boxes = np.full((self.num_frames, 4), np.nan)
        for index in np.flatnonzero(self.has_face):
            to_crop = np.vstack([self.affines[index], [0, 0, 1]])
            points = corners @ np.linalg.inv(to_crop)[:2].T
            boxes[index] = [*points.min(axis=0), *points.max(axis=0)]
        return boxes

    def check_fits(self, num_frames: int, frame_size: tuple[int, int], resolution: int) -> None:
        """Raise `MediaError` unless these faces were prepared from ``num_frames`` frames of ``frame_size`` at the
        model's ``resolution``."""
        if self.num_frames != num_frames:
            raise MediaError(
                f"The faces were prepared from {self.num_frames} frames but {num_frames} frames were given. Feed "
                "LatentSync Face Prepare and the sampler the same images."
            )
        if tuple(frame_size) != self.frame_size:
            raise MediaError(
                f"The faces were prepared from {self.frame_size[1]}x{self.frame_size[0]} frames but the frames given "
                f"are {frame_size[1]}x{frame_size[0]}. Feed LatentSync Face Prepare and the sampler the same images."
            )
        if resolution != self.resolution:
            raise MediaError(
                f"The faces were aligned at {self.resolution} px but the model works at {resolution} px. Connect the "
                "same LatentSync model to Face Prepare and to the sampler."
            )

    def preparer(self) -> PreparedFacesReplay:
        """A stand-in for `FacePreparer` that hands out these faces instead of detecting (see the class)."""
        return PreparedFacesReplay(self)


@dataclass
class FaceTracks:
    """``LATENTSYNC_FACE_TRACKS``: every face of a clip with its id (Face Tracks → Face Prepare).

    Attributes:
        tracks: the `FaceTrack` s, by id.
        num_frames: frames of the clip.
        frame_size: ``(height, width)`` of the frames.
    """

    tracks: list[FaceTrack]
    num_frames: int
    frame_size: tuple[int, int]

    @classmethod
    def collect(
        cls,
        frames: Iterable[np.ndarray],
        num_frames: int,
        detector: FaceDetector,
        min_face_size: int,
        fps: Fraction,
        landmark_filter: bool = True,
        on_frame: Callable[[int], None] | None = None,
    ) -> FaceTracks:
        """Track every face of ``frames`` (`FaceTrackSet`, faces from ``min_face_size`` pixels, tiles on wide
        frames); ``on_frame(count)`` after each frame."""
        search = FaceSearch(detector.with_filter(FaceFilter.for_min_height(min_face_size)))
        tracker = FaceTrackSet(search, fps=float(fps), smoothing=landmark_filter)
        size = (0, 0)
        for count, frame in enumerate(frames, start=1):
            tracker.update(frame)
            size = frame.shape[:2]
            if on_frame is not None:
                on_frame(count)
        if tracker.num_frames != num_frames:
            raise MediaError(f"Face tracking saw {tracker.num_frames} frames for {num_frames} input frames.")
        return cls(tracker.tracks, num_frames, tuple(size))

    def preview(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each frame with its faces' boxes, numbered with their track ids."""
        for index, frame in enumerate(frames):
            boxes = [(track.track_id, point.box) for track in self.tracks if (point := track.at(index)) is not None]
            yield draw_tracks(frame, boxes, f"frame {index}")


def speaker_faces(
    frames: Sequence[np.ndarray],
    tracks: FaceTracks,
    speaker: str,
    fps: Fraction,
    resolution: int,
    detector: FaceDetector,
    syncnet=None,
    own_sound: np.ndarray | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> tuple[PreparedFaces, str]:
    """The faces Face Prepare gives the sampler when it is told who speaks, and the plan's reason.

    ``speaker`` as ``--speaker`` (`latentsync.speaker.parse_speaker`); ``auto`` scores every track's lips against
    ``own_sound`` (16 kHz mono) with ``syncnet`` first (one more pass over the frames); without them it is the
    largest face. One face per frame: the faces of several voices at once (``all``) need the Video Sampler.
    """
    scorer = None
    if parse_speaker(speaker).mode == "auto" and syncnet is not None and own_sound is not None:
        scorer = ActiveSpeakerScorer(syncnet, fps)
        for frame in frames:
            scorer.push(frame, tracks.tracks)
    plan = plan_speakers(tracks.tracks, tracks.num_frames, fps, speaker, scorer=scorer, own_sound=own_sound)
    planned = PlannedFaces(plan.voices, resolution)
    prepared = PreparedFaces.collect(
        planned.prepare(iter(frames)), tracks.num_frames, tracks.frame_size, resolution, detector, on_frame
    )
    return prepared, plan.reason


class PreparedFacesReplay:
    """Plays stored faces back through `LipSyncPipeline.sync_frames` (its ``preparer``) in place of a
    `FacePreparer`.

    ``prepare`` receives the first visit of every source frame, in order 0, 1, 2, ... over all its calls (the
    pipeline's contract), so the k-th frame it sees gets face k; ``align`` serves replayed frames (loop, pingpong)
    exactly as `FacePreparer.align` does.
    """

    def __init__(self, faces: PreparedFaces):
        self.faces = faces
        self.aligner = FaceAligner(faces.resolution, smooth=False)  # `align` never smooths
        self.next_index = 0

    def prepare(self, frames: Iterable[np.ndarray], clock=None):
        for frame in frames:
            if self.next_index >= self.faces.num_frames:
                raise MediaError(f"More frames than the {self.faces.num_frames} the faces were prepared from.")
            yield frame, self.faces.face(self.next_index)
            self.next_index += 1

    def align(self, frame: np.ndarray, affine: np.ndarray) -> PreparedFace:
        return PreparedFace(affine, self.aligner.align(frame, affine))


# ----------------------------------------------------------------------------------------------------------
# Run notices and model files


def run_notices(timeline: Timeline, num_generated: int) -> list[str]:
    """What the user of a finished run must know, to show on the node: no frame had a face (the output is the
    input), or most of the output replays the video because the speech is much longer."""
    notices = []
    if num_generated == 0:
        notices.append(
            "No face was found in any frame, so the video is unchanged. Check the face detector and face_index, or "
            "use a clip whose face is visible."
        )
    replayed = timeline.num_output_frames - timeline.num_video_frames
    if replayed > timeline.num_output_frames / 2:
        video_seconds = float(timeline.num_video_frames / timeline.fps)
        notices.append(
            f"The speech ({float(timeline.audio_duration):.1f} s) is much longer than the video ({video_seconds:.1f} "
            f"s): {100 * replayed / timeline.num_output_frames:.0f}% of the output replays the video "
            f"(long_audio = {timeline.long_audio}). Use a longer video or shorter speech."
        )
    return notices




def latentsync_file_kind(name: str) -> str | None:
    """What the file ``name`` of ``models/latentsync`` (a path inside it) holds, by the names of ByteDance's
    release (``latentsync_unet.pt``, ``whisper/tiny.pt``, ``stable_syncnet.pt``) and of training exports (``unet.pt``,
    ``syncnet.safetensors``): ``"whisper"`` when the file or a folder on its path is named after Whisper,
    ``"syncnet"`` when the file is named after SyncNet, None in the release's ``auxiliary/`` folder (helpers of
    the official scripts), else ``"unet"``."""
    parts = [part.lower() for part in PurePosixPath(name.replace("\\", "/")).parts]
    if any("whisper" in part for part in parts):
        return "whisper"
    if "syncnet" in parts[-1]:
        return "syncnet"
    if parts[0] == "auxiliary":
        return None
    return "unet"


# ----------------------------------------------------------------------------------------------------------
# Widgets from the settings table

# Node inputs named otherwise than their `LipSyncSettings` field: the frontend shows input names, and the sampler's
# window length must not read like Audio Encode's video length.
SETTING_INPUT_NAMES = {"num_inference_steps": "steps", "guidance_scale": "guidance", "num_frames": "window_frames"}


def setting_input_name(field: str) -> str:
    """The node input of settings field ``field``."""
    return SETTING_INPUT_NAMES.get(field, field)


def setting_fields(inputs: dict) -> dict:
    """Node input values (`setting_input_name`) by their settings field."""
    fields = {name: field for field, name in SETTING_INPUT_NAMES.items()}
    return {fields.get(name, name): value for name, value in inputs.items()}


def setting_widget(name: str, specs: dict = SETTING_SPECS, defaults=DEFAULT_SETTINGS) -> dict:
    """Default, bounds and tooltip of the field ``name`` of a settings table (`LipSyncSettings` by default, or
    `latentsync.pipeline.speed.SpeedSettings`), as ComfyUI input options.

    Text settings with ``choices`` give ``options``; ``face_index`` becomes an integer where -1 means "largest"; an
    optional number (default None) becomes an integer where 0 means None.
    """
    spec = specs[name]
    default = getattr(defaults, name)
    widget = {"tooltip": spec.help[0].upper() + spec.help[1:] + "."}
    if isinstance(default, bool):
        return {**widget, "default": default}
    if default is None and spec.minimum is not None:  # an optional number: 0 stands for None
        return {**widget, "default": 0, "min": 0, "max": spec.maximum, "step": spec.step}
    if name == "face_index":
        return {**widget, "default": face_index_widget(default), "min": -1, "max": MAX_FACE_INDEX, "step": 1}
    if spec.choices is not None:
        return {**widget, "options": list(spec.choices), "default": default}
    return {**widget, "default": default, "min": spec.minimum, "max": spec.maximum, "step": spec.step}


def face_index_widget(face_index) -> int:
    """``"largest"`` → -1, ``k`` → ``k``."""
    return -1 if face_index == LARGEST_FACE else int(face_index)


def face_index_setting(value: int):
    """-1 → ``"largest"``, ``k >= 0`` → ``k``."""
    return LARGEST_FACE if value < 0 else int(value)
