"""``python -m latentsync download --version 1.5|1.6 --dest DIR``."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "download",
        help="fetch the official LatentSync weights and the SD VAE from the Hugging Face Hub",
        description="Fetch latentsync_unet.pt, whisper/tiny.pt, stable_syncnet.pt and sd-vae-ft-mse into DEST, "
        "checking sizes and sha256. For ComfyUI use DEST = ComfyUI/models/latentsync.",
    )
    parser.add_argument("--version", choices=("1.5", "1.6"), default="1.6", help="release (1.6 works at 512 px)")
    parser.add_argument("--dest", required=True, help="destination folder")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..download import download_release

    for path in download_release(args.version, args.dest):
        print(path)
    return 0
