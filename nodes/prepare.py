"""Nodes that prepare the sampler's inputs once, so changing a sampler setting re-runs neither: Audio Encode
(speech → Whisper features) and Face Prepare (frames → tracked, aligned faces)."""

from __future__ import annotations

import logging

import numpy as np
from comfy import model_management
from comfy.model_patcher import ModelPatcher
from comfy.utils import ProgressBar
from comfy_api.latest import io

from ..latentsync.face.detectors import FaceDetector
from ..latentsync.pipeline.faces import FacePreparer
from .common import (
    AUDIO_EMBEDS,
    AUDIO_ENCODER,
    CATEGORY,
    FACE_DETECTOR,
    FACES,
    MODEL,
    check_cancel,
    landmark_filter_input,
    setting_input,
)
from .convert import MAX_FPS, MIN_FPS, Uint8Frames, as_fps, frames_to_images, model_waveform
from .data import AudioEmbeds, LatentSyncModel, PreparedFaces, face_index_setting, padded_length

logger = logging.getLogger(__name__)

FPS_TOOLTIP = "Frame rate of the video frames (connect fps from Get Video Components)."


def fps_input(tooltip: str = FPS_TOOLTIP) -> io.Float.Input:
    return io.Float.Input("fps", default=25.0, min=float(MIN_FPS), max=float(MAX_FPS), step=0.01, tooltip=tooltip)


class LatentSyncAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentSyncAudioEncode",
            display_name="LatentSync Audio Encode",
            category=CATEGORY,
            description="Turns speech into the Whisper features that drive the mouth. Any sample rate and channel "
            "count: the audio is resampled to 16 kHz and mixed to mono for the model (the video keeps the original).",
            inputs=[
                AUDIO_ENCODER.Input("audio_encoder", tooltip="From LatentSync Audio Encoder Loader."),
                io.Audio.Input("audio", tooltip="The speech to lip-sync to (e.g. from Load Audio)."),
                fps_input(
                    "Frame rate of the video the speech will drive (connect fps from Get Video Components); "
                    "used with num_frames only."
                ),
                io.Int.Input(
                    "num_frames",
                    default=0,
                    min=0,
                    max=10_000_000,
                    tooltip="Frames of that video. When the video is longer than the speech, silence is appended so "
                    "the features cover all of it (what short_audio='pad' needs). 0: the speech alone.",
                ),
            ],
            outputs=[AUDIO_EMBEDS.Output(display_name="audio_embeds", tooltip="Whisper features of the speech.")],
        )

    @classmethod
    def execute(cls, audio_encoder: ModelPatcher, audio, fps, num_frames) -> io.NodeOutput:
        waveform = model_waveform(audio)
        encoded = padded_length(len(waveform), num_frames, as_fps(fps)) if num_frames else len(waveform)
        model_management.load_models_gpu([audio_encoder])
        features = audio_encoder.model.module.encode(np.pad(waveform, (0, encoded - len(waveform))))
        return io.NodeOutput(AudioEmbeds(features, len(waveform), encoded))


class LatentSyncFacePrepare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentSyncFacePrepare",
            display_name="LatentSync Face Prepare",
            category=CATEGORY,
            description="Finds, tracks and aligns the face in every frame. Runs once per clip: changing sampler "
            "settings reuses its result. Frames without a face are marked and left unchanged by the sampler.",
            inputs=[
                FACE_DETECTOR.Input("face_detector", tooltip="From LatentSync Face Detector Loader."),
                io.Image.Input("images", tooltip="The video frames (e.g. from Get Video Components)."),
                MODEL.Input("model", tooltip="The LatentSync model; only its face resolution (256 or 512) is used."),
                fps_input(
                    "Frame rate of the frames (connect fps from Get Video Components); it times the "
                    "smoothing of the face points."
                ),
                setting_input(
                    "face_index",
                    tooltip="Which face to lip-sync: -1 = the largest face in each frame (the reference's rule); "
                    "0, 1, ... = the k-th largest face when it first appears, then followed as it moves.",
                ),
                landmark_filter_input(),
            ],
            outputs=[
                FACES.Output(
                    display_name="faces",
                    tooltip="Aligned faces, their frame-to-face transforms and which frames have a face.",
                ),
                io.Image.Output(
                    display_name="aligned_faces",
                    tooltip="The aligned face of every frame (black where none), to check the detection.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, face_detector: FaceDetector, images, model: LatentSyncModel, fps, face_index, landmark_filter=True
    ) -> io.NodeOutput:
        frames = Uint8Frames(images)
        num_frames, height, width = images.shape[:3]
        preparer = FacePreparer(
            face_detector, model.resolution, face_index_setting(face_index), as_fps(fps), landmark_filter
        )
        bar = ProgressBar(num_frames)

        def on_frame(count: int) -> None:
            check_cancel()
            bar.update_absolute(count)

        faces = PreparedFaces.collect(
            preparer.prepare(frames), num_frames, (height, width), model.resolution, face_detector, on_frame
        )
        found = int(faces.has_face.sum())
        logger.info("LatentSync Face Prepare: a face in %d of %d frames", found, num_frames)
        if found == 0:
            logger.warning("LatentSync Face Prepare: no face found in any frame; the sampler will change nothing")
        return io.NodeOutput(faces, frames_to_images(faces.faces))
