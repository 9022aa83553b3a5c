"""The one table of lip-sync settings: defaults, bounds and help text, and `SettingSpec`, the one validation.

`LipSyncSettings` is what `LipSyncPipeline` runs with. The command line generates its options from the specs
(``latentsync._cli.options``) and the ComfyUI nodes build their inputs from `SETTING_SPECS` (``minimum`` /
``maximum`` / ``choices`` / ``help`` of every field), so a default or a bound is written once, here::

    spec = SETTING_SPECS["guidance_scale"]      # SettingSpec(help=..., minimum=1.0, maximum=5.0, step=0.1)
    settings = LipSyncSettings(guidance_scale=2.0, long_audio="loop")
    settings.replace(seed=7)

Values are checked when a settings object is made; a bad one (NaN included) raises `ConfigError` naming the field
and its bounds. `latentsync.pipeline.speed.SpeedSettings` and the training config (``train.config``) are checked by
the same `SettingSpec.check`. A new setting is one field here: the command line and `--help` pick it up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from ..errors import ConfigError
from ..face.align import SUPPORTED_RESOLUTIONS
from ..face.detectors import DEFAULT_FACE_DETECTOR, FACE_DETECTORS
from ..media.timeline import LONG_AUDIO_POLICIES, SHORT_AUDIO_POLICIES, parse_fps
from ..speaker import SPEAKER_HELP, parse_speaker

NO_FACE_POLICIES = ("passthrough", "error")
LARGEST_FACE = "largest"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO = "auto"
# Largest seed a torch.Generator takes (ComfyUI's seed widgets use the same range).
MAX_SEED = 2**64 - 1


_TRUE_WORDS, _FALSE_WORDS = ("true", "1", "on", "yes"), ("false", "0", "off", "no")


@dataclass(frozen=True)
class SettingSpec:
    """Kind, bounds and help of one setting, and how the command line spells it.

    ``minimum`` / ``maximum`` are inclusive; ``choices`` lists the allowed values of a text or numbered setting (a
    setting may have both: ``face_index`` is ``"largest"`` or an integer >= 0). `check` is the one validation of
    every settings table (`LipSyncSettings`, `latentsync.pipeline.speed.SpeedSettings`, the training config) and
    `parse` the one reader of command-line text; ``latentsync._cli.options`` makes an option of each spec.
    """

    help: str
    kind: type = str  # int, float, bool, str or Fraction (a frame rate)
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple | None = None
    optional: bool = False  # ``None`` is allowed (it means "automatic")
    none_word: str = AUTO  # how the command line writes ``None``
    flag: str | None = None  # command-line option (default: ``--`` + the field name with dashes)
    group: str = "settings"  # command-line help group

    def check(self, name: str, value) -> None:
        """Raise `ConfigError` (naming ``name`` and the allowed values) unless ``value`` fits this spec. NaN and
        infinities are refused wherever a number is expected."""
        if value is None:
            if not self.optional:
                raise ConfigError(f"{name} must be set")
            return
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
            return
        if isinstance(value, str):
            if (self.choices is not None and value in self.choices) or self.kind is str and self.choices is None:
                return
            raise ConfigError(f"{name} must be {self.describe_values()}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number ({self.describe_values()}), got {value}")
        if self.kind is int and value != int(value):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if self.minimum is None:
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"{name} must be one of {self.choices}, got {value!r}")
            return
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            raise ConfigError(f"{name} must be {self.describe_values()}, got {value}")

    def parse(self, name: str, text: str):
        """The value command-line ``text`` stands for, checked (``none_word`` is None).

        Raises:
            ConfigError: text that is not a value of this setting.
        """
        text = text.strip()
        if self.optional and text == self.none_word:
            return None
        if self.choices is not None and text in map(str, self.choices):
            return next(choice for choice in self.choices if str(choice) == text)
        if self.kind is bool:
            if text.lower() not in (*_TRUE_WORDS, *_FALSE_WORDS):
                raise ConfigError(f"{name} must be true or false, got {text!r}")
            return text.lower() in _TRUE_WORDS
        if self.kind is Fraction:
            value = parse_fps(text, name)
        elif self.kind in (int, float):
            try:
                value = self.kind(text)
            except ValueError:
                raise ConfigError(f"{name} must be {self.describe_values()}, got {text!r}") from None
        else:
            value = text
        self.check(name, value)
        return value

    def describe_values(self) -> str:
        """The allowed values in words: ``"between 1 and 100"``, ``"'largest' or a whole number >= 0"``."""
        words = [repr(choice) if isinstance(choice, str) else str(choice) for choice in self.choices or ()]
        if self.optional:
            words.insert(0, repr(self.none_word))
        number = "a whole number" if self.kind is int else "a number"
        if self.kind is Fraction:
            pass
        elif self.minimum is not None and self.maximum is not None:
            words.append(f"{number} between {_bound(self.minimum)} and {_bound(self.maximum)}")
        elif self.minimum is not None:
            words.append(f"{number} >= {_bound(self.minimum)}")
        if self.kind is bool:
            words.append("true or false")
        elif self.kind is Fraction:
            bounds = f" ({self.minimum:g} to {self.maximum:g})" if None not in (self.minimum, self.maximum) else ""
            words.append("a frame rate such as 25 or 30000/1001" + bounds)
        elif self.kind is str and self.choices is None:
            words.append("a name")
        if len(words) <= 2:
            return " or ".join(words)
        return "one of " + ", ".join(words[:-1]) + " or " + words[-1]

    def option(self, name: str) -> str:
        """The command-line option of field ``name``: ``flag``, or ``--`` + ``name`` with dashes."""
        return self.flag or "--" + name.replace("_", "-")


def _bound(value) -> str:
    return "2^64-1" if value == MAX_SEED else f"{value:g}"


def setting_field(default, help: str, kind: type | None = None, **spec):
    """A dataclass field whose metadata holds its `SettingSpec` (``kind`` defaults to the default's type)."""
    kind = kind or type(default)
    return field(default=default, metadata={"spec": SettingSpec(help, kind, **spec)})


def setting_specs(settings_class) -> dict[str, SettingSpec]:
    """``{field name: SettingSpec}`` of a settings dataclass, in field order."""
    return {item.name: item.metadata["spec"] for item in dataclasses.fields(settings_class)}


def check_settings(settings) -> None:
    """Check every field of a settings dataclass instance against its spec (for ``__post_init__``)."""
    for name, spec in setting_specs(type(settings)).items():
        spec.check(name, getattr(settings, name))


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
        face_index: ``"largest"`` (the reference's rule) or the k-th largest face, then followed by overlap (one
            pass, with ``speaker="largest"``).
        speaker: whose lips are re-synced (`latentsync.speaker.parse_speaker`): ``"auto"`` (active-speaker
            detection with the SyncNet; the largest face when there is one face or no sound of the video's own),
            ``"largest"``, ``"all"``, a track id, ``"point:X,Y[@T]"`` or ``"box:X0,Y0,X1,Y1[@T]"``.
        min_face_size: smallest face kept, in pixels tall (the reference's filter keeps 80 px and up).
        no_face: ``"passthrough"`` keeps frames without a face unchanged, ``"error"`` stops at the first one.
        landmark_filter: smooth the detected landmarks with a One-Euro filter (`latentsync.face.tracking`) before
            alignment. On by default: it steadies the face box between frames, so the pasted mouth jitters less.
            The official pipeline has no such filter (only the aligner's affine smoothing, which stays on either
            way); ``False`` aligns the detector's raw points, as it does.
        long_audio: when the audio outlasts the video: ``"pingpong"``, ``"loop"`` or ``"hold"`` the video.
        short_audio: when the video outlasts the audio: ``"trim"`` the video, or ``"pad"`` the audio with silence.
        output_fps: frame rate of the written video; ``None`` keeps the source's (average) rate.
        device: ``"auto"`` (CUDA when available), or a torch device string such as ``"cpu"``, ``"cuda:1"``.
        dtype: ``"auto"`` (float16 on CUDA GPUs of compute capability 8 or more, as the reference; else float32),
            ``"float32"``, ``"float16"`` or ``"bfloat16"``.
    """

    resolution: int | None = setting_field(
        None, "face resolution: 256 for LatentSync 1.5, 512 for 1.6 (auto: from a sidecar latentsync_unet.json or "
        "the checkpoint's path, else 256)",
        int, choices=SUPPORTED_RESOLUTIONS, optional=True, group="generation",
    )  # fmt: skip
    num_inference_steps: int = setting_field(
        20, "DDIM denoising steps", minimum=1, maximum=100, step=1, flag="--steps", group="generation"
    )
    guidance_scale: float = setting_field(
        1.5, "audio guidance scale (1.0 = off, twice as fast)", minimum=1.0, maximum=5.0, step=0.1,
        flag="--guidance", group="generation",
    )  # fmt: skip
    seed: int = setting_field(
        1247, "seed of the initial noise and the VAE samples", minimum=0, maximum=MAX_SEED, step=1, group="generation"
    )
    num_frames: int = setting_field(
        16, "frames denoised together (the motion modules see this many)", minimum=5, maximum=24, step=1,
        group="generation",
    )  # fmt: skip
    device: str = setting_field(AUTO, "torch device: auto (CUDA if available), cpu, cuda, cuda:1, ...", group="generation")
    dtype: str = setting_field(
        AUTO, "model precision (auto: float16 on recent GPUs, else float32)", choices=(AUTO, *DTYPES),
        group="generation",
    )  # fmt: skip
    face_detector: str = setting_field(
        DEFAULT_FACE_DETECTOR, "face detector", choices=tuple(FACE_DETECTORS), group="faces"
    )
    face_index: str | int = setting_field(
        LARGEST_FACE, "'largest', or k to follow the k-th largest face (0 = largest) from its first appearance",
        int, choices=(LARGEST_FACE,), minimum=0, step=1, group="faces",
    )  # fmt: skip
    speaker: str = setting_field(
        AUTO, f"whose lips are re-synced: {SPEAKER_HELP} (auto: who speaks in the video's own sound; the largest "
        "face when there is one face, no sound of its own or no SyncNet)",
        group="faces",
    )  # fmt: skip
    min_face_size: int = setting_field(
        32, "smallest face kept, pixels tall (the reference keeps 80 and up)", minimum=8, maximum=1024, step=1,
        flag="--min-face", group="faces",
    )  # fmt: skip
    no_face: str = setting_field(
        "passthrough", "frames without a face: keep them unchanged, or stop with an error", choices=NO_FACE_POLICIES,
        group="faces",
    )  # fmt: skip
    landmark_filter: bool = setting_field(
        True, "smooth the detected landmarks over time with a One-Euro filter (steadier faces); off = the official "
        "pipeline's raw landmarks, for runs exactly like it",
        group="faces",
    )  # fmt: skip
    long_audio: str = setting_field(
        "pingpong", "audio longer than the video: play the video back and forth, loop it, or hold its last frame",
        choices=LONG_AUDIO_POLICIES, group="length and frame rate",
    )  # fmt: skip
    short_audio: str = setting_field(
        "trim", "audio shorter than the video: cut the video, or keep it and pad the audio with silence",
        choices=SHORT_AUDIO_POLICIES, group="length and frame rate",
    )  # fmt: skip
    output_fps: Fraction | None = setting_field(
        None, "frame rate of the output, e.g. 25 or 30000/1001 (source: the source's; the model always runs at 25)",
        Fraction, minimum=1, maximum=240, optional=True, none_word="source", group="length and frame rate",
    )  # fmt: skip

    def __post_init__(self):
        if self.output_fps is not None and not isinstance(self.output_fps, Fraction):
            object.__setattr__(self, "output_fps", parse_fps(self.output_fps, "output_fps"))
        check_settings(self)
        object.__setattr__(self, "speaker", str(parse_speaker(self.speaker)))

    def replace(self, **changes) -> LipSyncSettings:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


SETTING_SPECS: dict[str, SettingSpec] = setting_specs(LipSyncSettings)
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
        raise ConfigError(f"device {name!r} was asked for but this torch build sees no CUDA GPU; choose the cpu device")
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
