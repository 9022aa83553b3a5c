"""Streaming lip sync: a video and a speech track in, the video with a regenerated mouth out, in bounded memory.

    decode → detect → align → VAE encode → denoise (windows of ``num_frames``) → VAE decode → paste → encode

Timelines. The output has the source's frame rate (or ``output_fps``) and the length the length policy gives
(`latentsync.media.timeline`): output frame ``i`` at ``F`` fps shows source frame ``timeline.source_index(i)`` of
the clip resampled to ``F`` by timestamp. The model runs at 25 fps on that output timeline: model frame ``j``
(time ``j / 25``) sees the face of output frame ``floor(j F / 25)`` and the audio at ``j / 25``; output frame ``i``
shows the mouth of model frame ``floor(i 25 / F)``, blended into its own aligned face, so the upper face and the
background always belong to the frame being written. At ``F = 25`` both maps are the identity and the procedure
is the reference's.

Memory. Only these live at once: the output frames whose mouth is still being generated (one window's worth, or
``window_batch`` windows' with that speed switch; at most ``4 num_frames window_batch`` frames, after which the
collected windows are generated early), those windows' aligned faces and decoded faces, the frames
`SourceFrameCursor` keeps for replaying the clip (``REVISIT_CACHE_BYTES``, only for ``loop`` and ``pingpong``),
the 16 kHz audio with its Whisper features (about 0.45 MB per second of audio with whisper tiny), and one affine
matrix per source frame (48 bytes, reused when the clip is replayed).

Windows. Consecutive model frames with a face form a window of up to ``num_frames`` frames; a frame without a
face closes the current window early. All frames share one initial noise, drawn once per video (as the
reference does), so where a window is cut does not change the noise a frame starts from.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..audio.chunks import feature_window
from ..errors import LatentSyncError, MediaError, NoFaceError
from ..face.align import FaceAligner
from ..face.detectors import FaceDetector, create_face_detector
from ..face.mask import VAE_SCALE_FACTOR, MouthMask
from ..face.restore import paste_back
from ..face.tracking import FaceTracker, OneEuroFilter
from ..media.audio import MODEL_SAMPLE_RATE, AudioInfo, decode_audio, load_audio, probe_audio
from ..media.timeline import Timeline, plan_timeline
from ..media.video import SourceFrameCursor, VideoInfo, VideoReader, probe_video
from ..media.writer import CONTAINER_SUFFIXES, AudioFile, VideoWriter
from ..models.vae import LatentCodec, decode_in_batches, encode_in_batches
from .ddim import create_scheduler, initial_noise
from .models import DEFAULT_RESOLUTION
from .settings import DEFAULT_SETTINGS, MODEL_FPS, LipSyncSettings
from .speed import (
    EXACT,
    SpeedSettings,
    WindowInputs,
    background_calls,
    prefetch,
    sample_windows,
    wrap_detector,
    wrap_unet,
)

logger = logging.getLogger(__name__)

# Output frames that may wait for their mouth, in windows (per window batch); more forces a partial window (very
# high frame rates).
MAX_PENDING_WINDOWS = 4
# Frames decoded ahead, and finished frames waiting for the encoder, with `SpeedSettings.io_overlap`.
IO_QUEUE_FRAMES = 8
# Decoded source frames kept for replaying the clip (loop, pingpong); a backward walk decodes blocks this big.
REVISIT_CACHE_BYTES = 64 * 2**20
# H.264 quality of the output (lower is better; 18 is visually lossless for most content).
OUTPUT_CRF = 18

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages ``"audio"``, ``"frames"`` (output frames written) and ``"denoise"``
(steps of the current window)."""
CancelCallback = Callable[[], bool]
"""``cancel()`` returns True to stop; it is asked before every output frame and after every denoising step."""


class Cancelled(LatentSyncError):
    """The run was stopped by its ``cancel`` callback; nothing was written."""


# ----------------------------------------------------------------------------------------------------------
# Timing


