"""``python -m latentsync lipsync --video V [--audio A] --output O.mp4``: lip-sync a video to speech.

The settings options are generated from `latentsync.pipeline.settings.LipSyncSettings` (`options`), the table the
ComfyUI nodes read too.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..errors import ConfigError
from ..models.lora import parse_lora_argument
from ..pipeline.loading import ModelSources
from ..pipeline.models import SYNCNET_FILE
from ..pipeline.settings import LipSyncSettings
from ..pipeline.speed import OFFICIAL, SPEED_SPECS, SpeedSettings, parse_switches
from .options import add_setting_options, add_threads_option, apply_threads, option_groups, settings_from_options

logger = logging.getLogger(__name__)

# Where the models are looked for when neither --models-dir nor LATENTSYNC_MODELS_DIR says: the official layout.
DEFAULT_MODELS_DIR = "checkpoints"
SPEED_GROUP = "speed (docs/benchmarks.md has what each switch gains and changes)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lipsync",
        help="lip-sync a video to speech",
        description="Regenerate the mouth of the face in VIDEO to match the speech in AUDIO (default: the video's own "
        "sound). The output keeps the video's size and frame rate, with the original audio.",
    )
    files = parser.add_argument_group("input and output")
    files.add_argument("--video", required=True, help="video with a face, or a still image (a talking photo)")
    files.add_argument("--audio", help="speech to sync to (any audio or video file; default: the video's own audio)")
    files.add_argument("--output", required=True, help="video to write (.mp4, .mov or .mkv)")
    groups = add_run_options(parser)
    groups["faces"].add_argument(
        "--speaker-map", metavar="FILE",
        help="one voice per face: a JSON or CSV file of entries face (ID, point:X,Y or box:X0,Y0,X1,Y1), audio "
        "(file; empty: --audio), start, end (seconds); faces and times it does not name pass through unchanged "
        "(`python -m latentsync faces VIDEO` shows the ids)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """The options of a run besides its files: models, speed and every setting of `LipSyncSettings` (``batch``
    takes them too, as the settings of every row); returns the option groups by title."""
    groups = option_groups(parser, "models", SPEED_GROUP, "generation", "faces", "length and frame rate")
    models = groups["models"]
    models.add_argument(
        "--models-dir",
        default=os.environ.get("LATENTSYNC_MODELS_DIR", DEFAULT_MODELS_DIR),
        help="folder with latentsync_unet.pt, whisper/tiny.pt and sd-vae-ft-mse/ (default: $LATENTSYNC_MODELS_DIR "
        f"or ./{DEFAULT_MODELS_DIR}); `python -m latentsync download --dest DIR` fills it",
    )
    models.add_argument("--unet", help="UNet checkpoint (overrides the models folder)")
    models.add_argument("--whisper", help="Whisper checkpoint, e.g. whisper/tiny.pt (overrides the models folder)")
    models.add_argument("--vae", help="SD VAE: diffusers folder or one .safetensors file (overrides the models folder)")
    models.add_argument(
        "--syncnet",
        help=f"StableSyncNet that --speaker auto finds the speaker with (default: {SYNCNET_FILE} in the models folder "
        "when it is there; without one, auto is the largest face)",
    )
    models.add_argument(
        "--lora",
        action="append",
        default=[],
        type=parse_lora_argument,
        metavar="FILE[:STRENGTH]",
        help="merge a LoRA of `python -m train lora` into the UNet (its folder, the adapter_model.safetensors in it, "
        "or a LoRA .safetensors of earlier versions), with a strength (default 1); repeat for several",
    )

    speed = groups[SPEED_GROUP]
    speed.add_argument(
        "--deepcache",
        action="store_true",
        help="reuse the UNet's deep features between denoising steps (DeepCache with the official inference.sh "
        "setting: interval 3, branch 0); about 2x faster, slightly different results (default off)",
    )
    speed.add_argument(
        "--speed",
        type=_speed_switches,
        default={},
        metavar="NAME=VALUE,...",
        help=f"speed switches of latentsync.pipeline.speed.SpeedSettings: {', '.join(SPEED_SPECS)}; e.g. "
        "window_batch=4,vae_batch=8 (exact) or deepcache_interval=3,compile=true (default: none, the exact path)",
    )
    add_threads_option(speed)

    add_setting_options(groups, LipSyncSettings)
    groups["faces"].add_argument(
        "--detector-models",
        metavar="DIR",
        help="folder of the detector's model files (insightface: the buffalo_l folder with det_10g.onnx and "
        "2d106det.onnx; default none: mediapipe's models come packaged with the library)",
    )
    return groups


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


def sources_from_args(args: argparse.Namespace) -> ModelSources:
    """Where the command line says the models are."""
    return ModelSources(
        args.models_dir, args.unet, args.whisper, args.vae, args.syncnet, args.detector_models, tuple(args.lora)
    )


class _ProgressBar:
    """A tqdm bar over the run's work, frames through every stage (`latentsync.pipeline.progress`): the running
    stage as its label, the total from the first event (a new one after the pass over every face), and an ETA
    from the average rate since the start (work arrives in windows, so a recent-rate ETA would swing)."""

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(
            desc="lip sync: reading", dynamic_ncols=True, smoothing=0,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
        )  # fmt: skip
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if total and total != self.bar.total:  # the first event, or the lip sync after the pass over every face
            self.bar.reset(total=total)
        if stage != self.stage:
            self.stage = stage
            self.bar.set_description_str(f"lip sync: {stage}", refresh=False)
        self.bar.update(done - self.bar.n)  # refreshes the display (label included) at most every 0.1 s

    def close(self) -> None:
        self.bar.close()


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..pipeline.inputs import check_inputs
    from ..pipeline.loading import load_pipeline

    if args.quiet:
        logging.getLogger("latentsync").setLevel(logging.WARNING)
    apply_threads(args)
    settings = settings_from_options(args, LipSyncSettings)
    speed = speed_from_args(args)

    # 1. Inputs first: a bad file should not wait for the models to load
    check_inputs(args.video, args.audio, args.output)

    # 2. Face detector, then the models
    pipeline = load_pipeline(sources_from_args(args), settings, speed)

    # 3. Run
    bar = None if args.quiet else _ProgressBar()
    try:
        with logging_redirect_tqdm():
            report = pipeline.run(args.video, args.audio, args.output, progress=bar, speaker_map=args.speaker_map)
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
