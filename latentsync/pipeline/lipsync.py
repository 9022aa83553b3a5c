"""Streaming lip sync: a video and a speech track in, the video with a regenerated mouth out, in bounded memory.

    decode → detect → align → VAE encode → denoise (windows of ``num_frames``) → VAE decode → paste → encode

The output has the source's frame rate (or ``output_fps``) and the length the length policy gives
(`latentsync.media.timeline`): output frame ``i`` at ``F`` fps shows source frame ``timeline.source_index(i)`` of
the clip resampled to ``F`` by timestamp. How model frames (25 fps) map to output frames, and how windows are cut,
is `latentsync.pipeline.stream`'s.

Memory. Only these live at once: the output frames whose mouth is still being generated (one window's worth, or
``window_batch`` windows' with that speed switch; at most ``4 num_frames window_batch`` frames, after which the
collected windows are generated early), those windows' aligned faces and decoded faces, the frames
`SourceFrameCursor` keeps for replaying the clip (``REVISIT_CACHE_BYTES``, only for ``loop`` and ``pingpong``),
the 16 kHz audio with its Whisper features (about 0.45 MB per second of audio with whisper tiny), and one affine
matrix per source frame (48 bytes, reused when the clip is replayed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..audio.chunks import feature_window
from ..conventions import MODEL_FPS, MODEL_SAMPLE_RATE, VAE_SCALE_FACTOR
from ..errors import MediaError
from ..face.detectors import FaceDetector, FaceFilter, create_face_detector
from ..face.detectors.resized import resized_detection
from ..face.mask import MouthMask
from ..face.restore import paste_back
from ..face.search import FaceSearch
from ..files import output_folder
from ..media.audio import load_audio
from ..media.timeline import Timeline, parse_fps, plan_timeline
from ..media.video import SourceFrameCursor, VideoReader
from ..media.writer import OUTPUT_CRF, AudioFile, VideoWriter
from ..models.vae import LatentCodec
from ..speaker import MapEntry, SyncPlan, load_speaker_map
from .ddim import initial_noise
from .faces import FacePreparer, face_pixels, replay_faces
from .inputs import check_inputs
from .models import DEFAULT_RESOLUTION
from .plan import PlannedFaces, SourceIndexTap, analyse_faces, check_every_frame_has_a_face
from .progress import CancelCallback, ProgressCallback, WorkCounter
from .report import LipSyncReport
from .settings import DEFAULT_SETTINGS, LipSyncSettings
from .speed import EXACT, SpeedSettings
from .stream import SyncStream
from .threads import background_calls, prefetch
from .timing import StageClock
from .windows import WindowGenerator, WindowPixels

logger = logging.getLogger(__name__)

# Frames decoded ahead, and finished frames waiting for the encoder, with `SpeedSettings.io_overlap`.
IO_QUEUE_FRAMES = 8
# Decoded source frames kept for replaying the clip (loop, pingpong); a backward walk decodes blocks this big.
REVISIT_CACHE_BYTES = 64 * 2**20


class LipSyncPipeline:
    """LatentSync inference as separately usable stages plus a streaming `run` over files.

    Args:
        unet: LatentSync UNet, called as ``unet(sample, timestep, audio)``; its device and dtype are the model's.
        whisper: Whisper feature extractor (`latentsync.audio.load_whisper`).
        vae: any `LatentCodec` (``DiffusersVAE``, or a wrapper of ComfyUI's VAE); it moves pixels to its device.
        detector: face detector; by default ``create_face_detector(settings.face_detector)`` keeping faces from
            ``settings.min_face_size`` pixels.
        settings: `LipSyncSettings`; ``resolution=None`` means `DEFAULT_RESOLUTION` here (the loaders infer it).
        speed: `SpeedSettings` (`latentsync.pipeline.speed`); the default is the exact path. ``compile`` compiles
            ``unet``'s layers in place.
        syncnet: the StableSyncNet that ``speaker="auto"`` finds the speaker with (None: auto means the largest
            face).

    Stages: `prepare_audio`, `face_preparer` (detect + align), `audio_window`, `denoise_windows` (the
    `WindowGenerator`), `blend_mouth`, `paste`; `sync_frames` streams frames through all of them (the ComfyUI
    sampler calls it), `sync_plan` does it once per (face, voice) of a `SyncPlan`, and `run` adds file IO (and,
    unless ``speaker="largest"``, the face analysis pass of `latentsync.pipeline.plan`).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        whisper,
        vae: LatentCodec,
        detector: FaceDetector | None = None,
        settings: LipSyncSettings = DEFAULT_SETTINGS,
        speed: SpeedSettings = EXACT,
        syncnet: torch.nn.Module | None = None,
    ):
        self.unet = unet
        self.windows = WindowGenerator(unet, vae, speed)
        self.whisper = whisper
        self.vae = vae
        self.settings = settings
        self.speed = speed
        self.resolution = settings.resolution or DEFAULT_RESOLUTION
        if detector is None:
            face_filter = FaceFilter.for_min_height(settings.min_face_size)
            detector = create_face_detector(settings.face_detector, face_filter=face_filter)
        self.detector = resized_detection(detector, speed.detect_size)
        self.syncnet = syncnet
        self.mask = MouthMask(self.resolution)

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
        return FacePreparer(
            self.detector, self.resolution, self.settings.face_index, fps, self.settings.landmark_filter
        )

    def generator(self) -> torch.Generator:
        """The CPU generator of one video, seeded with ``settings.seed``."""
        return torch.Generator(device="cpu").manual_seed(self.settings.seed)

    def initial_noise(self, generator: torch.Generator) -> torch.Tensor:
        """``x_T`` shared by every frame of a video: ``(1, 4, 1, R/8, R/8)`` float32 on the CPU."""
        return initial_noise(self.latent_size, self.latent_size, generator)

    def denoise_windows(
        self,
        windows: Sequence[tuple[np.ndarray | torch.Tensor, torch.Tensor]],
        noise: torch.Tensor,
        generator: torch.Generator,
        counter: WorkCounter | None = None,
        clock: StageClock | None = None,
    ) -> list[torch.Tensor]:
        """Generate windows of aligned faces with `WindowGenerator` (VAE encode, DDIM, VAE decode).

        Args:
            windows: ``(faces, audio)`` per window: ``(f, R, R, 3)`` uint8 aligned faces (array or tensor) and the
                ``(f, 50, d)`` audio features of the same frames (`audio_window`).
            noise: ``(1, 4, 1, R/8, R/8)`` initial noise (`initial_noise`), repeated over the frames.
            generator: CPU generator for the VAE samples.
            counter: counts the frames through VAE encode, every step and VAE decode, and asks cancel.

        Returns:
            ``(f, 3, R, R)`` float32 CPU decoded faces in about ``[-1, 1]`` per window, the whole face (see
            `blend_mouth`).

        Raises:
            Cancelled: when the counter's ``cancel()`` turns True (between frames or steps).
        """

        def pixels(faces, audio) -> WindowPixels:
            reference = face_pixels(faces)
            return WindowPixels(self.mask.mask_image(reference).float(), reference, audio)

        def on_step(step: int, num_steps: int, latents: torch.Tensor) -> None:
            if counter is not None:
                counter.advance(latents.shape[0] * latents.shape[2], "denoise")  # (windows, c, f, h, w)

        def on_frames(stage: str, num_frames: int) -> None:
            if counter is not None:
                counter.advance(num_frames, stage)

        if counter is not None:
            counter.start("vae_encode")

        generated = self.windows.generate(
            (pixels(faces, audio) for faces, audio in windows),
            noise,
            mask_latents=self.mask.latent(self.latent_size)[None, :, None],
            generator=generator,
            num_inference_steps=self.settings.num_inference_steps,
            guidance_scale=self.settings.guidance_scale,
            clock=clock,
            callback=on_step,
            on_frames=on_frames,
        )
        return [window.faces for window in generated]

    def blend_mouth(self, decoded: torch.Tensor, faces) -> torch.Tensor:
        """Keep the generated mouth region only: ``decoded (1 - m) + reference m`` (m = 1 outside the mouth).

        Args:
            decoded: ``(f, 3, R, R)`` from `denoise_windows`.
            faces: ``(f, R, R, 3)`` uint8 aligned faces to take the rest from.

        Returns:
            ``(f, 3, R, R)`` float32 in about ``[-1, 1]``.
        """
        keep = self.mask.pixel[0:1].float()
        return decoded * (1 - keep) + face_pixels(faces) * keep

    @staticmethod
    def paste(frame: np.ndarray, face: torch.Tensor, affine: np.ndarray) -> np.ndarray:
        """Paste a ``(3, R, R)`` face in ``[-1, 1]`` back into its ``(h, w, 3)`` uint8 frame (a new array)."""
        return paste_back(frame, face, affine)

    # -- streaming ------------------------------------------------------------------------------------------

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
        no_face: str | None = None,
        num_frames: int | None = None,
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
            no_face: overrides ``settings.no_face`` (`sync_plan` checks for faces itself).
            progress: ``progress(stage, done, total)`` in frames through every stage (`latentsync.pipeline.progress`);
                ``total`` is known when ``num_frames`` is given.
            cancel: asked after every unit of work; True stops the stream with `Cancelled`.
            num_frames: how many frames ``frames`` holds, if known.

        Yields:
            output frames ``(h, w, 3)`` uint8, in order, one per input frame.

        Raises:
            NoFaceError: a frame without a face under ``no_face="error"``.
            Cancelled: ``cancel()`` turned True.
        """
        fps, clock = parse_fps(fps), clock or StageClock()
        counter = WorkCounter(progress, cancel, num_frames, fps, self.settings.num_inference_steps)
        stream = SyncStream(self, features, fps, counter, clock, report or LipSyncReport(), no_face)
        preparer = preparer if preparer is not None else self.face_preparer(fps)
        for frame, face in replay_faces(preparer, frames, clock):
            yield from stream.push(frame, face)
        yield from stream.finish()

    def sync_plan(
        self,
        frames: Iterable[tuple[int, np.ndarray]],
        plan: SyncPlan,
        features: dict[Path | None, torch.Tensor],
        fps: Fraction,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        clock: StageClock | None = None,
        report: LipSyncReport | None = None,
        num_frames: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Lip-sync every (face, voice) of ``plan``: the frames go through one `sync_frames` stage per voice, chained.

        Args:
            frames: as `sync_frames`; source frame numbers are the tracks' frame numbers.
            plan: the voices (`latentsync.speaker.SyncPlan`); faces and frames it does not cover are not touched.
            features: Whisper features per voice audio (``None``: the run's audio), as `sync_frames` takes them.
            progress, cancel, num_frames: as `sync_frames`; the work of every voice's stage adds up to one total.

        Yields:
            output frames ``(h, w, 3)`` uint8, in order, one per input frame.
        """
        clock = clock or StageClock()
        report = report or LipSyncReport()
        stream: Iterable[tuple[int, np.ndarray]] = frames
        stage_reports = []
        done = [0] * len(plan.voices)  # units done per voice's stage; each stage has the same total

        def stage_progress(index: int) -> ProgressCallback | None:
            def report_sum(stage: str, stage_done: int, stage_total: int) -> None:
                done[index] = stage_done
                progress(stage, sum(done), stage_total * len(plan.voices))

            return None if progress is None else report_sum

        for index, voice in enumerate(plan.voices):
            tap = SourceIndexTap(stream)
            stage_reports.append(LipSyncReport())
            preparer = PlannedFaces([voice], self.resolution)
            synced = self.sync_frames(
                tap, features[voice.audio], fps, stage_progress(index), cancel, clock, stage_reports[-1], preparer,
                "passthrough", num_frames,
            )  # fmt: skip
            stream = tap.pair(synced)
        covered = plan.frames_with_a_face(max((len(voice.frames) for voice in plan.voices), default=0))
        for source_index, frame in stream:
            report.num_frames += 1
            report.frames_without_face += not (source_index < len(covered) and covered[source_index])
            yield frame
        report.num_model_frames += stage_reports[0].num_model_frames if stage_reports else 0
        report.num_generated += sum(stage.num_generated for stage in stage_reports)
        report.num_windows += sum(stage.num_windows for stage in stage_reports)

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
        speaker_map: os.PathLike | str | Sequence[MapEntry] | None = None,
    ) -> LipSyncReport:
        """Lip-sync ``video_path`` to ``audio_path`` (its own audio when None) into ``output_path``.

        With ``settings.speaker="largest"`` (or a ``face_index``) one pass detects and re-syncs the largest face
        (or the k-th) as frames stream by; otherwise a first pass tracks every face and makes a `SyncPlan` from
        ``settings.speaker`` or the ``speaker_map`` (a file for `latentsync.speaker.load_speaker_map`, or its
        entries), and the second
        re-syncs what the plan says.

        The output keeps the source's size and frame rate (or ``settings.output_fps``), is H.264 (crf 18; yuv420p,
        or yuv444p for odd sizes) with the original audio as AAC, lasts as the length policy says, and appears only
        when complete.

        Raises:
            MediaError: unreadable input or unwritable output (nothing is written).
            NoFaceError: a frame without a face under ``no_face="error"``.
            Cancelled: ``cancel()`` turned True (nothing is written).
        """
        started = time.perf_counter()
        clock = StageClock()

        # 1. Check inputs
        inputs = check_inputs(video_path, audio_path, output_path)
        voices = load_speaker_map(speaker_map) if isinstance(speaker_map, (str, os.PathLike)) else speaker_map
        one_pass = voices is None and (self.settings.speaker == "largest" or self.settings.face_index != "largest")

        # 2. Audio at 16 kHz; the whole clip's length is known now
        with clock.section("audio"):
            waveform = load_audio(inputs.audio_path, MODEL_SAMPLE_RATE)

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
            if one_pass:  # the total, now (a plan's total is known once its voices are)
                steps = self.settings.num_inference_steps
                WorkCounter(progress, cancel, timeline.num_output_frames, fps, steps).start("audio")
            with clock.section("audio"):
                pad = timeline.num_audio_samples(MODEL_SAMPLE_RATE) - len(waveform)
                features = self.prepare_audio(np.pad(waveform, (0, max(pad, 0))))
            report = LipSyncReport(
                output_path=inputs.output_path,
                fps=fps,
                resolution=self.resolution,
                audio_seconds=len(waveform) / MODEL_SAMPLE_RATE,
                timeline=timeline,
            )
            logger.info(
                "%s: %dx%d, %d frames at %s fps; audio %.2f s -> %d output frames (%s / %s)",
                inputs.video.path, reader.width, reader.height, timeline.num_video_frames, fps,
                report.audio_seconds, timeline.num_output_frames, timeline.long_audio, timeline.short_audio,
            )  # fmt: skip
            if timeline.video_seconds_cut:
                logger.warning(
                    "the audio (%.2f s) is shorter than the video: its last %.2f s are cut (short_audio='pad' keeps "
                    "the whole video and pads the audio with silence)",
                    report.audio_seconds, float(timeline.video_seconds_cut),
                )  # fmt: skip

            # 5. Unless one pass does: every face tracked, the plan, and the features of each voice's audio
            if not one_pass:
                search = FaceSearch(self.detector)
                tracking = WorkCounter.frames(progress, cancel, timeline.num_video_frames)
                tracking.start("faces")
                analysis = analyse_faces(
                    inputs.video.path, fps, search, self.settings.speaker, voices, self.syncnet,
                    self.settings.landmark_filter, clock, tracking,
                )  # fmt: skip
                if self.settings.no_face == "error":
                    check_every_frame_has_a_face(analysis.plan, timeline.source_indices(), fps)
                voice_features = {None: features}
                with clock.section("audio"):
                    for voice in analysis.plan.voices:
                        if voice.audio not in voice_features:
                            voice_audio = load_audio(voice.audio, MODEL_SAMPLE_RATE)
                            voice_features[voice.audio] = self.prepare_audio(
                                timeline.fit_audio(voice_audio, MODEL_SAMPLE_RATE)
                            )

            # 6. Stream: decode → faces → windows → paste → encode (decode and encode in background threads with
            #    io_overlap; "decode" and "encode" then time the waits for them)
            decoded = self._timeline_frames(reader, timeline)
            with closing(prefetch(decoded, IO_QUEUE_FRAMES) if self.speed.io_overlap else decoded) as decoded:
                frames = clock.iterate(decoded, "decode")
                if one_pass:
                    synced = self.sync_frames(
                        frames, features, fps, progress, cancel, clock, report, num_frames=timeline.num_output_frames
                    )
                else:
                    synced = self.sync_plan(
                        frames, analysis.plan, voice_features, fps, progress, cancel, clock, report,
                        num_frames=timeline.num_output_frames,
                    )  # fmt: skip
                audio = AudioFile(inputs.audio_path)
                with (
                    output_folder(inputs.output_path.parent),
                    VideoWriter(inputs.output_path, fps, reader.width, reader.height, OUTPUT_CRF, audio) as writer,
                    self._frame_sink(writer) as write_frame,
                ):
                    for frame in synced:
                        with clock.section("encode"):
                            write_frame(frame)
            # 7. Finished: the writer has renamed the file into place

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

