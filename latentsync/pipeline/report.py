"""What a lip-sync run did (`LipSyncReport`): counts, and seconds per stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ..conventions import MODEL_FPS
from ..media.timeline import Timeline
from .models import DEFAULT_RESOLUTION


@dataclass
class LipSyncReport:
    """What a run did.

    Attributes:
        output_path: the file written.
        num_frames: output frames written, at ``fps``.
        num_model_frames: 25 fps frames of the output timeline; ``num_generated`` of them had a face and were
            generated, in ``num_windows`` windows.
        frames_without_face: output frames passed through unchanged (no face in them or in their model frame).
        timeline: how the output's frames map to the video's and the audio (`plan_timeline`), once planned.
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
    timeline: Timeline | None = None
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
