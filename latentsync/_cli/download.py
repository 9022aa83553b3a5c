"""``python -m latentsync download --version 1.5|1.6 --dest DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "download",
        help="fetch the official LatentSync weights and the SD VAE from the Hugging Face Hub",
        description="Fetch latentsync_unet.pt, whisper/tiny.pt, stable_syncnet.pt and sd-vae-ft-mse, checking "
        "sizes and sha256: all into DEST (the layout of `lipsync --models-dir DEST`), or, with --comfyui, the "
        "LatentSync files into COMFYUI/models/latentsync and the VAE into COMFYUI/models/vae.",
    )
    parser.add_argument(
        "--version", choices=("1.5", "1.6"), default="1.6", help="release (1.6 works at 512 px; default 1.6)"
    )
    destination = parser.add_mutually_exclusive_group(required=True)
    destination.add_argument("--dest", metavar="DEST", help="models folder for the command line")
    destination.add_argument("--comfyui", metavar="COMFYUI", help="a ComfyUI folder (the one holding models/)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..download import download_release

    if args.comfyui is not None:
        models = Path(args.comfyui) / "models"
        paths = download_release(args.version, models / "latentsync", vae_dest=models / "vae")
    else:
        paths = download_release(args.version, args.dest)
    for path in paths:
        print(path)
    return 0
