"""LatentSync Sync Score: how well the lips in frames match the speech, by StableSyncNet (LSE-C / LSE-D style)."""

from __future__ import annotations

from comfy import model_management
from comfy.model_patcher import ModelPatcher
from comfy.utils import ProgressBar
from comfy_api.latest import io, ui

from ..latentsync.face.detectors import FaceDetector
from ..latentsync.score import DEFAULT_MAX_OFFSET, score_frames
from ..latentsync.score_plot import plot_offsets
from .common import CATEGORY, FACE_DETECTOR, SYNCNET, check_cancel, fps_input
from .convert import Uint8Frames, as_fps, frames_to_images, model_waveform


class LatentSyncSyncScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentSyncSyncScore",
            display_name="LatentSync Sync Score",
            category=CATEGORY,
            description="Scores lip sync with StableSyncNet: the face windows of the frames are compared with the "
            "speech shifted by -max_offset .. +max_offset frames (at 25 fps). Needs at least 16 + 2 max_offset "
            "frames of speech (1.84 s at the default).",
            inputs=[
                SYNCNET.Input("syncnet", tooltip="From LatentSync SyncNet Loader."),
                FACE_DETECTOR.Input("face_detector", tooltip="From LatentSync Face Detector Loader."),
                io.Image.Input("images", tooltip="The frames to score (e.g. the output of LatentSync Sampler)."),
                io.Audio.Input("audio", tooltip="The speech they should match, starting with the first frame."),
                fps_input("Frame rate of the frames; they are resampled to 25 fps for SyncNet."),
                io.Int.Input(
                    "max_offset",
                    default=DEFAULT_MAX_OFFSET,
                    min=0,
                    max=50,
                    tooltip="Largest audio shift searched, in 25 fps frames (15 = 0.6 s, as the reference).",
                ),
            ],
            outputs=[
                io.Float.Output(
                    display_name="confidence",
                    tooltip="Median minus minimum distance (LSE-C style): higher means clearer sync.",
                ),
                io.Float.Output(
                    display_name="min_distance",
                    tooltip="Smallest mean distance over the offsets (LSE-D style, 1 - cosine): lower is better.",
                ),
                io.Int.Output(
                    display_name="best_offset",
                    tooltip="Offset of that minimum in 25 fps frames; > 0 means the audio lags the video.",
                ),
                io.Image.Output(display_name="plot", tooltip="Mean distance against audio offset."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, syncnet: ModelPatcher, face_detector: FaceDetector, images, audio, fps, max_offset):
        frames = Uint8Frames(images)
        waveform = model_waveform(audio)  # 16 kHz mono, SyncNet's rate too
        bar = ProgressBar(1)

        def progress(done: int, total: int) -> None:
            check_cancel()
            bar.update_absolute(done, max(total, done))

        model_management.load_models_gpu([syncnet])
        score = score_frames(
            frames,
            waveform,
            syncnet.model.module,
            face_detector,
            fps=as_fps(fps),
            max_offset=max_offset,
            progress=progress,
        )
        summary = (
            f"confidence {score.confidence:.3f}, min distance {score.min_distance:.3f}, best offset "
            f"{score.best_offset:+d} frames ({score.best_offset_seconds:+.2f} s; > 0: audio lags)"
        )
        plot = frames_to_images(plot_offsets(score)[None])
        return io.NodeOutput(score.confidence, score.min_distance, score.best_offset, plot, ui=ui.PreviewText(summary))
