"""The lip-sync nodes: the sampler over an IMAGE batch, the streaming sampler over a VIDEO, and the all-in-one.

Which to use:

* **LatentSync Sampler** (IMAGE in, IMAGE out) for short clips and graphs that edit frames before or after: every
  frame sits in memory as float32 (a 1080p frame is 25 MB: about 10 s of 1080p per 6 GB of RAM, twice: in
  and out).
* **LatentSync Video Sampler** (VIDEO in, VIDEO out) for long clips: frames are decoded, generated, pasted and
  encoded as they stream (memory does not grow with the length); the output keeps the source's size, frame rate
  and the original-quality audio.
* **LatentSync LipSync** the same streaming run with the model files picked by name, for a three-node graph
  (Load Video → LipSync → Save Video). It expands into the loaders and the Video Sampler when it runs, so
  ComfyUI caches the loaded models as it caches any loader's output.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import folder_paths
import torch
from comfy import model_management
from comfy.model_patcher import ModelPatcher
from comfy_api.latest import InputImpl, io
from comfy_execution.graph_utils import GraphBuilder

from ..latentsync.errors import ConfigError, MediaError
from ..latentsync.face.detectors import FaceDetector, FaceFilter
from ..latentsync.media.timeline import plan_timeline
from ..latentsync.media.video import probe_video
from ..latentsync.pipeline.report import LipSyncReport
from ..latentsync.pipeline.settings import AUTO, LipSyncSettings
from ..latentsync.pipeline.speed import EXACT, SPEED_SPECS, SpeedSettings
from ..latentsync.pipeline.timing import StageClock
from ..latentsync.speaker import MapEntry, parse_speaker
from .common import (
    AUDIO_EMBEDS,
    AUDIO_ENCODER,
    CATEGORY,
    DEFAULT_INSIGHTFACE_MODEL,
    FACE_DETECTOR,
    FACES,
    MODEL,
    SPEAKER_MAP,
    SPEED,
    SYNCNET,
    Choice,
    SamplingProgress,
    comfy_video_path,
    fps_input,
    generation_inputs,
    landmark_filter_input,
    latentsync_files,
    policy_inputs,
    setting_input,
    show_notices,
    speaker_input,
    vae_choices,
    vae_input,
    video_output,
)
from .convert import Uint8Frames, as_fps, frame_to_image, save_wav, scratch_dir
from .data import (
    AudioEmbeds,
    LatentSyncModel,
    PreparedFaces,
    face_index_setting,
    run_notices,
    setting_fields,
    setting_widget,
)
from .vae_codecs import vae_codec

logger = logging.getLogger(__name__)

VIDEO_TOOLTIP = (
    "The video with the face (e.g. from Load Video). It streams: use this path for long clips; LatentSync "
    "Sampler (IMAGE) holds every frame in memory."
)
AUDIO_TOOLTIP = "Speech to sync to (e.g. from Load Audio). Leave unconnected to use the video's own sound."


def check_audio_width(model: LatentSyncModel, width: int) -> None:
    """Raise `ConfigError` unless the UNet attends to ``width``-wide audio features."""
    expected = model.unet.config.cross_attention_dim
    if width != expected:
        raise ConfigError(
            f"The audio features are {width} wide but the UNet {model.path.name} attends to {expected}-wide audio. "
            "LatentSync 1.5/1.6 pair with whisper/tiny.pt (384); a 768-wide UNet pairs with whisper/small.pt."
        )


# ----------------------------------------------------------------------------------------------------------
# VIDEO in, VIDEO out


def video_file(video, scratch: Path) -> Path:
    """A file of ``video`` the library can stream: Load Video's own file (if it lies in ComfyUI's folders), else the
    video written to ``scratch``."""
    if isinstance(video, InputImpl.VideoFromFile):
        source = video.get_stream_source()
        if isinstance(source, str):
            return comfy_video_path(source)
        path = scratch / "source_video"
        path.write_bytes(source.getbuffer())
        return path
    path = scratch / "source_video.mp4"
    video.save_to(str(path))
    return path


def lipsync_video(
    model: LatentSyncModel,
    vae,
    audio_encoder: ModelPatcher,
    face_detector: FaceDetector,
    video,
    audio: dict | None,
    settings: LipSyncSettings,
    speed: SpeedSettings,
    syncnet: ModelPatcher | None = None,
    speaker_map: list[tuple[str, dict | None]] | None = None,
) -> io.NodeOutput:
    """Stream ``video`` through the pipeline (`LipSyncPipeline.run`) in a scratch folder that is always removed;
    the output VIDEO, with the run's notices.

    ``syncnet`` finds the speaker for ``settings.speaker="auto"``; ``speaker_map`` (from Speaker Map) gives faces
    their own voices."""
    whisper = audio_encoder.model.module
    check_audio_width(model, whisper.hidden_size)
    with scratch_dir(folder_paths.get_temp_directory()) as scratch:
        # 1. Inputs as files
        video_path = video_file(video, scratch)
        info = probe_video(video_path)
        if audio is None and not info.has_audio:
            raise MediaError(
                "The video has no audio track and no AUDIO is connected: connect the speech to the audio input "
                "(e.g. from Load Audio)."
            )
        audio_path = None if audio is None else save_wav(audio, scratch / "speech.wav")
        voices = None
        if speaker_map is not None:
            voices = [
                MapEntry(parse_speaker(face), None if voice is None else save_wav(voice, scratch / f"voice{index}.wav"))
                for index, (face, voice) in enumerate(speaker_map)
            ]

        # 2. Run, with progress over its frames through every stage
        progress = SamplingProgress()
        model_management.load_models_gpu([model.patcher, audio_encoder, *([syncnet] if syncnet else [])])
        codec = vae_codec(vae, keep_loaded=[model.patcher], on_decoded=progress.show)
        face_detector = face_detector.with_filter(FaceFilter.for_min_height(settings.min_face_size))
        from ..latentsync.pipeline.lipsync import LipSyncPipeline  # diffusers' scheduler: imported when a node runs

        pipeline = LipSyncPipeline(
            model.unet, whisper, codec, face_detector, settings, speed, syncnet.model.module if syncnet else None
        )
        output_path = scratch / "lipsync.mp4"
        report = pipeline.run(video_path, audio_path, output_path, progress.progress, progress.cancel, voices)
        progress.finish()
        log_report(report)
        notices = run_notices(report.timeline, report.num_generated)
        return io.NodeOutput(video_output(output_path), ui=show_notices(notices))


def log_report(report: LipSyncReport) -> None:
    logger.info(
        "LatentSync: %d frames (%d generated in %d windows, %d without a face)\n%s",
        report.num_frames,
        report.num_generated,
        report.num_windows,
        report.frames_without_face,
        report.timing_table(),
    )


def speed_input() -> io.Input:
    return SPEED.Input("speed", optional=True, tooltip="From LatentSync Speed; unconnected: the exact path.")


def run_settings(model: LatentSyncModel, **inputs) -> LipSyncSettings:
    """`LipSyncSettings` from node inputs (`setting_fields`; ``face_index`` as the widget's integer)."""
    values = setting_fields(inputs)
    if "face_index" in values:
        values["face_index"] = face_index_setting(values["face_index"])
    return LipSyncSettings(resolution=model.resolution, **values)


# ----------------------------------------------------------------------------------------------------------
# Nodes


class LatentSyncSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentSyncSampler",
            display_name="LatentSync Sampler",
            category=CATEGORY,
            description="Regenerates the mouth of every frame to match the speech and pastes it back into the full "
            "frames. IMAGE in, IMAGE out: every frame is held in memory, so for long clips use LatentSync Video "
            "Sampler (VIDEO in and out, streaming).",
            inputs=[
                MODEL.Input("model", tooltip="From LatentSync Model Loader (or LatentSync LoRA)."),
                vae_input(),
                AUDIO_EMBEDS.Input("audio_embeds", tooltip="From LatentSync Audio Encode."),
                io.Image.Input("images", tooltip="The video frames; the same frames LatentSync Face Prepare saw."),
                FACES.Input("faces", tooltip="From LatentSync Face Prepare, run on these frames."),
                fps_input(),
                *generation_inputs(),
                *policy_inputs(),
                speed_input(),
            ],
            outputs=[
                io.Image.Output(
                    display_name="images",
                    tooltip="The full frames with the new mouth, as many as the length policies give (connect to "
                    "Create Video with the fps and the speech).",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, model, vae, audio_embeds: AudioEmbeds, images, faces: PreparedFaces, fps, speed=EXACT, **settings
    ) -> io.NodeOutput:
        # 1. Check inputs
        frames = Uint8Frames(images)
        num_frames, height, width = images.shape[:3]
        faces.check_fits(num_frames, (height, width), model.resolution)
        check_audio_width(model, audio_embeds.features.shape[-1])
        settings = run_settings(model, **settings)
        fps = as_fps(fps)
        timeline = plan_timeline(num_frames, audio_embeds.duration, fps, settings.long_audio, settings.short_audio)
        audio_embeds.check_covers(timeline)

        # 2. Stream the frames of the timeline through the pipeline into the output batch
        progress = SamplingProgress()
        codec = vae_codec(vae, keep_loaded=[model.patcher], on_decoded=progress.show)
        from ..latentsync.pipeline.lipsync import LipSyncPipeline  # diffusers' scheduler: imported when a node runs

        # whisper is not needed: the features come from LatentSync Audio Encode
        pipeline = LipSyncPipeline(model.unet, None, codec, faces.detector, settings, speed)
        started = time.perf_counter()
        timeline_frames = ((index, frames[index]) for index in timeline.source_indices())
        clock, report = StageClock(), LipSyncReport(fps=fps, resolution=model.resolution)
        synced = pipeline.sync_frames(
            timeline_frames, audio_embeds.features, fps, progress.progress, progress.cancel, clock, report,
            preparer=faces.preparer(), num_frames=timeline.num_output_frames,
        )  # fmt: skip
        output = torch.empty((timeline.num_output_frames, height, width, 3), dtype=torch.float32)
        for index, frame in enumerate(synced):
            output[index] = frame_to_image(frame)
        progress.finish()
        report.stage_seconds = dict(clock.seconds)
        report.wall_seconds = time.perf_counter() - started
        log_report(report)
        return io.NodeOutput(output, ui=show_notices(run_notices(timeline, report.num_generated)))


class LatentSyncVideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentSyncVideoSampler",
            display_name="LatentSync Video Sampler",
            category=CATEGORY,
            description="Lip-syncs a VIDEO to speech while streaming it: frames are decoded, generated, pasted and "
            "encoded as they go, so memory does not grow with the clip's length. The output keeps the source's "
            "size and frame rate, with the speech as its sound (original quality). Use it for long clips.",
            inputs=[
                MODEL.Input("model", tooltip="From LatentSync Model Loader (or LatentSync LoRA)."),
                vae_input(),
                AUDIO_ENCODER.Input("audio_encoder", tooltip="From LatentSync Audio Encoder Loader."),
                FACE_DETECTOR.Input("face_detector", tooltip="From LatentSync Face Detector Loader."),
                io.Video.Input("video", tooltip=VIDEO_TOOLTIP),
                *generation_inputs(),
                setting_input(
                    "face_index", tooltip="-1: the largest face in each frame; k: the k-th largest, followed."
                ),
                *policy_inputs(),
                io.Audio.Input("audio", optional=True, tooltip=AUDIO_TOOLTIP),
                speed_input(),
                landmark_filter_input(),
                speaker_input("Face numbers as LatentSync Face Tracks shows them."),
                SYNCNET.Input("syncnet", optional=True, tooltip="From LatentSync SyncNet Loader, for speaker auto."),
                SPEAKER_MAP.Input(
                    "speaker_map", optional=True, tooltip="From LatentSync Speaker Map: each face with its own voice."
                ),
            ],
            outputs=[
                io.Video.Output(display_name="video", tooltip="The lip-synced video with the speech (to Save Video).")
            ],
        )

    @classmethod
    def execute(
        cls, model, vae, audio_encoder, face_detector, video, audio=None, speed=EXACT, syncnet=None, speaker_map=None,
        **settings,
    ) -> io.NodeOutput:  # fmt: skip
        settings = run_settings(model, face_detector=face_detector.name, **settings)
        return lipsync_video(
            model, vae, audio_encoder, face_detector, video, audio, settings, speed, syncnet, speaker_map
        )


class LatentSyncLipSync(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        unets, unet_default = latentsync_files("unet")
        whispers, whisper_default = latentsync_files("whisper")
        vaes = vae_choices()
        vae_default = next((name for name in vaes if "mse" in name.lower()), vaes[0] if vaes else None)
        return io.Schema(
            node_id="LatentSyncLipSync",
            enable_expand=True,
            display_name="LatentSync LipSync (all-in-one)",
            category=CATEGORY,
            description="Load Video → this → Save Video: loads the models by name (cached by ComfyUI between runs) "
            "and streams the video like LatentSync Video Sampler. Use the separate nodes to reuse models, add a LoRA "
            "or work on IMAGE frames.",
            inputs=[
                io.Video.Input("video", tooltip=VIDEO_TOOLTIP),
                Choice(
                    "unet_name",
                    options=unets,
                    default=unet_default,
                    tooltip="UNet in models/latentsync (latentsync_unet.pt of LatentSync 1.5 or 1.6; the face "
                    "resolution is read from a sidecar .json or the file's path, else 256).",
                ),
                Choice(
                    "whisper_name",
                    options=whispers,
                    default=whisper_default,
                    tooltip="Whisper checkpoint in models/latentsync (whisper/tiny.pt).",
                ),
                Choice(
                    "vae_name",
                    options=vaes,
                    default=vae_default,
                    tooltip="The SD 1.5 VAE in models/vae: vae-ft-mse-840000-ema-pruned.safetensors, or the "
                    "sd-vae-ft-mse diffusers folder (loaded as LatentSync VAE Loader does).",
                ),
                setting_input("face_detector", tooltip="mediapipe (offline default) or insightface (buffalo_l)."),
                *generation_inputs(),
                setting_input(
                    "face_index", tooltip="-1: the largest face in each frame; k: the k-th largest, followed."
                ),
                *policy_inputs(),
                io.Audio.Input("audio", optional=True, tooltip=AUDIO_TOOLTIP),
                speed_input(),
                landmark_filter_input(),
                speaker_input("Face numbers as LatentSync Face Tracks shows them; auto without a SyncNet here: the "
                              "largest face (the Video Sampler takes one)."),
            ],
            outputs=[
                io.Video.Output(display_name="video", tooltip="The lip-synced video with the speech (to Save Video).")
            ],
        )

    @classmethod
    def execute(cls, video, unet_name, whisper_name, vae_name, face_detector, **inputs) -> io.NodeOutput:
        """Run as the graph loaders → LatentSync Video Sampler (a node expansion: ComfyUI caches the loaders'
        models, so a changed setting reloads nothing)."""
        graph = GraphBuilder()
        model = graph.node("LatentSyncModelLoader", unet_name=unet_name, resolution=AUTO, dtype=AUTO, device=AUTO)
        vae = graph.node("LatentSyncVAELoader", vae_name=vae_name, dtype=AUTO, device=AUTO)
        encoder = graph.node("LatentSyncAudioEncoderLoader", whisper_name=whisper_name, device=AUTO)
        detector = graph.node(
            "LatentSyncFaceDetectorLoader", face_detector=face_detector, insightface_model=DEFAULT_INSIGHTFACE_MODEL
        )
        sampler = graph.node(
            "LatentSyncVideoSampler",
            model=model.out(0),
            vae=vae.out(0),
            audio_encoder=encoder.out(0),
            face_detector=detector.out(0),
            video=video,
            **{name: value for name, value in inputs.items() if value is not None},
        )
        return io.NodeOutput(sampler.out(0), expand=graph.finalize())


class LatentSyncSpeed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentSyncSpeed",
            display_name="LatentSync Speed",
            category=CATEGORY,
            description="Speed switches for the samplers (docs/benchmarks.md has what each gains). Exact: cfg_batch, "
            "vae_batch, window_batch, io_overlap, compile (output within float rounding). Approximate: DeepCache "
            "(the whole UNet only every deepcache_interval steps, about 2x faster at 3, the official setting) and "
            "detect_size. Defaults: the exact path.",
            inputs=[setting_input(name, widget=setting_widget(name, SPEED_SPECS, EXACT)) for name in SPEED_SPECS],
            outputs=[SPEED.Output(display_name="speed", tooltip="To the speed input of a LatentSync sampler.")],
        )

    @classmethod
    def execute(cls, **switches) -> io.NodeOutput:
        optional = [name for name, spec in SPEED_SPECS.items() if spec.optional]
        return io.NodeOutput(SpeedSettings(**{**switches, **{name: switches[name] or None for name in optional}}))
