"""``python -m train data ...``: the data pipeline's command line.

    python -m train data prepare --input RAW --output DATA [--resolution 256] [--syncnet stable_syncnet.pt] ...
    python -m train data make-tiny tiny
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("train")


def add_parser(subparsers) -> None:
    from .pipeline import OPTIONAL_STEPS, STEP_NAMES

    parser = subparsers.add_parser("data", help="prepare training data (or write the tiny test assets)")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    prepare = commands.add_parser(
        "prepare",
        help="raw videos -> aligned 25 fps / 16 kHz clips, file lists and meta.jsonl",
        description=(
            "Each step writes its own folder under --output and skips what it has already done, so an interrupted "
            f"run resumes. Steps in order: {', '.join(STEP_NAMES)} (optional: {', '.join(OPTIONAL_STEPS)})."
        ),
    )
    prepare.add_argument("--input", required=True, help="folder of raw videos (searched recursively)")
    prepare.add_argument("--output", required=True, help="folder for every step's output")
    prepare.add_argument("--resolution", type=int, default=256, choices=(256, 512), help="aligned face size")
    prepare.add_argument(
        "--max-side", type=int, default=0, help="shrink frames whose longer side exceeds this (pixels; 0 = keep)"
    )
    prepare.add_argument("--min-seconds", type=float, default=5.0, help="shortest segment kept (seconds)")
    prepare.add_argument("--max-seconds", type=float, default=10.0, help="longest segment (longer scenes are cut)")
    prepare.add_argument("--scene-threshold", type=float, default=27.0, help="PySceneDetect ContentDetector threshold")
    prepare.add_argument("--face-detector", default=None, help="face detector of the aligner (default: the library's)")
    prepare.add_argument("--syncnet", default=None, help="StableSyncNet checkpoint: enables the sync-confidence filter")
    prepare.add_argument("--min-sync-confidence", type=float, default=3.0, help="sync-confidence threshold")
    prepare.add_argument("--whisper", default=None, help="Whisper checkpoint: also cache each clip's features")
    prepare.add_argument(
        "--steps", default=None,
        help=f"comma-separated steps to run (default: all required ones; optional: {', '.join(OPTIONAL_STEPS)})",
    )  # fmt: skip
    prepare.add_argument(
        "--quality-filter", default=None,
        help="visual-quality filter as module:function taking an aligned clip path and returning a score",
    )  # fmt: skip
    prepare.add_argument("--min-quality", type=float, default=0.0, help="lowest quality score kept")
    prepare.add_argument("--min-motion", type=float, default=0.3, help="motion filter: lowest mean flow (pixels)")
    prepare.add_argument("--max-motion", type=float, default=8.0, help="motion filter: highest mean flow (pixels)")
    prepare.add_argument("--max-text-fraction", type=float, default=0.02, help="text filter: largest text area share")
    prepare.add_argument("--val-fraction", type=float, default=0.05, help="share of clips listed for validation")
    prepare.set_defaults(run=_run_prepare)

    tiny = commands.add_parser("make-tiny", help="write the tiny random models and synthetic clips the tiny configs use")
    tiny.add_argument("dest", help="folder to write (the tiny configs expect ./tiny)")
    tiny.set_defaults(run=_run_make_tiny)


def _run_prepare(args: argparse.Namespace) -> int:
    from .pipeline import PipelineOptions, run_pipeline

    options = PipelineOptions.from_args(args)
    summary = run_pipeline(args.input, args.output, options)
    print(summary.table())
    return 0


def _run_make_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_tiny_assets

    for role, path in make_tiny_assets(args.dest).items():
        print(f"{role:16s} {path}")
    return 0
