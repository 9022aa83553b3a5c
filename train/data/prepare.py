"""``python -m train data ...``: the data pipeline's command line.

    python -m train data prepare --input RAW --output DATA [--workers N | --ray auto] [--syncnet stable_syncnet.pt] ...
    python -m train data make-tiny tiny
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("train")


def add_parser(subparsers) -> None:
    from .pipeline import (
        DEFAULT_MAX_SYNC_OFFSET, DEFAULT_MIN_SYNC_CONFIDENCE, OPTIONAL_STEPS, STEP_NAMES, PipelineOptions,
        default_workers,
    )  # fmt: skip

    defaults = PipelineOptions()
    parser = subparsers.add_parser("data", help="prepare training data (or write the tiny test assets)")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    prepare = commands.add_parser(
        "prepare",
        help="raw videos -> aligned 25 fps / 16 kHz clips, file lists and meta.jsonl",
        description=(
            f"Steps in order: {', '.join(STEP_NAMES)} (optional: {', '.join(OPTIONAL_STEPS)}). Clips run in parallel "
            "(local worker processes, or a Ray cluster with --ray); each step records what it has done with which "
            "options under OUTPUT/intermediate, so an interrupted run resumes and a changed option redoes only its "
            "step and the ones after it. The training clips end up in OUTPUT/clips."
        ),
    )
    prepare.add_argument("--input", required=True, help="folder of raw videos (searched recursively)")
    prepare.add_argument("--output", required=True, help="folder for the clips, the lists and the intermediate steps")
    run = prepare.add_argument_group("running")
    run.add_argument(
        "--workers", type=int, default=default_workers(),
        help=f"local worker processes, or Ray CPUs with --ray local (default: the cores, {default_workers()})",
    )  # fmt: skip
    run.add_argument(
        "--ray", default=None, metavar="auto|local|ADDRESS",
        help="run the clips on a Ray cluster: auto (the running one), local (start one with --workers CPUs) or "
        "ray://HOST:PORT; needs `pip install \".[cluster]\"`",
    )  # fmt: skip
    run.add_argument(
        "--gpus-per-clip", type=float, default=0.0,
        help="with --ray: share of a GPU each face / align / sync task asks for (e.g. 0.25; 0 = CPU only). "
        "Local workers use the GPUs present without it",
    )  # fmt: skip
    run.add_argument(
        "--keep-intermediate", action="store_true", help="keep OUTPUT/intermediate (a re-run then resumes)"
    )
    run.add_argument(
        "--steps", default=None,
        help=f"comma-separated steps to run (default: all but {', '.join(OPTIONAL_STEPS)}; sync needs --syncnet)",
    )  # fmt: skip
    clips = prepare.add_argument_group("clips")
    clips.add_argument(
        "--resolution", type=int, default=defaults.resolution, choices=(256, 512), help="aligned face size"
    )
    clips.add_argument(
        "--max-side", type=int, default=defaults.max_side,
        help="store frames whose longer side exceeds this shrunk to it (pixels; 0 = keep); faces are still judged "
        "by their size in the source",
    )  # fmt: skip
    clips.add_argument("--scene-threshold", type=float, default=defaults.scene_threshold,
                       help="PySceneDetect ContentDetector threshold")  # fmt: skip
    clips.add_argument(
        "--face-detector", default=None,
        help="face detector: mediapipe (the default, CPU) or insightface (with --face-model-dir; on the GPU when "
        "onnxruntime has CUDA)",
    )  # fmt: skip
    clips.add_argument("--face-model-dir", default=None, help="folder of the face detector's model files")
    clips.add_argument(
        "--max-face-gap", type=int, default=defaults.max_face_gap,
        help="frames without a face that are bridged; a longer miss splits the segment",
    )  # fmt: skip
    clips.add_argument("--min-seconds", type=float, default=defaults.min_seconds,
                       help="shortest segment; only scenes / face runs shorter than this are dropped")  # fmt: skip
    clips.add_argument("--max-seconds", type=float, default=defaults.max_seconds,
                       help="longest segment; longer runs are cut into equal pieces")  # fmt: skip
    filters = prepare.add_argument_group("filters")
    filters.add_argument("--syncnet", default=None, help="StableSyncNet checkpoint: enables the sync filter")
    filters.add_argument(
        "--min-sync-confidence", type=float, default=DEFAULT_MIN_SYNC_CONFIDENCE,
        help=f"lowest StableSyncNet confidence kept, on its 0-1 scale (default {DEFAULT_MIN_SYNC_CONFIDENCE}; "
        "0 = keep any confidence); not the 3 of syncnet_v2's LSE-C scale",
    )  # fmt: skip
    filters.add_argument(
        "--max-sync-offset", type=int, default=DEFAULT_MAX_SYNC_OFFSET,
        help=f"largest |audio-video offset| kept, in 25 fps frames (default {DEFAULT_MAX_SYNC_OFFSET}); kept clips "
        "get their audio shifted by it",
    )  # fmt: skip
    filters.add_argument(
        "--min-face-size", type=float, default=defaults.min_face_size,
        help="smallest face: side, in stored pixels, of the square the aligned face is cut from",
    )  # fmt: skip
    filters.add_argument("--min-sharpness", type=float, default=defaults.min_sharpness,
                         help="lowest variance of the Laplacian of the aligned face")  # fmt: skip
    filters.add_argument("--min-brightness", type=float, default=defaults.min_brightness,
                         help="lowest mean luma of the aligned face (0-255)")  # fmt: skip
    filters.add_argument("--max-brightness", type=float, default=defaults.max_brightness,
                         help="highest mean luma of the aligned face (0-255)")  # fmt: skip
    filters.add_argument("--min-motion", type=float, default=defaults.min_motion,
                         help="motion filter: lowest mean flow (pixels)")  # fmt: skip
    filters.add_argument("--max-motion", type=float, default=defaults.max_motion,
                         help="motion filter: highest mean flow (pixels)")  # fmt: skip
    filters.add_argument(
        "--max-text-fraction", type=float, default=defaults.max_text_fraction,
        help="text filter: largest share of the aligned frame covered by text (EasyAnimate's 1 %%)",
    )  # fmt: skip
    output = prepare.add_argument_group("output")
    output.add_argument("--whisper", default=None, help="Whisper checkpoint: also cache each clip's features")
    output.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                        help="share of clips listed for validation")  # fmt: skip
    prepare.set_defaults(run=_run_prepare)

    tiny = commands.add_parser("make-tiny", help="write the tiny random models and synthetic clips the tiny configs use")
    tiny.add_argument("dest", help="folder to write (the tiny configs expect ./tiny)")
    tiny.set_defaults(run=_run_make_tiny)


def _run_prepare(args: argparse.Namespace) -> int:
    from latentsync.errors import LatentSyncError

    from .pipeline import PipelineOptions, run_pipeline

    summary = run_pipeline(args.input, args.output, PipelineOptions.from_args(args))
    print(summary.table())
    if not summary.clips:
        raise LatentSyncError("No training clip was kept; the table above says where they were dropped.")
    return 0


def _run_make_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_tiny_assets

    for role, path in make_tiny_assets(args.dest).items():
        print(f"{role:16s} {path}")
    return 0
