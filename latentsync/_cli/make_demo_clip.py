"""``python -m latentsync make-demo-clip OUT.mp4``: a talking-head demo input from the packaged portrait."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "make-demo-clip",
        help="write a demo input video (the packaged public-domain portrait, moving slightly, with a voice track)",
        description="Write a short video of the packaged portrait (NASA's public-domain photograph of Eileen "
        "Collins) turning and nodding slightly, with a generated voice-like audio track: an input for `lipsync` "
        "that needs nothing but the install.",
    )
    parser.add_argument("output", help="video file to write, e.g. demo/face.mp4 (its folder is created)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length in seconds (default 4)")
    parser.add_argument(
        "--wav", help="also write the voice alone to this WAV file (default: none; the video has it as its sound)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from ..demo import write_demo_clip

    print(write_demo_clip(args.output, args.seconds, args.wav))
    return 0
