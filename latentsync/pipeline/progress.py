"""Progress of a lip-sync run in frames through every stage, and the cancel check between them.

The work the user waits for is counted in units of one frame through one stage, known from the start: every output
frame is detected (1 unit) and pasted into place (1 unit); every model frame (25 fps) is VAE-encoded (1), denoised
(1 per DDIM step) and VAE-decoded (1). A frame without a face skips its model frames' units at once. Denoising
is most of the time and most of the units (20 of 24 per model frame at the default 20 steps), so units done over
time elapsed gives an honest rate and ETA, and the bar moves between frames and between steps, not in jumps
of a whole window::

    counter = WorkCounter(progress, cancel, num_output_frames=250, fps=Fraction(25), num_steps=20)
    counter.start("denoise")             # progress("denoise", done, total): the stage that runs now
    counter.advance(16)                  # 16 frames went through one step; asks cancel() too
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

from ..conventions import MODEL_FPS
from ..errors import Cancelled

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``stage`` is the stage running now (``"audio"``, ``"detect"``,
``"vae_encode"``, ``"denoise"``, ``"vae_decode"``, ``"paste"``); ``done`` and ``total`` count the units of the
whole run (`WorkCounter`), ``total`` is fixed from the first call (0 when the number of frames is not known).
A run that first tracks every face (a ``speaker`` other than ``largest``, or a speaker map) reports that pass before:
stage ``"faces"``, ``done`` of ``total`` the video's frames; the lip sync's own total follows it."""
CancelCallback = Callable[[], bool]
"""``cancel()`` returns True to stop; it is asked after every unit of work: between frames in every stage and
after every denoising step."""

# units per model frame besides the denoising steps: VAE encode and VAE decode
_VAE_UNITS = 2


def num_model_frames(num_output_frames: int, fps: Fraction) -> int:
    """25 fps model frames behind ``num_output_frames`` output frames at ``fps``."""
    return math.ceil(num_output_frames * MODEL_FPS / Fraction(fps))


class WorkCounter:
    """Counts the units of one run (see the module docstring), reports them to ``progress`` and asks ``cancel``.

    Args:
        progress: the run's progress callback, or None.
        cancel: the run's cancel callback, or None.
        num_output_frames: output frames of the run, or None when unknown (``total`` is then 0).
        fps: output frame rate.
        num_steps: DDIM steps per window.
    """

    def __init__(
        self,
        progress: ProgressCallback | None,
        cancel: CancelCallback | None,
        num_output_frames: int | None,
        fps: Fraction,
        num_steps: int,
    ):
        self.progress = progress
        self.cancel = cancel
        self.units_per_model_frame = _VAE_UNITS + num_steps
        self.total = 0
        if num_output_frames is not None:
            model_units = num_model_frames(num_output_frames, fps) * self.units_per_model_frame
            self.total = 2 * num_output_frames + model_units
        self.done = 0
        self.stage = "detect"

    @classmethod
    def frames(cls, progress: ProgressCallback | None, cancel: CancelCallback | None, num_frames: int) -> "WorkCounter":
        """A counter of ``num_frames`` frames through one stage (named by `start`), one unit each: the pass that
        tracks every face before the lip sync."""
        counter = cls(progress, cancel, None, MODEL_FPS, 0)
        counter.total = num_frames
        return counter

    def start(self, stage: str) -> None:
        """Report that ``stage`` runs now."""
        self.stage = stage
        if self.progress is not None:
            self.progress(stage, self.done, self.total)

    def advance(self, units: int, stage: str | None = None) -> None:
        """Count ``units`` done (in ``stage``, default the current one), report them, and stop if ``cancel()``.

        Raises:
            Cancelled: ``cancel()`` returned True.
        """
        self.stage = stage or self.stage
        self.done += units
        if self.progress is not None:
            self.progress(self.stage, self.done, self.total)
        if self.cancel is not None and self.cancel():
            raise Cancelled("lip sync was cancelled")

    def skip_model_frames(self, count: int) -> None:
        """``count`` model frames will not be generated (no face): their units are done at once."""
        self.advance(count * self.units_per_model_frame)
