"""Command line: ``python -m latentsync <command> ...``.

Each command lives in its own module exposing ``add_parser(subparsers)`` and ``run(args) -> int``. `main` owns the
exit codes (`exit_with_status`): 0 success, 1 a `LatentSyncError` or a missing dependency (printed as one clear
line, no traceback unless ``--debug``), 130 on Ctrl-C and 143 on SIGTERM (a ``kill``, ``timeout``, ``docker stop``
or a job scheduler), both at any moment, start-up included. An interrupted run removes what it was writing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import exit_with_status

# command modules, in the order `--help` lists them
_COMMANDS = ("lipsync", "batch", "faces", "score", "bench", "make_tiny_models", "make_demo_clip", "download")

logger = logging.getLogger("latentsync")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m latentsync",
        description="LatentSync lip sync: inference (one clip or a batch), sync score, tiny test models, downloads.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        command = module.add_parser(subparsers)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv

    def run() -> int | None:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
        )
        return args.run(args)

    exit_with_status(run, debug="--debug" in argv)