class StageClock:
    """Seconds spent per stage. Sections nest: an inner section's time is not counted in the outer one, so the
    stages add up to the time measured."""

    _END = object()

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open section: seconds spent in sections nested in it

    @contextmanager
    def section(self, stage: str):
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[stage] += elapsed - self._inner.pop()
            if self._inner:
                self._inner[-1] += elapsed

    def iterate(self, items: Iterable, stage: str) -> Iterator:
        """``items``, with the time spent producing each one counted for ``stage``."""
        iterator = iter(items)
        while True:
            with self.section(stage):
                item = next(iterator, self._END)
            if item is self._END:
                return
            yield item


@contextmanager
def one_torch_thread():
    """Run small per-frame tensor work (the warps and blurs of align and paste) on one intra-op thread.

    Splitting a 280 x 210 warp across threads costs more than it saves; on two busy cores one paste took 80 ms with
    two threads and 6 ms with one. The previous thread count is restored on exit (it is process-wide state).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------
# Faces


@dataclass
class PreparedFace:
    """The aligned face of one frame.

    Attributes:
        affine: ``(2, 3)`` float64 frame → crop matrix (`FaceAligner.estimate_affine`).
        face: ``(R, R, 3)`` uint8 RGB aligned face.
    """

    affine: np.ndarray
    face: np.ndarray


class FacePreparer:
    """Detects, tracks and aligns the face of each frame of one clip, fed in order.

    Args:
        detector: any `FaceDetector`.
        resolution: side of the aligned face (256 or 512).
        face_index: ``"largest"`` or the k-th largest face, followed from its first appearance (`FaceTracker`).
        fps: frame rate of the frames fed, which sets the time step of the tracker's point smoothing.
    """

    def __init__(
        self,
        detector: FaceDetector,
        resolution: int = DEFAULT_RESOLUTION,
        face_index="largest",
        fps: Fraction | float = MODEL_FPS,
    ):
        self.tracker = FaceTracker(detector, face_index=face_index, smoothing=OneEuroFilter(fps=float(fps)))
        self.aligner = FaceAligner(resolution, smooth=True)

    def prepare(
        self, frames: Iterable[np.ndarray], clock: StageClock | None = None
    ) -> Iterator[tuple[np.ndarray, PreparedFace | None]]:
        """Yield ``(frame, face)`` for every ``(h, w, 3)`` uint8 RGB frame, in order; ``face`` is ``None`` where the
        tracker has no face. A few frames may be held back while the tracker bridges a short miss."""
        clock = clock or StageClock()
        for frame, points in clock.iterate(self.tracker.track(frames), "detect"):
            face = None
            if points is not None:
                with clock.section("align"), one_torch_thread():
                    try:
                        face = self.align(frame, self.aligner.estimate_affine(points))
                    except NoFaceError as error:  # degenerate points (all three coincide)
                        logger.debug("unusable face points: %s", error)
            if face is None:
                self.aligner.reset()  # the smoothing state does not carry across a gap
            yield frame, face

    def align(self, frame: np.ndarray, affine: np.ndarray) -> PreparedFace:
        """The face of ``frame`` under a known ``affine`` (a frame seen before, e.g. when a clip is replayed)."""
        return PreparedFace(affine, self.aligner.align(frame, affine))


def face_pixels(faces) -> torch.Tensor:
    """``(f, R, R, 3)`` uint8 faces → ``(f, 3, R, R)`` float32 pixels ``(x / 255 - 0.5) / 0.5`` in ``[-1, 1]``."""
    faces = torch.as_tensor(np.asarray(faces))
    return (faces.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def _to_video(latents: torch.Tensor) -> torch.Tensor:
    """``(f, c, h, w)`` → ``(1, c, f, h, w)``."""
    return latents.permute(1, 0, 2, 3).unsqueeze(0)


def model_frames_of(output_index: int, fps: Fraction) -> range:
    """Model frames (25 fps) that take their face from output frame ``output_index`` at ``fps``: every ``j`` with
    ``floor(j fps / 25) == output_index`` (one at 25 fps; none or one above; one or two below)."""
    return range(math.ceil(output_index * MODEL_FPS / fps), math.ceil((output_index + 1) * MODEL_FPS / fps))


def model_frame_shown(output_index: int, fps: Fraction) -> int:
    """The model frame whose mouth output frame ``output_index`` at ``fps`` shows: ``floor(i 25 / fps)``."""
    return math.floor(output_index * MODEL_FPS / fps)


# ----------------------------------------------------------------------------------------------------------
# Inputs and report


@dataclass(frozen=True)
class LipSyncInputs:
    """Checked inputs of a run (`check_inputs`)."""

    video: VideoInfo
    audio_path: Path
    audio: AudioInfo
    output_path: Path


def check_inputs(
    video_path: os.PathLike | str, audio_path: os.PathLike | str | None, output_path: os.PathLike | str
) -> LipSyncInputs:
    """Check the files of a run before any model work: the video decodes, the audio (the video's own when
    ``audio_path`` is None) has samples, and the output can be written.

    Raises:
        MediaError: saying which file is wrong and what to do.
    """
    video = probe_video(video_path)
    audio_path = Path(audio_path) if audio_path is not None else video.path
    try:
        audio = probe_audio(audio_path)
    except MediaError as error:
        if audio_path != video.path:
            raise
        raise MediaError(f"{video.path} has no audio track; give the speech with an audio file (--audio).") from error
    with closing(decode_audio(audio_path)) as chunks:
        if not any(seconds > 0 for seconds, _ in chunks):
            raise MediaError(f"{audio_path} has an audio track of zero length. Give an audio file with speech in it.")

    output_path = Path(output_path)
    if output_path.suffix.lower() not in CONTAINER_SUFFIXES:
        raise MediaError(f"Cannot write {output_path.name}: the output must be one of {', '.join(CONTAINER_SUFFIXES)}.")
    folder = output_path.parent
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True)
        except OSError as error:
            raise MediaError(
                f"Cannot create the output folder {folder} ({error}); choose another output path."
            ) from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MediaError(f"The output folder {folder} is not writable; choose another output path.")
    if output_path.is_dir():
        raise MediaError(f"The output {output_path} is a folder; give a file name such as {output_path / 'out.mp4'}.")
    if output_path.exists() and any(output_path.samefile(path) for path in (video.path, audio_path)):
        raise MediaError(f"The output {output_path} is one of the inputs; choose another output name.")
    return LipSyncInputs(video, audio_path, audio, output_path)


@dataclass
class LipSyncReport:
    """What a run did.

    Attributes:
        output_path: the file written.
        num_frames: output frames written, at ``fps``.
        num_model_frames: 25 fps frames of the output timeline; ``num_generated`` of them had a face and were
            generated, in ``num_windows`` windows.
        frames_without_face: output frames passed through unchanged (no face in them or in their model frame).
        stage_seconds: wall-clock seconds per stage (``audio``, ``decode``, ``detect``, ``align``, ``vae_encode``,
            ``denoise``, ``vae_decode``, ``paste``, ``encode``).
    """

    output_path: Path | None = None
    fps: Fraction = MODEL_FPS
    resolution: int = DEFAULT_RESOLUTION
    audio_seconds: float = 0.0
    num_frames: int = 0
    num_model_frames: int = 0
    num_generated: int = 0
    num_windows: int = 0
    frames_without_face: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def duration(self) -> Fraction:
        """Seconds of output video, exactly."""
        return self.num_frames / self.fps

    def timing_table(self) -> str:
        """Seconds per stage and milliseconds per frame (output frames; generated frames for the model stages)."""
        model_stages = ("vae_encode", "denoise", "vae_decode")
        lines = [f"{'stage':<11}{'seconds':>9}{'ms/frame':>10}"]
        for stage, seconds in self.stage_seconds.items():
            count = self.num_generated if stage in model_stages else self.num_frames
            per_frame = f"{1000 * seconds / count:10.1f}" if count and stage != "audio" else f"{'':>10}"
            lines.append(f"{stage:<11}{seconds:9.2f}{per_frame}")
        lines.append(f"{'total':<11}{self.wall_seconds:9.2f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Pipeline


class LipSyncPipeline:
    """LatentSync inference as separately usable stages plus a streaming `run` over files.

    Args:
        unet: LatentSync UNet, called as ``unet(sample, timestep, audio)``; its device and dtype are the model's.
        whisper: Whisper feature extractor (`latentsync.audio.load_whisper`).
        vae: any `LatentCodec` (``DiffusersVAE``, or a wrapper of ComfyUI's VAE); it moves pixels to its device.
        detector: face detector; by default ``create_face_detector(settings.face_detector)``.
        settings: `LipSyncSettings`; ``resolution=None`` means `DEFAULT_RESOLUTION` here (the loaders infer it).
        speed: `SpeedSettings` (`latentsync.pipeline.speed`); the default is the exact path. ``compile`` compiles
            ``unet``'s layers in place.

    Stages (ComfyUI nodes call them on IMAGE batches): `prepare_audio`, `face_preparer` (detect + align),
    `audio_window`, `denoise_windows` (`denoise_window`) / `blend_mouth` / `generate_window`, `paste`;
    `sync_frames` streams frames through all of them and `run` adds file IO.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        whisper,
        vae: LatentCodec,
        detector: FaceDetector | None = None,
        settings: LipSyncSettings = DEFAULT_SETTINGS,
        speed: SpeedSettings = EXACT,
    ):
        self.unet = unet
        self.denoiser = wrap_unet(unet, speed)  # what the sampler calls: the UNet, or DeepCache around it
        self.whisper = whisper
        self.vae = vae
        self.settings = settings
        self.speed = speed
        self.resolution = settings.resolution or DEFAULT_RESOLUTION
        detector = detector if detector is not None else create_face_detector(settings.face_detector)
        self.detector = wrap_detector(detector, speed)
        self.mask = MouthMask(self.resolution)
        self.scheduler = create_scheduler()

    @property
    def latent_size(self) -> int:
        return self.resolution // VAE_SCALE_FACTOR

    # -- stages ----------------------------------------------------------------------------------------------

    def prepare_audio(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Whisper features of 16 kHz mono audio: ``(num_samples,)`` → ``(num_samples // 320, L, d)`` float32 CPU."""
        return self.whisper.encode(waveform)

    @staticmethod
    def audio_window(features: torch.Tensor, start: int, num_frames: int) -> torch.Tensor:
        """Audio of model frames ``start .. start + num_frames - 1`` (25 fps): ``(num_frames, 10 L, d)``."""
        return feature_window(features, start, num_frames, MODEL_FPS)

    def face_preparer(self, fps: Fraction | float = MODEL_FPS) -> FacePreparer:
        """A fresh `FacePreparer` (tracker and smoothing state) for one clip at ``fps``."""
        return FacePreparer(self.detector, self.resolution, self.settings.face_index, fps)

    def generator(self) -> torch.Generator:
        """The CPU generator of one video, seeded with ``settings.seed``."""
        return torch.Generator(device="cpu").manual_seed(self.settings.seed)

    def initial_noise(self, generator: torch.Generator) -> torch.Tensor:
        """``x_T`` shared by every frame of a video: ``(1, 4, 1, R/8, R/8)`` float32 on the CPU."""
        return initial_noise(self.latent_size, self.latent_size, generator)

    @torch.no_grad()
    def denoise_windows(
        self,
        windows: Sequence[tuple[np.ndarray | torch.Tensor, torch.Tensor]],
        noise: torch.Tensor,
        generator: torch.Generator,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        clock: StageClock | None = None,
    ) -> list[torch.Tensor]:
        """Generate windows: VAE-encode the masked and then the reference faces of each window in turn (posterior
        samples from ``generator`` in that order), denoise ``speed.window_batch`` windows per UNet batch from
        ``noise``, and VAE-decode.

        Args:
            windows: ``(faces, audio)`` per window: ``(f, R, R, 3)`` uint8 aligned faces (array or tensor) and the
                ``(f, 50, d)`` audio features of the same frames (`audio_window`).
            noise: ``(1, 4, 1, R/8, R/8)`` initial noise (`initial_noise`), repeated over the frames.
            generator: CPU generator for the VAE samples.

        Returns:
            ``(f, 3, R, R)`` float32 CPU decoded faces in about ``[-1, 1]`` per window, the whole face (see
            `blend_mouth`).

        Raises:
            Cancelled: when ``cancel()`` turns True between two steps.
        """
        clock = clock or StageClock()
        parameter = next(self.unet.parameters())
        device, dtype = parameter.device, parameter.dtype
        vae_batch = self.speed.vae_batch_on(device)
        mask_latents = self.mask.latent(self.latent_size)[None, :, None].to(device, dtype)

        # 1. Conditioning latents, window by window
        inputs = []
        for faces, audio in windows:
            pixels = face_pixels(faces)
            num_frames = pixels.shape[0]
            with clock.section("vae_encode"):
                masked_latents = encode_in_batches(self.vae, self.mask.mask_image(pixels).float(), generator, vae_batch)
                ref_latents = encode_in_batches(self.vae, pixels, generator, vae_batch)
            inputs.append(
                WindowInputs(
                    latents=noise.repeat(1, 1, num_frames, 1, 1).to(device, dtype),
                    mask_latents=mask_latents.expand(-1, -1, num_frames, -1, -1),
                    masked_image_latents=_to_video(masked_latents).to(device, dtype),
                    ref_latents=_to_video(ref_latents).to(device, dtype),
                    audio_embeds=audio[None].to(device, dtype),
                )
            )

        # 2. Denoise
        def on_step(step: int, num_steps: int, latents: torch.Tensor) -> None:
            if progress is not None:
                for _ in range(latents.shape[0]):  # one step of every window in the batch
                    progress("denoise", step + 1, num_steps)
            if cancel is not None and cancel():
                raise Cancelled("lip sync was cancelled")

        with clock.section("denoise"):
            denoised = sample_windows(
                self.denoiser,
                inputs,
                self.speed.window_batch,
                num_inference_steps=self.settings.num_inference_steps,
                guidance_scale=self.settings.guidance_scale,
                scheduler=self.scheduler,
                callback=on_step,
                batch_cfg=self.speed.cfg_batch,
            )

        # 3. Back to pixels
        with clock.section("vae_decode"):
            return [decode_in_batches(self.vae, latents[0].permute(1, 0, 2, 3), vae_batch) for latents in denoised]

    def denoise_window(
        self, faces, audio: torch.Tensor, noise: torch.Tensor, generator: torch.Generator, **kwargs
    ) -> torch.Tensor:
        """`denoise_windows` of one window: ``(f, R, R, 3)`` faces and ``(f, 50, d)`` audio → ``(f, 3, R, R)``."""
        return self.denoise_windows([(faces, audio)], noise, generator, **kwargs)[0]

    def blend_mouth(self, decoded: torch.Tensor, faces) -> torch.Tensor:
        """Keep the generated mouth region only: ``decoded (1 - m) + reference m`` (m = 1 outside the mouth).

        Args:
            decoded: ``(f, 3, R, R)`` from `denoise_window`.
            faces: ``(f, R, R, 3)`` uint8 aligned faces to take the rest from.

        Returns:
            ``(f, 3, R, R)`` float32 in about ``[-1, 1]``.
        """
        keep = self.mask.pixel[0:1].float()
        return decoded * (1 - keep) + face_pixels(faces) * keep

    def generate_window(self, faces, audio: torch.Tensor, noise: torch.Tensor, generator: torch.Generator, **kwargs):
        """`denoise_window` then `blend_mouth` with the same faces: ``(f, 3, R, R)`` lip-synced faces."""
        return self.blend_mouth(self.denoise_window(faces, audio, noise, generator, **kwargs), faces)

    @staticmethod
    def paste(frame: np.ndarray, face: torch.Tensor, affine: np.ndarray) -> np.ndarray:
        """Paste a ``(3, R, R)`` face in ``[-1, 1]`` back into its ``(h, w, 3)`` uint8 frame (a new array)."""
        return paste_back(frame, face, affine)

    # -- streaming ------------------------------------------------------------------------------------------

    def _prepared_frames(
        self, preparer: FacePreparer, frames: Iterable[tuple[int, np.ndarray]], clock: StageClock
    ) -> Iterator[tuple[np.ndarray, PreparedFace | None]]:
        """``(frame, face)`` per ``(source_index, frame)``: a source frame seen for the first time goes through the
        tracker (first visits must come in order 0, 1, 2, ...); a replayed one reuses its affine matrix."""
        frames = iter(frames)
        affines: list[np.ndarray | None] = []  # per source frame
        replayed: list[tuple[int, np.ndarray]] = []  # the frame that ended a run of first visits
        fed = 0

        def first_visits() -> Iterator[np.ndarray]:
            nonlocal fed
            for source_index, frame in frames:
                if source_index < fed:
                    replayed.append((source_index, frame))
                    return
                if source_index != fed:
                    raise ValueError(f"source frame {source_index} came before source frame {fed}")
                fed += 1
                yield frame

        while True:
            for frame, face in preparer.prepare(first_visits(), clock):
                affines.append(None if face is None else face.affine)
                yield frame, face
            if not replayed:
                return
            source_index, frame = replayed.pop()
            affine = affines[source_index]
            if affine is None:
                yield frame, None
            else:
                with clock.section("align"), one_torch_thread():
                    face = preparer.align(frame, affine)
                yield frame, face

    def sync_frames(
        self,
        frames: Iterable[tuple[int, np.ndarray]],
        features: torch.Tensor,
        fps: Fraction,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        clock: StageClock | None = None,
        report: LipSyncReport | None = None,
        preparer: FacePreparer | None = None,
    ) -> Iterator[np.ndarray]:
        """Lip-sync a stream of frames.

        Args:
            frames: ``(source_index, (h, w, 3) uint8 RGB)`` per output frame, in output order at ``fps``; the first
                visits of source frames in order 0, 1, 2, ..., replays (loop, pingpong) reuse the first visit's face.
            features: Whisper features covering the output (`prepare_audio`), model frame ``j`` at ``j / 25`` s.
            fps: output frame rate.
            report: counters are added to it.
            preparer: where the faces come from: a fresh `face_preparer` (detect, track, align) by default; or
                anything with `FacePreparer`'s ``prepare`` and ``align``, e.g. faces prepared earlier (the ComfyUI
                sampler replays those of LatentSync Face Prepare).

        Yields:
            output frames ``(h, w, 3)`` uint8, in order, one per input frame.

        Raises:
            NoFaceError: a frame without a face under ``no_face="error"``.
            Cancelled: ``cancel()`` turned True.
        """
        clock = clock or StageClock()
        stream = _SyncStream(self, features, Fraction(fps), progress, cancel, clock, report or LipSyncReport())
        preparer = preparer if preparer is not None else self.face_preparer(fps)
        for frame, face in self._prepared_frames(preparer, frames, clock):
            yield from stream.push(frame, face)
        yield from stream.finish()

    # -- files ------------------------------------------------------------------------------------------------

    @staticmethod
    def _timeline_frames(reader: VideoReader, timeline: Timeline) -> Iterator[tuple[int, np.ndarray]]:
        """``(source_index, frame)`` for every output frame of ``timeline``, decoding the source as it goes."""
        cache_bytes = REVISIT_CACHE_BYTES if timeline.revisits_source else 0
        cursor = SourceFrameCursor(reader, timeline.fps, cache_bytes)
        last = None
        for source_index in timeline.source_indices():
            try:
                last = cursor[source_index]
            except IndexError:  # fewer frames decode than the packet timestamps promised
                if last is None:
                    raise MediaError(f"{reader.path}: no frame could be decoded at {timeline.fps} fps.") from None
                logger.warning(
                    "%s: source frame %d is missing; repeating the previous frame", reader.path, source_index
                )
            yield source_index, last

    def run(
        self,
        video_path: os.PathLike | str,
        audio_path: os.PathLike | str | None,
        output_path: os.PathLike | str,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> LipSyncReport:
        """Lip-sync ``video_path`` to ``audio_path`` (its own audio when None) into ``output_path``.

        The output keeps the source's size and frame rate (or ``settings.output_fps``), is H.264 yuv420p (crf 18)
        with the original audio as AAC, lasts as the length policy says, and appears only when complete.

        Raises:
            MediaError: unreadable input or unwritable output (nothing is written).
            NoFaceError: a frame without a face under ``no_face="error"``.
            Cancelled: ``cancel()`` turned True (nothing is written).
        """
        started = time.perf_counter()
        clock = StageClock()

        # 1. Check inputs
        inputs = check_inputs(video_path, audio_path, output_path)

        # 2. Audio at 16 kHz; the whole clip's length is known now
        with clock.section("audio"):
            waveform = load_audio(inputs.audio_path, MODEL_SAMPLE_RATE)
        if progress is not None:
            progress("audio", 0, 1)

        with VideoReader(inputs.video.path) as reader:
            # 3. Timeline: output frames at the output rate, fitted to the audio
            fps = self.settings.output_fps or reader.fps
            timeline = plan_timeline(
                reader.num_frames_at_fps(fps),
                Fraction(len(waveform), MODEL_SAMPLE_RATE),
                fps,
                self.settings.long_audio,
                self.settings.short_audio,
            )
            # 4. Whisper features, with silence after the audio when the policy keeps more video than audio
            with clock.section("audio"):
                pad = timeline.num_audio_samples(MODEL_SAMPLE_RATE) - len(waveform)
                features = self.prepare_audio(np.pad(waveform, (0, max(pad, 0))))
            if progress is not None:
                progress("audio", 1, 1)
            report = LipSyncReport(
                output_path=inputs.output_path,
                fps=fps,
                resolution=self.resolution,
                audio_seconds=len(waveform) / MODEL_SAMPLE_RATE,
            )
            logger.info(
                "%s: %dx%d, %d frames at %s fps; audio %.2f s -> %d output frames (%s / %s)",
                inputs.video.path, reader.width, reader.height, timeline.num_video_frames, fps,
                report.audio_seconds, timeline.num_output_frames, timeline.long_audio, timeline.short_audio,
            )  # fmt: skip

            # 5. Stream: decode → faces → windows → paste → encode (decode and encode in background threads with
            #    io_overlap; "decode" and "encode" then time the waits for them)
            decoded = self._timeline_frames(reader, timeline)
            with closing(prefetch(decoded, IO_QUEUE_FRAMES) if self.speed.io_overlap else decoded) as decoded:
                frames = clock.iterate(decoded, "decode")
                synced = self.sync_frames(frames, features, fps, progress, cancel, clock, report)
                audio = AudioFile(inputs.audio_path)
                with (
                    VideoWriter(inputs.output_path, fps, reader.width, reader.height, OUTPUT_CRF, audio) as writer,
                    self._frame_sink(writer) as write_frame,
                ):
                    for written, frame in enumerate(synced, start=1):
                        with clock.section("encode"):
                            write_frame(frame)
                        if progress is not None:
                            progress("frames", written, timeline.num_output_frames)
                        if cancel is not None and cancel():
                            raise Cancelled("lip sync was cancelled")
            # 6. Finished: the writer has renamed the file into place

        report.stage_seconds = dict(clock.seconds)
        report.wall_seconds = time.perf_counter() - started
        if report.frames_without_face:
            logger.info(
                "%d of %d frames had no face and were kept unchanged", report.frames_without_face, report.num_frames
            )
        if report.num_generated == 0:
            logger.warning("no face was found in any frame; %s is the input video, unchanged", inputs.output_path)
        return report

    @contextmanager
    def _frame_sink(self, writer: VideoWriter) -> Iterator[Callable[[np.ndarray], None]]:
        """``writer.write_frame``, in a background thread with ``speed.io_overlap``; all written on exit."""
        if not self.speed.io_overlap:
            yield writer.write_frame
            return
        with background_calls(writer.write_frame, IO_QUEUE_FRAMES) as submit:
            yield submit


@dataclass
class _PendingFrame:
    index: int  # output frame index
    frame: np.ndarray
    face: PreparedFace | None


class _SyncStream:
    """The state of `LipSyncPipeline.sync_frames`: output frames waiting for their mouth, the window being
    collected, and the decoded faces of the last window."""

    def __init__(self, pipeline, features, fps, progress, cancel, clock, report):
        self.pipeline = pipeline
        self.settings: LipSyncSettings = pipeline.settings
        self.features = features
        self.fps = fps
        self.progress = progress
        self.cancel = cancel
        self.clock = clock
        self.report = report
        self.generator = pipeline.generator()
        self.noise = pipeline.initial_noise(self.generator)
        self.window_batch = pipeline.speed.window_batch
        self.max_pending = MAX_PENDING_WINDOWS * self.settings.num_frames * self.window_batch
        self.num_input = 0
        self.pending: deque[_PendingFrame] = deque()
        self.window_start = 0  # model frame of window_faces[0]
        self.window_faces: list[np.ndarray] = []
        self.closed_windows: list[tuple[int, np.ndarray]] = []  # (first model frame, faces), waiting for a batch
        self.decoded: dict[int, torch.Tensor | None] = {}  # model frame → decoded face, None without a face

    def push(self, frame: np.ndarray, face: PreparedFace | None) -> Iterator[np.ndarray]:
        """Take the next output frame; yield the output frames that are complete, in order."""
        index = self.num_input
        self.num_input += 1
        if face is None and self.settings.no_face == "error":
            raise NoFaceError(
                f"No face in output frame {index} ({float(index / self.fps):.2f} s). Use a clip with a visible face "
                "in every frame, or no_face='passthrough' (--no-face passthrough) to keep such frames unchanged."
            )
        self.pending.append(_PendingFrame(index, frame, face))
        for model_frame in model_frames_of(index, self.fps):
            self.report.num_model_frames += 1
            if face is None:
                self._close_window()
                self.decoded[model_frame] = None
            else:
                if not self.window_faces:
                    self.window_start = model_frame
                self.window_faces.append(face.face)
                if len(self.window_faces) == self.settings.num_frames:
                    self._close_window()
        if len(self.pending) > self.max_pending:
            self._generate()
        yield from self._flush()

    def finish(self) -> Iterator[np.ndarray]:
        """Generate the last windows and yield the remaining output frames."""
        self._generate()
        yield from self._flush()

    def _close_window(self) -> None:
        """End the window being collected (full, or cut by a frame without a face); generate once a batch of
        ``window_batch`` windows has closed."""
        self._generate(full_batch_only=True)

    def _generate(self, full_batch_only: bool = False) -> None:
        """Close the window being collected (if any) and generate the closed windows into `decoded` (with
        ``full_batch_only``, only once there are ``window_batch`` of them)."""
        if self.window_faces:
            self.closed_windows.append((self.window_start, np.stack(self.window_faces)))
            self.window_faces = []
        if not self.closed_windows or (full_batch_only and len(self.closed_windows) < self.window_batch):
            return
        windows = [
            (faces, self.pipeline.audio_window(self.features, start, len(faces)))
            for start, faces in self.closed_windows
        ]
        decoded = self.pipeline.denoise_windows(
            windows, self.noise, self.generator, self.progress, self.cancel, self.clock
        )
        for (start, faces), window in zip(self.closed_windows, decoded):
            for offset, face in enumerate(window):
                self.decoded[start + offset] = face
            self.report.num_generated += len(faces)
            self.report.num_windows += 1
        self.closed_windows = []

    def _flush(self) -> Iterator[np.ndarray]:
        """Yield pending frames, in order, while their mouth is ready; then forget decoded faces no longer shown."""
        while self.pending:
            pending = self.pending[0]
            model_frame = model_frame_shown(pending.index, self.fps)
            if pending.face is not None and model_frame not in self.decoded:
                break  # its window is still being collected
            self.pending.popleft()
            decoded = self.decoded.get(model_frame) if pending.face is not None else None
            if decoded is None:
                self.report.frames_without_face += 1
                output = pending.frame
            else:
                with self.clock.section("paste"), one_torch_thread():
                    face = self.pipeline.blend_mouth(decoded[None], pending.face.face[None])[0]
                    output = self.pipeline.paste(pending.frame, face, pending.face.affine)
            self.report.num_frames += 1
            yield output
        oldest_shown = model_frame_shown(self.pending[0].index if self.pending else self.num_input, self.fps)
        for model_frame in [key for key in self.decoded if key < oldest_shown]:
            del self.decoded[model_frame]
