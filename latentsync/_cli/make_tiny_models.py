"""``python -m latentsync make-tiny-models DIR``: tiny random-weight models in the official formats."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "make-tiny-models",
        help="write tiny RANDOM-weight models (UNet, Whisper, VAE, SyncNet) for tests and demos",
        description="Write tiny random-weight models in the official file formats. Their output is noise.",
    )
    parser.add_argument("dest", help="folder to write into (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..tiny import RANDOM_WEIGHTS_NOTICE, make_tiny_models

    paths = make_tiny_models(args.dest, seed=args.seed)
    for role, path in paths.items():
        print(f"{role:8s} {path}")
    print(f"\n*** {RANDOM_WEIGHTS_NOTICE} ***")
    return 0
