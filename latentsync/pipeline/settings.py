"""The one table of lip-sync settings: defaults, bounds and help text.

`LipSyncSettings` is what `LipSyncPipeline` runs with. The command line and the ComfyUI nodes build their options
from `SETTING_SPECS` (``minimum`` / ``maximum`` / ``choices`` / ``help`` of every field), so a default or a bound is
written once, here::

    spec = SETTING_SPECS["guidance_scale"]      # SettingSpec(help=..., minimum=1.0, maximum=5.0, step=0.1)
    settings = LipSyncSettings(guidance_scale=2.0, long_audio="loop")
    settings.replace(seed=7)

Values are checked when a settings object is made; a bad one raises `ConfigError` naming the field and its bounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from ..errors import ConfigError
from ..face.align import SUPPORTED_RESOLUTIONS
from ..face.detectors import DEFAULT_FACE_DETECTOR, FACE_DETECTORS
from ..media.timeline import LONG_AUDIO_POLICIES, SHORT_AUDIO_POLICIES

# The LatentSync models were trained on 25 fps clips; the pipeline resamples every video to this rate by timestamp.
MODEL_FPS = Fraction(25)
NO_FACE_POLICIES = ("passthrough", "error")
LARGEST_FACE = "largest"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO = "auto"
# Largest seed a torch.Generator takes (ComfyUI's seed widgets use the same range).
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class SettingSpec:
    """Bounds and help of one setting. ``minimum`` / ``maximum`` are inclusive; ``choices`` lists the allowed values
    of a text setting (a setting may have both: ``face_index`` is ``"largest"`` or an integer >= 0)."""

    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple | None = None
    optional: bool = False  # ``None`` is allowed (it means "automatic")


def _setting(default, help: str, **bounds):
    return field(default=default, metadata={"spec": SettingSpec(help, **bounds)})


@dataclass(frozen=True)
class LipSyncSettings:
    """Everything a lip-sync run can be told, with the reference's values as defaults.

    Attributes:
        resolution: side of the aligned face the model works on, 256 (LatentSync 1.5) or 512 (1.6); ``None`` lets
            `latentsync.pipeline.models.infer_resolution` decide from the checkpoint.
        num_inference_steps: DDIM steps.
        guidance_scale: classifier-free audio guidance; 1.0 switches guidance off (half the UNet work).
        seed: seed of the CPU generator behind the initial noise and the VAE posterior samples.
        num_frames: model frames denoised together (the config's ``num_frames``); at most the motion modules'
            position table length, 24.
        face_detector: name of a detector in `latentsync.face.detectors.FACE_DETECTORS`.
        face_index: ``"largest"`` (the reference's rule) or the k-th largest face, then followed by overlap.
        no_face: ``"passthrough"`` keeps frames without a face unchanged, ``"error"`` stops at the first one.
        long_audio: when the audio outlasts the video: ``"pingpong"``, ``"loop"`` or ``"hold"`` the video.
        short_audio: when the video outlasts the audio: ``"trim"`` the video, or ``"pad"`` the audio with silence.
        output_fps: frame rate of the written video; ``None`` keeps the source's (average) rate.
        device: ``"auto"`` (CUDA when available), or a torch device string such as ``"cpu"``, ``"cuda:1"``.
        dtype: ``"auto"`` (float16 on CUDA GPUs of compute capability 8 or more, as the reference; else float32),
            ``"float32"``, ``"float16"`` or ``"bfloat16"``.
    """

    resolution: int | None = _setting(
        None, "face resolution: 256 for LatentSync 1.5, 512 for 1.6 (auto: from the checkpoint)",
        choices=SUPPORTED_RESOLUTIONS, optional=True,
    )  # fmt: skip
    num_inference_steps: int = _setting(20, "DDIM denoising steps", minimum=1, maximum=100, step=1)
    guidance_scale: float = _setting(
        1.5, "audio guidance scale (1.0 = off, twice as fast)", minimum=1.0, maximum=5.0, step=0.1
    )
    seed: int = _setting(1247, "seed of the initial noise and the VAE samples", minimum=0, maximum=MAX_SEED, step=1)
    num_frames: int = _setting(
        16, "frames denoised together (the motion modules see this many)", minimum=5, maximum=24, step=1
    )
    face_detector: str = _setting(DEFAULT_FACE_DETECTOR, "face detector", choices=tuple(FACE_DETECTORS))
    face_index: str | int = _setting(
        LARGEST_FACE, "'largest', or k to follow the k-th largest face (0 = largest) from its first appearance",
        choices=(LARGEST_FACE,), minimum=0, step=1,
    )  # fmt: skip
    no_face: str = _setting(
        "passthrough", "frames without a face: keep them unchanged, or stop with an error", choices=NO_FACE_POLICIES
    )
    long_audio: str = _setting(
        "pingpong", "audio longer than the video: play the video back and forth, loop it, or hold its last frame",
        choices=LONG_AUDIO_POLICIES,
    )  # fmt: skip
    short_audio: str = _setting(
        "trim", "audio shorter than the video: cut the video, or keep it and pad the audio with silence",
        choices=SHORT_AUDIO_POLICIES,
    )  # fmt: skip
    output_fps: Fraction | None = _setting(
        None, "frame rate of the output (default: the source's)", minimum=1, maximum=240, optional=True
    )
    device: str = _setting(AUTO, "torch device: auto (CUDA if available), cpu, cuda, cuda:1, ...")
    dtype: str = _setting(AUTO, "model precision (auto: float16 on recent GPUs, else float32)", choices=(AUTO, *DTYPES))

    def __post_init__(self):
        if self.output_fps is not None and not isinstance(self.output_fps, Fraction):
            object.__setattr__(self, "output_fps", _as_fps(self.output_fps))
        for item in dataclasses.fields(self):
            _check(item.name, getattr(self, item.name), item.metadata["spec"])

    def replace(self, **changes) -> LipSyncSettings:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def _as_fps(value) -> Fraction:
    """``30``, ``29.97``, ``"30000/1001"`` or a `Fraction` as an exact frame rate."""
    try:
        return Fraction(value).limit_denominator(1001) if isinstance(value, float) else Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise ConfigError(f"output_fps must be a number such as 25 or 30000/1001, got {value!r}") from error


def _check(name: str, value, spec: SettingSpec) -> None:
    if value is None:
        if not spec.optional:
            raise ConfigError(f"{name} must be set")
        return
    if isinstance(value, str):
        if spec.choices is not None and value in spec.choices:
            return
        if spec.choices is None and spec.minimum is None:  # free text (device)
            return
        raise ConfigError(f"{name} must be one of {spec.choices}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if spec.minimum is None:
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{name} must be one of {spec.choices}, got {value!r}")
        return
    if spec.step == 1 and value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < spec.minimum or (spec.maximum is not None and value > spec.maximum):
        upper = "" if spec.maximum is None else f" and {spec.maximum}"
        raise ConfigError(f"{name} must be between {spec.minimum}{upper}, got {value}")


SETTING_SPECS: dict[str, SettingSpec] = {
    item.name: item.metadata["spec"] for item in dataclasses.fields(LipSyncSettings)
}
DEFAULT_SETTINGS = LipSyncSettings()


def resolve_device(name: str = AUTO) -> torch.device:
    """The torch device for a ``device`` setting; ``"auto"`` is CUDA when available, else the CPU.

    Raises:
        ConfigError: an unknown device name, or a CUDA device on a machine without one.
    """
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but this torch build sees no CUDA GPU; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The model dtype for a ``dtype`` setting on ``device``.

    ``"auto"`` follows the reference's inference script: float16 on CUDA GPUs of compute capability 8 or more,
    float32 everywhere else (the CPU included, where half precision is slow).
    """
    if name != AUTO:
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.float16
    return torch.float32
