"""LatentSync Create Video: frames + speech + fps → a core VIDEO, encoded now with the library's writer."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..latentsync.media.writer import OUTPUT_CRF, AudioArray, VideoWriter
from .common import CATEGORY, check_cancel, fps_input, video_output
from .convert import as_fps, audio_samples, check_images, frame_to_uint8, scratch_dir


class LatentSyncCreateVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LatentSyncCreateVideo",
            display_name="LatentSync Create Video",
            category=CATEGORY,
            description="Encodes frames and audio into a VIDEO for Save Video: H.264 (yuv420p, BT.709) at the exact "
            "frame rate (29.97 is stored as 30000/1001), with every audio channel at its own rate as AAC, cut or "
            "padded with silence to the video's length to the sample.",
            inputs=[
                io.Image.Input("images", tooltip="The frames (e.g. from LatentSync Sampler)."),
                fps_input("Frame rate of the frames (connect fps from Get Video Components)."),
                io.Int.Input(
                    "crf",
                    default=OUTPUT_CRF,
                    min=0,
                    max=51,
                    tooltip="H.264 quality: lower is better and larger; 18 looks lossless for most clips.",
                ),
                io.Audio.Input("audio", optional=True, tooltip="The sound track (e.g. the speech from Load Audio)."),
            ],
            outputs=[io.Video.Output(display_name="video", tooltip="The encoded video (to Save Video).")],
        )

    @classmethod
    def execute(cls, images, fps, crf, audio=None) -> io.NodeOutput:
        check_images(images)
        height, width = images.shape[1:3]
        sound = None if audio is None else AudioArray(*audio_samples(audio))
        with scratch_dir(folder_paths.get_temp_directory()) as scratch:
            path = scratch / "video.mp4"
            with VideoWriter(path, as_fps(fps), width, height, crf, sound) as writer:
                for image in images:
                    check_cancel()
                    writer.write_frame(frame_to_uint8(image))
            return io.NodeOutput(video_output(path))
