"""Lip-sync score: how well a talking face matches its audio, and by how many frames they are shifted.

The method of the reference's LSE-C / LSE-D evaluation (``eval/syncnet/syncnet_eval.py``, after SyncNet's
``calc_pdist``), run with LatentSync's own StableSyncNet instead of the old Wav2Lip-style SyncNet:

1. faces are detected, tracked and aligned at the SyncNet's resolution, on frames resampled to 25 fps by
   timestamp (any source frame rate works);
2. every window of ``num_frames`` consecutive faces starting at frame ``s`` (``s`` on a ``stride`` grid) is
   compared with the mel windows starting at frames ``s + o`` for every offset ``o`` in ``-K .. K``
   (``K = max_offset``, 15 as in the reference): ``distance = 1 - cos(vision_embed, audio_embed)``. Mel windows
   start exactly at frame times (`FrameAlignedMel`), so shifting the audio by whole frames shifts the curve
   exactly;
3. the distances are averaged over the windows, per offset: ``mean_distances`` (the curve `plot_offsets` draws);
4. ``min_distance = min(mean_distances)`` (LSE-D style), ``best_offset = offsets[argmin]`` and
   ``confidence = median(mean_distances) - min_distance`` (LSE-C style).

Choices, and where they differ from the reference:

* **Distance.** StableSyncNet is trained on the cosine similarity of unit embeddings (BCE, "in sync" above
  0.5), so the distance is the cosine distance ``1 - cos`` (`sync_distance`), in ``[0, 1]`` since the
  embeddings are non-negative. The reference's Euclidean distance of unit vectors, ``sqrt(2 (1 - cos))``, ranks
  single pairs the same way but bends the averages. Either way the numbers are on StableSyncNet's scale: only
  the method, not the values, compares with published LSE-C / LSE-D figures of the Wav2Lip-style SyncNet.
* **Sign.** ``best_offset > 0`` means the audio lags the video: the sound of the lips seen at frame ``s`` is
  heard at frame ``s + best_offset``, so delaying the audio by ``k`` frames adds ``k``. The reference's
  ``av_offset`` has the opposite sign.
* **Edges.** The reference pads the audio features with zeros, comparing edge frames with nothing; here a
  window is scored only when all its ``2K + 1`` audio windows lie inside the audio, so every point of the curve
  averages the same windows. Windows therefore start ``K`` frames after the audio does and end ``K`` frames
  before it ends: scoring needs at least ``num_frames + 2K`` frames (46, 1.84 s) of audio; the faces of the first
  ``K`` frames are never scored, those of the last ``K`` only when the audio runs on past the video.
* **Face gaps.** Frames where the tracker has no face split the clip into runs; windows never cross a gap, and
  the windows of all runs are pooled into one curve (the reference averages per-track scores instead).
* **Memory.** Faces stream through a buffer of fewer than ``num_frames + batch_size * stride`` aligned faces; one
  embedding per window is kept (``embedding_dim`` floats: 8 KiB for the official model, 12 MiB per minute at
  stride 1), with the audio's waveform and mel windows (about 190 KB per second): some 0.4 MB per second of
  clip in all, whatever the video's resolution.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .audio.mel import as_waveform
from .audio.syncnet_mel import AudioHParams, mel_window_length, syncnet_melspectrogram
from .conventions import MODEL_FPS, MODEL_SAMPLE_RATE, SAMPLES_PER_MODEL_FRAME, signed_pixels
from .errors import ConfigError, MediaError, NoFaceError
from .face import FaceAligner
from .face.align import SUPPORTED_RESOLUTIONS, resize_faces
from .face.detectors import FaceDetector, create_face_detector
from .face.tracking import FaceTracker
from .media import VideoReader, load_audio
from .media.timeline import parse_fps
from .models.syncnet import SYNC_THRESHOLD, StableSyncNet, pack_frames, sync_distance
from .models.syncnet_configs import DEFAULT_SYNCNET_CONFIG, get_syncnet_config

# SyncNet windows are cut from 25 fps frames and 16 kHz audio (`MODEL_FPS`, `MODEL_SAMPLE_RATE`), as in training
# the reference's search range (``vshift=15``): +-0.6 s
DEFAULT_MAX_OFFSET = 15
DEFAULT_BATCH_SIZE = 16

# progress(frames_done, frames_total)
ScoreProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SyncNetInput:
    """What a SyncNet is fed: the fields of its config's ``data`` section that scoring needs.

    Attributes:
        num_frames: frames per window (16 for the official model).
        resolution: side of the aligned square faces (256).
        lower_half: keep rows ``resolution // 2 :`` only (the mouth).
    """

    num_frames: int
    resolution: int
    lower_half: bool

    @property
    def align_resolution(self) -> int:
        """Faces are aligned at this size (the aligner's 256 or 512), then resized to ``resolution`` if it differs."""
        return self.resolution if self.resolution in SUPPORTED_RESOLUTIONS else SUPPORTED_RESOLUTIONS[0]

    def face(self, aligner: FaceAligner, frame: np.ndarray, points: np.ndarray) -> torch.Tensor:
        """The face of ``frame`` as this SyncNet takes it: aligned on ``points`` by ``aligner`` (made at
        `align_resolution`; its smoothing state moves on), resized to ``resolution``: ``(3, R, R)``, uint8 when no
        resize is needed, else float in ``[-1, 1]``."""
        face = torch.from_numpy(aligner.align(frame, aligner.estimate_affine(points))).permute(2, 0, 1)
        if self.resolution != self.align_resolution:
            face = resize_faces(as_face_tensor(face)[None], self.resolution)[0]
        return face

    @classmethod
    def for_model(cls, syncnet: StableSyncNet, data: Mapping | None = None) -> SyncNetInput:
        """From a config ``data`` section; by default the model's own (`StableSyncNet.data_config`), else the
        official one with ``num_frames`` read off the model.

        Raises:
            ConfigError: a latent-space SyncNet (not supported), or a ``data`` section that does not fit the model.
        """
        in_channels = syncnet.visual_encoder.config.in_channels
        data = data or syncnet.data_config
        if data is None:
            data = {**get_syncnet_config(DEFAULT_SYNCNET_CONFIG)["data"], "num_frames": in_channels // 3}
        if data.get("latent_space", False) or in_channels % 3:
            raise ConfigError(
                f"Scoring needs a pixel-space SyncNet (3 input channels per frame); this one takes {in_channels} "
                "visual channels or is configured for VAE latents."
            )
        num_frames = int(data["num_frames"])
        if num_frames * 3 != in_channels:
            raise ConfigError(
                f"The SyncNet data config says {num_frames} frames per window, but the visual encoder takes "
                f"{in_channels} channels ({in_channels // 3} RGB frames)."
            )
        return cls(num_frames, int(data["resolution"]), bool(data["lower_half"]))


@dataclass
class SyncScore:
    """Result of `sync_offset_scores` / `score_video`.

    Attributes:
        confidence: ``median(mean_distances) - min_distance`` (LSE-C style; higher = clearer sync).
        min_distance: ``min(mean_distances)`` (LSE-D style; lower = better).
        best_offset: offset of that minimum in 25 fps frames; > 0 means the audio lags the video.
        offsets: ``(2K + 1,)`` int64, ``-K .. K``.
        mean_distances: ``(2K + 1,)`` float64, cosine distance at each offset averaged over the windows.
        window_starts: ``(w,)`` int64, first 25 fps frame of each scored video window.
        window_distances: ``(w, 2K + 1)`` float32, distance of each window at each offset.
        num_frames: frames per window.
        fps: frame rate the offsets and frames count in (25).
    """

    confidence: float
    min_distance: float
    best_offset: int
    offsets: np.ndarray
    mean_distances: np.ndarray
    window_starts: np.ndarray
    window_distances: np.ndarray
    num_frames: int
    fps: Fraction = field(default=MODEL_FPS)

    @property
    def best_offset_seconds(self) -> float:
        """``best_offset`` in seconds (> 0: audio lags)."""
        return float(self.best_offset / self.fps)

    def accuracy(self, min_off_sync_offset: int) -> float:
        """How often the SyncNet's own rule (similarity ``1 - distance`` above `SYNC_THRESHOLD` means "in sync")
        is right about the windows of a clip known to be in sync: the mean of the share of windows called in sync
        at offset 0 and the share called off sync at offsets ``|o| >= min_off_sync_offset`` (balanced accuracy)."""
        similarity = 1.0 - self.window_distances
        in_sync = similarity[:, self.offsets == 0] > SYNC_THRESHOLD
        off_sync = similarity[:, np.abs(self.offsets) >= min_off_sync_offset] <= SYNC_THRESHOLD
        if not off_sync.size:
            raise ConfigError(f"No offset of at least {min_off_sync_offset} frames was searched.")
        return float((in_sync.mean() + off_sync.mean()) / 2)

    def to_dict(self) -> dict:
        """JSON-ready: the numbers, their conventions, the curve and the per-window distances."""
        return {
            "confidence": self.confidence,
            "min_distance": self.min_distance,
            "best_offset": self.best_offset,
            "best_offset_seconds": self.best_offset_seconds,
            "offset_convention": "frames at 25 fps; positive = audio lags video",
            "distance": "1 - cosine similarity of StableSyncNet embeddings",
            "fps": str(self.fps),
            "num_frames_per_window": self.num_frames,
            "num_windows": len(self.window_starts),
            "offsets": self.offsets.tolist(),
            "mean_distances": self.mean_distances.tolist(),
            "window_starts": self.window_starts.tolist(),
            "window_distances": self.window_distances.tolist(),
        }


# ----------------------------------------------------------------------------------------------------------
# Embeddings


def _unit_embeds(encoder: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """One SyncNet encoder on its own: ``(b, ...) -> (b, C)`` unit vectors, as `StableSyncNet.forward` makes them."""
    parameter = next(encoder.parameters())
    embeds = encoder(inputs.to(parameter.device, parameter.dtype))
    return F.normalize(embeds.flatten(1), p=2, dim=1).float().cpu()


class FrameAlignedMel:
    """SyncNet mel windows of a 16 kHz waveform that start exactly at 25 fps frame times.

    A frame lasts 640 samples, 3.2 mel hops of 200: the datasets' crop rule (`crop_mel_window`, column
    ``floor(3.2 t)``) starts the window of frame ``t`` up to 10 ms early, by an amount that depends on ``t mod 5``,
    so delaying the audio by a whole number of frames does not simply move the windows. Here the window of frame
    ``t`` comes from the mel of the waveform without its first ``r = 640 t mod 200`` samples (five phases ``r`` in
    ``0, 40, 80, 120, 160``), at column ``(640 t - r) / 200``: it starts at sample ``640 t`` exactly, so a shift of
    the audio by ``k`` frames moves every window by exactly ``k``. For ``t`` a multiple of 5 (``r = 0``) the
    window is the crop rule's. The five mels are kept as float32: about 128 KB per second of audio.

    Args:
        waveform: ``(num_samples,)`` mono float samples at 16 kHz, full scale +-1.
    """

    def __init__(self, waveform: np.ndarray | torch.Tensor):
        samples = as_waveform(waveform, torch.float64)
        self.num_samples = samples.shape[0]
        self._hop = AudioHParams().hop_length
        phases = sorted({SAMPLES_PER_MODEL_FRAME * t % self._hop for t in range(self._hop)})
        self._mels = {
            phase: torch.from_numpy(syncnet_melspectrogram(samples[phase:])).float()
            for phase in phases
            if self.num_samples - phase > 0
        }

    def num_windows(self, num_frames: int) -> int:
        """How many start frames ``0, 1, ...`` have a whole window: those whose last hop fits in the audio."""
        spare = self.num_samples - self._hop * (mel_window_length(num_frames, MODEL_FPS) - 1)
        return max(0, spare // SAMPLES_PER_MODEL_FRAME + 1)

    def windows(self, start_frames: np.ndarray, num_frames: int) -> torch.Tensor:
        """``(m, 1, 80, L)`` float32 windows of the frames ``start_frames`` (each below `num_windows`)."""
        length = mel_window_length(num_frames, MODEL_FPS)
        windows = []
        for frame in start_frames:
            start = SAMPLES_PER_MODEL_FRAME * int(frame)
            phase = start % self._hop
            column = (start - phase) // self._hop
            windows.append(self._mels[phase][None, :, column : column + length])
        return torch.stack(windows)


@torch.no_grad()
def embed_mel_windows(
    syncnet: StableSyncNet,
    audio: FrameAlignedMel,
    start_frames: np.ndarray,
    num_frames: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Audio embeddings ``(m, C)`` (float32, CPU) of the windows of the 25 fps frames ``start_frames`` ``(m,)``."""
    embeds = [torch.zeros(0, syncnet.embedding_dim)]
    for first in range(0, len(start_frames), batch_size):
        windows = audio.windows(start_frames[first : first + batch_size], num_frames)
        embeds.append(_unit_embeds(syncnet.audio_encoder, windows))
    return torch.cat(embeds)


def as_face_tensor(faces: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Faces (any shape) as float32 in ``[-1, 1]``: uint8 maps by `signed_pixels`, floats are kept."""
    faces = torch.as_tensor(faces)
    return signed_pixels(faces) if faces.dtype == torch.uint8 else faces.float()


class FaceWindowEmbedder:
    """Embeds the face windows of a stream of aligned faces, keeping only the faces still needed.

    Feed the faces of consecutive 25 fps frames to `push` (``None`` where there is no face: a gap that no window
    crosses); the windows starting at frames ``s`` with ``first_start <= s <= last_start`` and
    ``(s - first_start) % stride == 0`` are embedded in batches as soon as their faces are in. `finish` returns
    the window starts and embeddings.

    Args:
        syncnet: the StableSyncNet whose visual encoder embeds the windows.
        spec: window length, face resolution, lower half.
        first_start, last_start: the range of window starts to embed (``last_start`` may be ``None``: no limit).
        stride: frames between window starts.
        batch_size: windows per visual-encoder call.
    """

    def __init__(
        self,
        syncnet: StableSyncNet,
        spec: SyncNetInput,
        first_start: int = 0,
        last_start: int | None = None,
        stride: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        if stride < 1 or batch_size < 1:
            raise ConfigError(f"stride and batch_size must be at least 1, got {stride} and {batch_size}.")
        self.syncnet, self.spec = syncnet, spec
        self.first_start, self.last_start = first_start, last_start
        self.stride, self.batch_size = stride, batch_size
        self.num_pushed = 0
        self.num_faces = 0
        self.longest_run = 0
        self._run_start = 0  # first frame of the current run of faces
        self._buffer: list[torch.Tensor] = []  # faces of frames _buffer_start, _buffer_start + 1, ...
        self._buffer_start = 0
        self._pending: list[int] = []  # complete windows waiting for a batch
        self._starts: list[int] = []
        self._embeds: list[torch.Tensor] = []

    @property
    def num_buffered_faces(self) -> int:
        """Faces held right now: fewer than ``num_frames + batch_size * stride``."""
        return len(self._buffer)

    def _wanted(self, start: int) -> bool:
        in_range = self.first_start <= start and (self.last_start is None or start <= self.last_start)
        return in_range and (start - self.first_start) % self.stride == 0

    def push(self, face: torch.Tensor | None) -> None:
        """The aligned face ``(3, R, R)`` (uint8, or float in ``[-1, 1]``) of the next frame, or ``None``."""
        frame = self.num_pushed
        self.num_pushed += 1
        if face is None:
            self._flush()
            self._buffer, self._buffer_start, self._run_start = [], frame + 1, frame + 1
            return
        if tuple(face.shape) != (3, self.spec.resolution, self.spec.resolution):
            raise ConfigError(
                f"Faces for this SyncNet must be (3, {self.spec.resolution}, {self.spec.resolution}), "
                f"got {tuple(face.shape)}."
            )
        self.num_faces += 1
        self.longest_run = max(self.longest_run, frame + 1 - self._run_start)
        self._buffer.append(face)
        start = frame + 1 - self.spec.num_frames
        if start >= self._run_start and self._wanted(start):
            self._pending.append(start)
            if len(self._pending) == self.batch_size:
                self._flush()
        # the next window to complete starts at start + 1; no face before it is needed any more
        keep_from = self._pending[0] if self._pending else start + 1
        if keep_from > self._buffer_start:
            del self._buffer[: keep_from - self._buffer_start]
            self._buffer_start = keep_from

    @torch.no_grad()
    def _flush(self) -> None:
        if not self._pending:
            return
        windows = torch.stack(
            [
                torch.stack(self._buffer[s - self._buffer_start : s - self._buffer_start + self.spec.num_frames])
                for s in self._pending
            ]
        )  # (b, f, 3, R, R)
        frames = as_face_tensor(windows)
        self._embeds.append(_unit_embeds(self.syncnet.visual_encoder, pack_frames(frames, self.spec.lower_half)))
        self._starts.extend(self._pending)
        self._pending = []

    def finish(self) -> tuple[np.ndarray, torch.Tensor]:
        """Embed what is pending; ``(window_starts (w,) int64, vision_embeds (w, C) float32)``."""
        self._flush()
        embeds = torch.cat(self._embeds) if self._embeds else torch.zeros(0, self.syncnet.embedding_dim)
        return np.asarray(self._starts, dtype=np.int64), embeds


# ----------------------------------------------------------------------------------------------------------
# Offsets and the score


def _window_range(num_audio_starts: int, max_offset: int) -> tuple[int, int]:
    """First and last video window start whose audio windows ``s - K .. s + K`` all exist."""
    return max_offset, num_audio_starts - 1 - max_offset


def _check_max_offset(max_offset: int) -> None:
    if not isinstance(max_offset, int) or max_offset < 0:
        raise ConfigError(f"max_offset must be an integer >= 0 (frames), got {max_offset!r}.")


@torch.no_grad()
def offset_score(
    syncnet: StableSyncNet,
    window_starts: np.ndarray,
    vision_embeds: torch.Tensor,
    audio: FrameAlignedMel,
    num_frames: int,
    max_offset: int = DEFAULT_MAX_OFFSET,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SyncScore:
    """Compare each video window with the audio windows ``-max_offset .. max_offset`` frames from it.

    Args:
        window_starts: ``(w,)`` start frames of the video windows; each ``s +- max_offset`` must have an audio
            window in ``audio``.
        vision_embeds: ``(w, C)`` their embeddings.
        audio: the audio's mel windows (its sample 0 is the time of frame 0).

    Returns:
        the `SyncScore`. Each audio window is embedded once, however many video windows it meets.
    """
    offsets = np.arange(-max_offset, max_offset + 1, dtype=np.int64)
    audio_starts = np.unique(window_starts[:, None] + offsets[None, :])
    audio_embeds = embed_mel_windows(syncnet, audio, audio_starts, num_frames, batch_size)
    distances = torch.stack(
        [
            sync_distance(vision_embeds, audio_embeds[np.searchsorted(audio_starts, window_starts + offset)])
            for offset in offsets
        ],
        dim=1,
    ).numpy()  # (w, 2K + 1)
    mean_distances = distances.mean(axis=0, dtype=np.float64)
    best = int(np.argmin(mean_distances))
    min_distance = float(mean_distances[best])
    return SyncScore(
        confidence=float(np.median(mean_distances)) - min_distance,
        min_distance=min_distance,
        best_offset=int(offsets[best]),
        offsets=offsets,
        mean_distances=mean_distances,
        window_starts=window_starts,
        window_distances=distances,
        num_frames=num_frames,
    )


def _too_short_error(spec: SyncNetInput, max_offset: int, longest_run: int, num_audio_starts: int) -> MediaError:
    audio_frames = num_audio_starts + spec.num_frames - 1 if num_audio_starts else 0
    needed = spec.num_frames + 2 * max_offset
    first, last = _window_range(num_audio_starts, max_offset)
    if last < first:
        where = f"the audio covers about {audio_frames} frames, fewer than the {needed} needed"
    else:
        where = f"windows can start at frames {first} to {last}, but no run of faces there is long enough"
    return MediaError(
        f"Nothing to score: a window needs {spec.num_frames} consecutive frames with a face (25 fps) and audio "
        f"{max_offset} frames before and after it for the offset search; {where} (longest run of faces: "
        f"{longest_run} frames). Use a longer clip, or a smaller max_offset."
    )


@torch.no_grad()
def sync_offset_scores(
    syncnet: StableSyncNet,
    faces: torch.Tensor | np.ndarray,
    audio: np.ndarray | torch.Tensor,
    max_offset: int = DEFAULT_MAX_OFFSET,
    stride: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    data: Mapping | None = None,
) -> SyncScore:
    """Score aligned faces against audio (the core of `score_video`, without media or face detection).

    Args:
        syncnet: a pixel-space StableSyncNet in eval mode.
        faces: ``(n, 3, R, R)`` aligned faces of consecutive 25 fps frames, float in ``[-1, 1]`` or uint8.
        audio: ``(num_samples,)`` mono float waveform at 16 kHz; sample 0 is the time of frame 0.
        max_offset: ``K``; offsets ``-K .. K`` frames are searched.
        stride: frames between scored window starts.
        batch_size: windows per encoder call.
        data: the SyncNet config's ``data`` section (default: the official one, see `SyncNetInput.for_model`).

    Raises:
        MediaError: no window to score: audio shorter than ``num_frames + 2K`` frames, or fewer than
            ``num_frames`` faces from frame ``K`` on with audio ``K`` frames beyond them.
    """
    _check_max_offset(max_offset)
    spec = SyncNetInput.for_model(syncnet, data)
    audio = FrameAlignedMel(audio)
    num_audio_starts = audio.num_windows(spec.num_frames)
    first_start, last_start = _window_range(num_audio_starts, max_offset)
    embedder = FaceWindowEmbedder(syncnet, spec, first_start, last_start, stride, batch_size)
    for face in torch.as_tensor(faces):
        embedder.push(face)
    window_starts, vision_embeds = embedder.finish()
    if not len(window_starts):
        raise _too_short_error(spec, max_offset, embedder.longest_run, num_audio_starts)
    return offset_score(syncnet, window_starts, vision_embeds, audio, spec.num_frames, max_offset, batch_size)


# ----------------------------------------------------------------------------------------------------------
# Videos


def frames_at_score_fps(frames: Iterable[np.ndarray], fps: Fraction | int) -> Iterator[np.ndarray]:
    """The frames of a constant-rate clip at ``fps``, shown at 25 fps.

    Output frame ``i`` (at ``i / 25`` s) is the source frame on screen then, ``floor(i * fps / 25)``; outputs go on
    while that frame exists, so the clip keeps its duration. Source frames are yielded as they are, not copied.
    """
    ratio = parse_fps(fps) / MODEL_FPS
    index = 0
    for source_index, frame in enumerate(frames):
        while math.floor(index * ratio) == source_index:
            yield frame
            index += 1


@torch.no_grad()
def score_frames(
    frames: Iterable[np.ndarray],
    audio: np.ndarray | torch.Tensor,
    syncnet: StableSyncNet,
    detector: FaceDetector | str | None = None,
    *,
    fps: Fraction | int = MODEL_FPS,
    max_offset: int = DEFAULT_MAX_OFFSET,
    stride: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    data: Mapping | None = None,
    face_index: int | Literal["largest"] = "largest",
    detect_size: int | None = None,
    progress: ScoreProgressCallback | None = None,
) -> SyncScore:
    """Score the lip sync of a talking-face clip given as frames and samples, streaming.

    Args:
        frames: ``(h, w, 3)`` uint8 RGB frames in order, at the constant rate ``fps`` (any iterable; with a length,
            progress knows the total).
        audio: ``(num_samples,)`` mono float waveform at 16 kHz; sample 0 is the time of the first frame.
        syncnet: a pixel-space StableSyncNet (`load_syncnet`), in eval mode, on any device.
        detector: a `FaceDetector`, the name of one (`create_face_detector`), or ``None`` for the default.
        fps: frame rate of ``frames``; they are shown at 25 fps (`frames_at_score_fps`).
        max_offset, stride, batch_size, data: as `sync_offset_scores`.
        face_index: which face to follow (`FaceTracker`).
        detect_size: detect on frames shrunk to this longer side (faster); alignment uses the full frame.
        progress: called with ``(frames_done, frames_total)`` after each 25 fps frame (the total is 0 when unknown).

    Raises:
        NoFaceError: no frame has a usable face.
        MediaError: bad audio, or no window to score (see `sync_offset_scores`).
        ConfigError: bad settings or a SyncNet that scoring does not support.
    """
    # 1. check inputs, build the pieces
    _check_max_offset(max_offset)
    spec = SyncNetInput.for_model(syncnet, data)
    if detector is None or isinstance(detector, str):
        detector = create_face_detector() if detector is None else create_face_detector(detector)
    elif not isinstance(detector, FaceDetector):
        raise ConfigError(f"detector must be a FaceDetector or a detector name, got {type(detector).__name__}.")
    tracker = FaceTracker(detector, face_index=face_index, detect_size=detect_size)
    aligner = FaceAligner(spec.align_resolution)
    total = math.ceil(len(frames) * MODEL_FPS / parse_fps(fps)) if isinstance(frames, Sized) else 0

    # 2. audio: all its mel windows (small), so the window range is known before any frame is seen
    audio = FrameAlignedMel(audio)
    num_audio_starts = audio.num_windows(spec.num_frames)
    first_start, last_start = _window_range(num_audio_starts, max_offset)
    embedder = FaceWindowEmbedder(syncnet, spec, first_start, last_start, stride, batch_size)

    # 3. frames: 25 fps -> track -> align -> embed windows; a gap in the track resets the aligner's smoothing
    for frame, points in tracker.track(frames_at_score_fps(frames, fps)):
        if points is None:
            aligner.reset()
            embedder.push(None)
        else:
            embedder.push(spec.face(aligner, frame, points))
        if progress is not None:
            progress(embedder.num_pushed, total)

    # 4. offsets
    window_starts, vision_embeds = embedder.finish()
    if embedder.num_faces == 0:
        raise NoFaceError(
            f"No face found in any of the {embedder.num_pushed} frames (at 25 fps): the sync score needs a visible, "
            "roughly frontal talking face. Check the video, or try another face detector."
        )
    if not len(window_starts):
        raise _too_short_error(spec, max_offset, embedder.longest_run, num_audio_starts)
    return offset_score(syncnet, window_starts, vision_embeds, audio, spec.num_frames, max_offset, batch_size)


def score_video(
    video_path: str | os.PathLike,
    syncnet: StableSyncNet,
    detector: FaceDetector | str | None = None,
    audio_path: str | os.PathLike | None = None,
    *,
    progress: ScoreProgressCallback | None = None,
    **options,
) -> SyncScore:
    """Score the lip sync of a talking-face video file (any frame rate, variable too), streaming.

    Args:
        video_path: the video; its frames are resampled to 25 fps by timestamp.
        syncnet, detector: as `score_frames`.
        audio_path: the audio to score against (from time 0 of the video); ``None``: the video's own track.
        progress: called with ``(frames_done, frames_total)`` after each 25 fps frame.
        options: ``max_offset``, ``stride``, ``batch_size``, ``data``, ``face_index``, ``detect_size`` of
            `score_frames`.

    Raises:
        NoFaceError: no frame has a usable face.
        MediaError: unreadable media, no audio, or no window to score.
        ConfigError: bad settings or a SyncNet that scoring does not support.
    """
    audio = load_audio(video_path if audio_path is None else audio_path, MODEL_SAMPLE_RATE)
    with VideoReader(video_path) as reader:
        total = reader.num_frames_at_fps(MODEL_FPS)
        frames = (rgb for _, rgb in reader.frames_at_fps(MODEL_FPS))

        def report(done: int, _: int) -> None:
            progress(done, max(total, done))

        try:
            return score_frames(
                frames, audio, syncnet, detector, progress=None if progress is None else report, **options
            )
        except NoFaceError as error:
            raise NoFaceError(f"{video_path}: {error}") from None
