"""``python -m latentsync faces VIDEO``: every face of a video with its track id, as a table and a contact sheet."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..face.detectors import DEFAULT_FACE_DETECTOR, FACE_DETECTORS, FaceFilter, create_face_detector
from ..face.search import FaceSearch
from ..face.tracks import track_table, track_video
from ..files import save_json, save_png

DEFAULT_MIN_FACE = 32
DEFAULT_TILE_SIZE = 640
DEFAULT_SCAN_INTERVAL = 10


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "faces",
        help="find and track every face of a video: track table and a contact sheet with numbered boxes",
        description=(
            "Detect every face (small ones too: tiles on wide shots), give each a stable id through the clip, print "
            "the track table (id, first / last frame, frames present, mean face height, mean centre) and write a "
            "contact sheet PNG of evenly spaced frames with numbered boxes. The ids are the ones --speaker ID and "
            "--speaker-map of lipsync use."
        ),
    )
    parser.add_argument("video", type=Path, help="the video to look at")
    parser.add_argument("--sheet", type=Path, help="contact sheet PNG (default: VIDEO_NAME_faces.png here)")
    parser.add_argument("--sheet-frames", type=int, default=8, help="frames on the sheet (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the track table as JSON")
    add_face_search_arguments(parser)
    return parser


def add_face_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The detector and small-face options shared by the commands that track faces."""
    group = parser.add_argument_group("faces")
    group.add_argument("--face-detector", choices=sorted(FACE_DETECTORS), default=DEFAULT_FACE_DETECTOR)
    group.add_argument("--detector-models", type=Path, help="folder of the detector's model files (insightface)")
    group.add_argument(
        "--min-face", type=int, default=DEFAULT_MIN_FACE, metavar="PX",
        help="smallest face box kept, in pixels tall (default %(default)s; the reference's filter is 80)",
    )  # fmt: skip
    group.add_argument(
        "--tile-size", type=int, default=DEFAULT_TILE_SIZE, metavar="PX",
        help="side of the tiles searched for small faces in frames larger than this (default %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--scan-interval", type=int, default=DEFAULT_SCAN_INTERVAL, metavar="FRAMES",
        help="frames between tile scans (0: no tiles; default %(default)s)",
    )  # fmt: skip


def face_search(args: argparse.Namespace) -> FaceSearch:
    """The `FaceSearch` the face options ask for."""
    if args.min_face < 8:
        raise ConfigError(f"--min-face must be at least 8 pixels, got {args.min_face}")
    if args.face_detector == "insightface" and args.detector_models is None:
        raise ConfigError("--face-detector insightface needs --detector-models DIR (InsightFace's buffalo_l folder).")
    options = {} if args.detector_models is None else {"model_dir": args.detector_models}
    detector = create_face_detector(args.face_detector, face_filter=FaceFilter.for_min_height(args.min_face), **options)
    return FaceSearch(detector, tile_size=args.tile_size)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    search = face_search(args)
    with tqdm(desc="faces", unit="frame", dynamic_ncols=True) as bar, logging_redirect_tqdm():

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        video = track_video(
            args.video, search, sheet_frames=args.sheet_frames, progress=progress, scan_interval=args.scan_interval
        )
    print(f"{args.video}: {video.width}x{video.height}, {video.num_frames} frames at {video.fps} fps, "
          f"{len(video.tracks)} face tracks")  # fmt: skip
    print(track_table(video.tracks))
    if video.sheet is not None:
        sheet = args.sheet or Path(f"{args.video.stem}_faces.png")
        save_png(video.sheet, sheet)
        print(f"wrote contact sheet: {sheet}")
    if args.json is not None:
        save_json({"video": str(args.video), "fps": str(video.fps), "tracks": [t.row() for t in video.tracks]},
                    args.json)  # fmt: skip
    return 0
