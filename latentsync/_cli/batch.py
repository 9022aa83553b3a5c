"""``python -m latentsync batch JOBS`` or ``batch --videos DIR --audios DIR --output-dir DIR``: lip-sync many clips,
models loaded once per worker, resumable, on several GPUs or a Ray cluster (`latentsync.pipeline.batch`)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..errors import ConfigError
from ..pipeline.batch import RECORD_NAME
from ..pipeline.settings import LipSyncSettings
from .lipsync import add_run_options, sources_from_args, speed_from_args
from .options import apply_threads, settings_from_options

logger = logging.getLogger(__name__)

EXAMPLES = f"""\
A jobs file is CSV with a header line, or JSON lines. Columns: video, audio (optional: the video's own sound),
output, and any setting of `lipsync` by its option name or its name in latentsync.pipeline.settings (steps or
num_inference_steps, guidance, seed, num-frames, face-index, no-face, long-audio, output-fps, ...); an empty cell
keeps the value given here on the command line. Relative paths start at the jobs file's folder.

The video can be a still image (.png, .jpg, .webp, ...): a talking photo from one picture and a speech file, as
long as the speech.

examples:
  jobs.csv:
    video,audio,output,seed
    lesson1.mp4,lesson1_fr.wav,out/lesson1_fr.mp4,
    portrait.jpg,greeting.wav,out/portrait.mp4,7
  python -m latentsync batch jobs.csv --models-dir checkpoints
  python -m latentsync batch --videos clips/ --audios speech/ --output-dir out/ --workers 2
  python -m latentsync batch jobs.csv --ray auto --gpus-per-row 0.5

Every finished row is recorded in {RECORD_NAME} beside the outputs; running the same command again skips the rows
already done with the same inputs and settings and redoes the others. The exit code is 1 when a row failed.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "batch",
        help="lip-sync many videos (or photos) from a jobs file or two folders",
        description="Lip-sync every row of a jobs file, or every video in --videos with the audio file of the same "
        "name in --audios. Models are loaded once per worker; a failing row is reported and the others go on.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rows = parser.add_argument_group("rows")
    rows.add_argument("jobs", nargs="?", help="jobs file: .csv or .jsonl (see below)")
    rows.add_argument("--videos", help="folder of videos and still images (instead of a jobs file)")
    rows.add_argument("--audios", help="folder of audio files, paired with --videos by name: talk.mp4 + talk.wav")
    rows.add_argument("--output-dir", help="where --videos pairs are written, as NAME.mp4")
    rows.add_argument("--record", help=f"run record to resume from (default: {RECORD_NAME} beside the outputs)")

    scale = parser.add_argument_group("workers")
    scale.add_argument(
        "--workers", type=_positive(int), default=None,
        help="worker processes on this machine, each with its own models (default: one per GPU, else 1); "
        "with --ray local, the CPUs of the local cluster",
    )  # fmt: skip
    scale.add_argument(
        "--ray", metavar="auto|local|ADDRESS",
        help="run the rows as tasks on a Ray cluster: 'auto' joins the running one, 'local' starts one here, or an "
        "address such as ray://head:10001 (needs `pip install ray`; every node needs this package and the models)",
    )  # fmt: skip
    scale.add_argument("--cpus-per-row", type=_positive(float), default=1.0, help="CPUs of a Ray task (default 1)")
    scale.add_argument(
        "--gpus-per-row", type=_positive(float, zero=True), default=None,
        help="GPUs of a Ray task; a fraction such as 0.5 puts two rows on one GPU (default: 1 when this machine "
        "has a GPU, else 0)",
    )  # fmt: skip

    add_run_options(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors and the closing report")
    return parser


def _positive(kind: type, zero: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero else 'more than 0'}, got {text}")
        return value

    return parse


def rows_from_args(args: argparse.Namespace):
    """The rows the command line names: a jobs file, or pairs from --videos and --audios."""
    from ..pipeline.batch import pair_folders, read_jobs

    folders = (args.videos, args.audios, args.output_dir)
    if args.jobs is not None:
        if any(folders):
            raise ConfigError("Give either a jobs file or --videos/--audios/--output-dir, not both.")
        return read_jobs(args.jobs)
    if not all(folders):
        raise ConfigError("Give a jobs file (.csv or .jsonl), or all three of --videos, --audios and --output-dir.")
    return pair_folders(args.videos, args.audios, args.output_dir)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..pipeline.batch import BatchOptions, batch_report, run_batch

    if args.quiet:
        logging.getLogger("latentsync").setLevel(logging.WARNING)
    apply_threads(args)
    gpus = torch.cuda.device_count()
    options = BatchOptions(
        sources=sources_from_args(args),
        settings=settings_from_options(args, LipSyncSettings),
        speed=speed_from_args(args),
        workers=args.workers or max(gpus, 1),
        ray_address=args.ray,
        cpus_per_row=args.cpus_per_row,
        gpus_per_row=args.gpus_per_row if args.gpus_per_row is not None else float(gpus > 0),
        record=Path(args.record) if args.record else None,
    )
    rows = rows_from_args(args)
    started = time.perf_counter()
    with logging_redirect_tqdm():
        results = run_batch(rows, options, show_progress=not args.quiet)
    print(batch_report(rows, results))
    print(f"{len(rows)} rows in {time.perf_counter() - started:.1f} s")
    return 1 if any(result.status == "failed" for result in results) else 0
