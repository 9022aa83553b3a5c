"""The state machine of `LipSyncPipeline.sync_frames`: output frames in, windows of faces out to the generator,
output frames with their generated mouth back, in order and in bounded memory.

Timelines. The model runs at 25 fps on the output timeline (``F`` fps): model frame ``j`` (time ``j / 25``) sees
the face of output frame ``floor(j F / 25)`` and the audio at ``j / 25``; output frame ``i`` shows the mouth of
model frame ``floor(i 25 / F)``, blended into its own aligned face, so the upper face and the background always
belong to the frame being written. At ``F = 25`` both maps are the identity and the procedure is the reference's.

Windows. Consecutive model frames with a face form a window of up to ``num_frames`` frames; a frame without a
face closes the current window early. All frames share one initial noise, drawn once per video (as the
reference does), so where a window is cut does not change the noise a frame starts from.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..conventions import MODEL_FPS
from ..errors import NoFaceError
from .faces import PreparedFace
from .progress import WorkCounter
from .report import LipSyncReport
from .settings import LipSyncSettings
from .threads import one_torch_thread
from .timing import StageClock

if TYPE_CHECKING:
    from .lipsync import LipSyncPipeline

# Output frames that may wait for their mouth, in windows (per window batch); more forces a partial window (very
# high frame rates).
MAX_PENDING_WINDOWS = 4


def model_frames_of(output_index: int, fps: Fraction) -> range:
    """Model frames (25 fps) that take their face from output frame ``output_index`` at ``fps``: every ``j`` with
    ``floor(j fps / 25) == output_index`` (one at 25 fps; none or one above; one or two below)."""
    return range(math.ceil(output_index * MODEL_FPS / fps), math.ceil((output_index + 1) * MODEL_FPS / fps))


def model_frame_shown(output_index: int, fps: Fraction) -> int:
    """The model frame whose mouth output frame ``output_index`` at ``fps`` shows: ``floor(i 25 / fps)``."""
    return math.floor(output_index * MODEL_FPS / fps)


def no_face_error(index: int, fps: Fraction) -> NoFaceError:
    """The error of ``no_face="error"`` at output frame ``index``."""
    return NoFaceError(
        f"No face in output frame {index} ({float(index / fps):.2f} s). Use a clip with a visible face in every "
        "frame, or set no_face to passthrough to keep such frames unchanged."
    )


@dataclass
class _PendingFrame:
    index: int  # output frame index
    frame: np.ndarray
    face: PreparedFace | None


class SyncStream:
    """The state of `LipSyncPipeline.sync_frames`: output frames waiting for their mouth, the window being
    collected, and the decoded faces of the last window."""

    def __init__(
        self,
        pipeline: LipSyncPipeline,
        features: torch.Tensor,
        fps: Fraction,
        counter: WorkCounter,
        clock: StageClock,
        report: LipSyncReport,
        no_face: str | None = None,
    ):
        self.pipeline = pipeline
        self.settings: LipSyncSettings = pipeline.settings
        self.features = features
        self.fps = fps
        self.counter = counter
        self.clock = clock
        self.report = report
        self.no_face = no_face or self.settings.no_face
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
        if face is None and self.no_face == "error":
            raise no_face_error(index, self.fps)
        self.pending.append(_PendingFrame(index, frame, face))
        self.counter.advance(1, "detect")
        if face is None:
            self.counter.skip_model_frames(len(model_frames_of(index, self.fps)))
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
        decoded = self.pipeline.denoise_windows(windows, self.noise, self.generator, self.counter, self.clock)
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
            self.counter.advance(1, "paste")
            yield output
        oldest_shown = model_frame_shown(self.pending[0].index if self.pending else self.num_input, self.fps)
        for model_frame in [key for key in self.decoded if key < oldest_shown]:
            del self.decoded[model_frame]
