"""Nodes that prepare the sampler's inputs once, so changing a sampler setting re-runs neither: Audio Encode
(speech → Whisper features) and Face Prepare (frames → tracked, aligned faces)."""

from __future__ import annotations

import logging

import numpy as np
from comfy import model_management
from comfy.model_patcher import ModelPatcher
from comfy.utils import ProgressBar
from comfy_api.latest import io, ui

from ..latentsync.face.detectors import FaceDetector
from ..latentsync.face.tracks import track_table
from ..latentsync.pipeline.faces import FacePreparer
from ..latentsync.pipeline.settings import DEFAULT_SETTINGS
from ..latentsync.speaker import parse_speaker
from .common import (
    AUDIO_EMBEDS,
    AUDIO_ENCODER,
    CATEGORY,
    FACE_DETECTOR,
    FACE_TRACKS,
    FACES,
    MODEL,
    SPEAKER_MAP,
    SYNCNET,
    check_cancel,
    fps_input,
    landmark_filter_input,
    setting_input,
    speaker_input,
)
from .convert import Uint8Frames, as_fps, frames_to_images, model_waveform
from .data import (
    AudioEmbeds,
    FaceTracks,
    LatentSyncModel,
    PreparedFaces,
    face_index_setting,
    padded_length,
    speaker_faces,
)

logger = logging.getLogger(__name__)

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
                    "used with video_frames only."
                ),
                io.Int.Input(
                    "video_frames",
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
    def execute(cls, audio_encoder: ModelPatcher, audio, fps, video_frames) -> io.NodeOutput:
        waveform = model_waveform(audio)
        encoded = padded_length(len(waveform), video_frames, as_fps(fps)) if video_frames else len(waveform)
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
                speaker_input(
                    "largest (default here) keeps the one-pass tracker; auto needs syncnet and audio (the clip's own "
                    "sound), else it is the largest face; one face per frame (all: use the Video Sampler).",
                    default="largest",
                ),
                FACE_TRACKS.Input("tracks", optional=True, tooltip="From LatentSync Face Tracks (the same numbers)."),
                SYNCNET.Input("syncnet", optional=True, tooltip="From LatentSync SyncNet Loader, for speaker auto."),
                io.Audio.Input("audio", optional=True, tooltip="The clip's own sound, for speaker auto."),
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
        cls, face_detector: FaceDetector, images, model: LatentSyncModel, fps, face_index, landmark_filter=True,
        speaker="largest", tracks: FaceTracks | None = None, syncnet=None, audio=None,
    ) -> io.NodeOutput:  # fmt: skip
        frames = Uint8Frames(images)
        num_frames, height, width = images.shape[:3]
        bar = ProgressBar(num_frames)

        def on_frame(count: int) -> None:
            check_cancel()
            bar.update_absolute(count)

        if speaker == "largest" and tracks is None or face_index_setting(face_index) != "largest":
            preparer = FacePreparer(
                face_detector, model.resolution, face_index_setting(face_index), as_fps(fps), landmark_filter
            )
            faces = PreparedFaces.collect(
                preparer.prepare(frames), num_frames, (height, width), model.resolution, face_detector, on_frame
            )
        else:
            if tracks is None:
                tracks = FaceTracks.collect(
                    frames, num_frames, face_detector, DEFAULT_SETTINGS.min_face_size, as_fps(fps), landmark_filter
                )
            if syncnet is not None:
                model_management.load_models_gpu([syncnet])
            faces, reason = speaker_faces(
                frames, tracks, speaker, as_fps(fps), model.resolution, face_detector,
                None if syncnet is None else syncnet.model.module, None if audio is None else model_waveform(audio),
                on_frame,
            )  # fmt: skip
            logger.info("LatentSync Face Prepare: %s", reason)
        found = int(faces.has_face.sum())
        logger.info("LatentSync Face Prepare: a face in %d of %d frames", found, num_frames)
        if found == 0:
            logger.warning("LatentSync Face Prepare: no face found in any frame; the sampler will change nothing")
        return io.NodeOutput(faces, frames_to_images(faces.faces))


class LatentSyncFaceTracks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentSyncFaceTracks",
            display_name="LatentSync Face Tracks",
            category=CATEGORY,
            description="Finds every face of the clip (small ones too) and gives each a number that stays with it, "
            "also after it leaves the frame and comes back. The preview shows the numbers; use them in the speaker "
            "input of Face Prepare or a Speaker Map.",
            inputs=[
                FACE_DETECTOR.Input("face_detector", tooltip="From LatentSync Face Detector Loader."),
                io.Image.Input("images", tooltip="The video frames (e.g. from Get Video Components)."),
                fps_input("Frame rate of the frames (connect fps from Get Video Components)."),
                setting_input("min_face_size"),
                landmark_filter_input(),
            ],
            outputs=[
                io.Image.Output(display_name="preview", tooltip="The frames with numbered boxes on every face."),
                FACE_TRACKS.Output(display_name="tracks", tooltip="Every face with its number, for Face Prepare."),
            ],
        )

    @classmethod
    def execute(cls, face_detector: FaceDetector, images, fps, min_face_size, landmark_filter=True) -> io.NodeOutput:
        frames = Uint8Frames(images)
        bar = ProgressBar(len(frames))

        def on_frame(count: int) -> None:
            check_cancel()
            bar.update_absolute(count)

        tracks = FaceTracks.collect(
            frames, len(frames), face_detector, min_face_size, as_fps(fps), landmark_filter, on_frame
        )
        table = track_table(tracks.tracks)
        logger.info("LatentSync Face Tracks: %d faces\n%s", len(tracks.tracks), table)
        preview = frames_to_images(np.stack(list(tracks.preview(frames))))
        return io.NodeOutput(preview, tracks, ui=ui.PreviewText(table))


class LatentSyncSpeakerMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        def face(number: int, default: str, optional: bool) -> io.Input:
            return io.String.Input(
                f"face_{number}", default=default, optional=optional,
                tooltip="A face number from LatentSync Face Tracks, point:X,Y or box:X0,Y0,X1,Y1 (pixels; @SECONDS "
                "for the time the place refers to).",
            )  # fmt: skip

        def voice(number: int, optional: bool) -> io.Input:
            return io.Audio.Input(f"audio_{number}", optional=optional, tooltip=f"The voice of face_{number}.")

        return io.Schema(
            node_id="LatentSyncSpeakerMap",
            display_name="LatentSync Speaker Map",
            category=CATEGORY,
            description="One voice per face, for LatentSync Video Sampler: each face is re-synced with its own "
            "audio; other faces pass through unchanged. The video's sound stays the sampler's audio (e.g. the mix).",
            inputs=[
                face(1, "0", False), voice(1, False), face(2, "1", True), voice(2, True), face(3, "2", True),
                voice(3, True),
            ],  # fmt: skip
            outputs=[SPEAKER_MAP.Output(display_name="speaker_map", tooltip="For LatentSync Video Sampler.")],
        )

    @classmethod
    def execute(cls, face_1, audio_1, face_2=None, audio_2=None, face_3=None, audio_3=None) -> io.NodeOutput:
        pairs = [(face_1, audio_1), (face_2, audio_2), (face_3, audio_3)]
        entries = [(str(parse_speaker(face)), audio) for face, audio in pairs if face and audio is not None]
        return io.NodeOutput(entries)
