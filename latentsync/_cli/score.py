"""``python -m latentsync score``: the lip-sync score of a talking-face video (see `latentsync.score`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from ..errors import MediaError
from ..face.detectors import DEFAULT_FACE_DETECTOR, FACE_DETECTORS, create_face_detector
from ..models.syncnet import load_syncnet
from ..models.syncnet_configs import SYNCNET_CONFIGS
from ..score import DEFAULT_BATCH_SIZE, DEFAULT_MAX_OFFSET, plot_offsets, save_png, score_video

# where the official checkpoint sits in the reference's layout
DEFAULT_SYNCNET_PATH = "checkpoints/stable_syncnet.pt"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score",
        help="lip-sync score of a video: confidence, best audio offset, min distance (LSE-C / LSE-D style)",
        description=(
            "Align the faces of a video (any frame rate, resampled to 25 fps), run StableSyncNet over sliding "
            "windows and audio offsets of +-MAX_OFFSET frames, and report the confidence (median - min of the mean "
            "distance over offsets), the best offset (frames; > 0 = audio lags video) and the min distance "
            "(1 - cosine similarity). Scores are on StableSyncNet's scale, not the Wav2Lip SyncNet's LSE numbers."
        ),
    )
    parser.add_argument("--video", required=True, type=Path, help="the talking-face video to score")
    parser.add_argument("--audio", type=Path, help="score against this audio file instead of the video's own track")
    parser.add_argument(
        "--syncnet",
        type=Path,
        default=Path(DEFAULT_SYNCNET_PATH),
        help=f"StableSyncNet checkpoint (default {DEFAULT_SYNCNET_PATH})",
    )
    parser.add_argument(
        "--syncnet-config",
        choices=sorted(SYNCNET_CONFIGS),
        help="architecture of the checkpoint (default: read from the file or inferred from its weights)",
    )
    parser.add_argument(
        "--detector",
        choices=sorted(FACE_DETECTORS),
        default=DEFAULT_FACE_DETECTOR,
        help="face detector (default %(default)s)",
    )
    parser.add_argument(
        "--detector-model-dir", type=Path, help="folder of the face detector's model files, if it needs one"
    )
    parser.add_argument(
        "--max-offset",
        type=int,
        default=DEFAULT_MAX_OFFSET,
        help="search audio offsets of -N..N frames at 25 fps (default %(default)s = 0.6 s)",
    )
    parser.add_argument("--stride", type=int, default=1, help="frames between scored windows (default %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per SyncNet call (default %(default)s)"
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--plot", type=Path, help="write the distance-against-offset plot to this PNG file")
    parser.add_argument("--json", type=Path, help="write the numbers, the curve and per-window distances as JSON")
    return parser


def _write_json(data: dict, path: Path) -> None:
    if not path.parent.is_dir():
        raise MediaError(f"Output folder {path.parent} does not exist; create it first.")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(temporary, path)
    except OSError as error:
        raise MediaError(f"Cannot write {path} ({error}).") from error
    finally:
        temporary.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    detector_options = {} if args.detector_model_dir is None else {"model_dir": args.detector_model_dir}
    detector = create_face_detector(args.detector, **detector_options)
    syncnet = load_syncnet(args.syncnet, config=args.syncnet_config, device=device)
    score = score_video(
        args.video,
        syncnet,
        detector,
        args.audio,
        max_offset=args.max_offset,
        stride=args.stride,
        batch_size=args.batch_size,
    )
    print(f"Video: {args.video}")
    print(f"Confidence (LSE-C style): {score.confidence:.4f}")
    print(f"Min distance (LSE-D style): {score.min_distance:.4f}")
    print(
        f"Best offset: {score.best_offset:+d} frames at 25 fps ({score.best_offset_seconds * 1000:+.0f} ms; "
        "> 0 = audio lags video)"
    )
    print(f"Windows: {len(score.window_starts)} of {score.num_frames} frames")
    if args.plot is not None:
        save_png(plot_offsets(score), args.plot)
        print(f"Plot: {args.plot}")
    if args.json is not None:
        _write_json({"video": str(args.video), "audio": str(args.audio or args.video), **score.to_dict()}, args.json)
        print(f"JSON: {args.json}")
    return 0
