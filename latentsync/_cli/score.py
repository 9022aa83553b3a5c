"""``python -m latentsync score``: the lip-sync score of a talking-face video (see `latentsync.score`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..errors import ConfigError
from ..face.detectors import DEFAULT_FACE_DETECTOR, FACE_DETECTORS, create_face_detector
from ..files import check_writable, save_json, save_png
from ..models.syncnet_loading import load_syncnet
from ..models.syncnet_configs import SYNCNET_CONFIGS
from ..pipeline.models import SYNCNET_FILE
from ..score import DEFAULT_BATCH_SIZE, DEFAULT_MAX_OFFSET, score_video
from ..score_plot import plot_offsets
from .options import add_threads_option, apply_threads

DEFAULT_MODELS_DIR = "checkpoints"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score",
        help="lip-sync score of a video: confidence, best audio offset, min distance (LSE-C / LSE-D style)",
        description=(
            "Align the faces of a video (any frame rate, resampled to 25 fps), run StableSyncNet over sliding "
            "windows and audio offsets of -N..N frames, and report the confidence (median - min of the mean "
            "distance over offsets), the best offset (frames; > 0 = audio lags video) and the min distance "
            "(1 - cosine similarity). Scores are on StableSyncNet's scale, not the Wav2Lip SyncNet's LSE numbers."
        ),
    )
    files = parser.add_argument_group("input and output")
    files.add_argument("--video", required=True, type=Path, help="the talking-face video to score")
    files.add_argument("--audio", type=Path, help="score against this audio file (default: the video's own audio)")
    files.add_argument("--plot", type=Path, help="write the distance-against-offset plot to this PNG file")
    files.add_argument("--json", type=Path, help="write the numbers, the curve and per-window distances as JSON")

    models = parser.add_argument_group("models")
    models.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("LATENTSYNC_MODELS_DIR", DEFAULT_MODELS_DIR)),
        help=f"folder with {SYNCNET_FILE} (default: $LATENTSYNC_MODELS_DIR or ./{DEFAULT_MODELS_DIR})",
    )
    models.add_argument("--syncnet", type=Path, help="StableSyncNet checkpoint (overrides the models folder)")
    models.add_argument(
        "--syncnet-config",
        choices=sorted(SYNCNET_CONFIGS),
        help="architecture of the checkpoint (default: read from the file or inferred from its weights)",
    )
    models.add_argument(
        "--device", default="auto", help="torch device: auto (CUDA if available), cpu, cuda, cuda:1 (default auto)"
    )
    add_threads_option(models)

    faces = parser.add_argument_group("faces")
    faces.add_argument(
        "--face-detector",
        "--detector",
        choices=sorted(FACE_DETECTORS),
        default=DEFAULT_FACE_DETECTOR,
        help="face detector (default %(default)s)",
    )
    faces.add_argument(
        "--detector-models", type=Path, help="folder of the detector's model files (needed by insightface)"
    )

    search = parser.add_argument_group("search")
    search.add_argument(
        "--max-offset",
        type=int,
        default=DEFAULT_MAX_OFFSET,
        metavar="N",
        help="search audio offsets of -N..N frames at 25 fps (default %(default)s = 0.6 s)",
    )
    search.add_argument(
        "--stride", type=int, default=1, metavar="FRAMES", help="frames between scored windows (default %(default)s)"
    )
    search.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per SyncNet call (default %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the numbers and errors")
    return parser


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..pipeline.settings import resolve_device

    if args.quiet:
        logging.getLogger("latentsync").setLevel(logging.WARNING)
    apply_threads(args)

    # 1. Output files first: a bad destination should not wait for the scoring work
    for path in (args.plot, args.json):
        if path is not None:
            check_writable(path)

    # 2. Models and face detector
    if args.face_detector == "insightface" and args.detector_models is None:
        raise ConfigError(
            "--face-detector insightface needs --detector-models DIR: InsightFace's buffalo_l folder with "
            "det_10g.onnx and 2d106det.onnx."
        )
    detector_options = {} if args.detector_models is None else {"model_dir": args.detector_models}
    detector = create_face_detector(args.face_detector, **detector_options)
    syncnet_path = args.syncnet or args.models_dir / SYNCNET_FILE
    syncnet = load_syncnet(syncnet_path, config=args.syncnet_config, device=resolve_device(args.device))

    # 3. Score
    with tqdm(desc="scoring", unit="frame", dynamic_ncols=True, disable=args.quiet) as bar, logging_redirect_tqdm():

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        score = score_video(
            args.video,
            syncnet,
            detector,
            args.audio,
            max_offset=args.max_offset,
            stride=args.stride,
            batch_size=args.batch_size,
            progress=progress,
        )

    # 4. Report
    print(f"Confidence (LSE-C style): {score.confidence:.4f}")
    print(f"Min distance (LSE-D style): {score.min_distance:.4f}")
    print(
        f"Best offset: {score.best_offset:+d} frames at 25 fps ({score.best_offset_seconds * 1000:+.0f} ms; "
        "> 0 = audio lags video)"
    )
    if args.plot is not None:
        save_png(plot_offsets(score), args.plot)
    if args.json is not None:
        save_json({"video": str(args.video), "audio": str(args.audio or args.video), **score.to_dict()}, args.json)
    if not args.quiet:
        print(f"{len(score.window_starts)} windows of {score.num_frames} frames; syncnet {syncnet_path}")
        for label, path in (("plot", args.plot), ("json", args.json)):
            if path is not None:
                print(f"wrote {label}: {path}")
    return 0
