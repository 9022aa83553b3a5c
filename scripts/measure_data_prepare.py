"""Throughput of ``python -m train data prepare`` in one process, with N worker processes and on a local Ray cluster.

    python scripts/measure_data_prepare.py --work /tmp/prep-bench [--clips 8] [--seconds 4] [--workers 2]

Makes ``--clips`` source videos of ``--seconds`` each from the shared demo clips (half size, 540 x 960, at
different offsets), then runs the whole pipeline on them once per mode into a fresh folder and prints a markdown
table: wall time, source videos per minute, hours of source video per hour of wall time, and the speed-up over
one process, then each run's per-step table (wall seconds per step). Needs ``../shared/fixtures/assets`` (or LATENTSYNC_FIXTURES).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("LATENTSYNC_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")) / "assets"


def make_sources(raw: Path, num_clips: int, seconds: float) -> float:
    """Write the source videos; returns their total length in seconds."""
    from latentsync.media import AudioArray, VideoReader, VideoWriter, load_audio

    frames_per_clip = round(seconds * 25)
    needed = -(-num_clips // 2) * frames_per_clip
    demos = {}
    for name in ("demo1", "demo2"):
        path = ASSETS / f"{name}_video.mp4"
        frames = []
        with VideoReader(path) as reader:
            for _, frame in reader.frames_at_fps(25):
                frames.append(cv2.resize(frame, (540, 960), interpolation=cv2.INTER_AREA))
                if len(frames) == needed:
                    break
        demos[name] = frames, load_audio(path, 16000)
    raw.mkdir(parents=True, exist_ok=True)
    for index in range(num_clips):
        frames, audio = demos["demo1" if index % 2 == 0 else "demo2"]
        first = (index // 2 * frames_per_clip) % max(len(frames) - frames_per_clip, 1)
        with VideoWriter(raw / f"clip{index:02d}.mp4", 25, 540, 960,
                         audio=AudioArray(audio[first * 640 : (first + frames_per_clip) * 640], 16000)) as writer:  # fmt: skip
            for frame in frames[first : first + frames_per_clip]:
                writer.write_frame(frame)
    return num_clips * frames_per_clip / 25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (sources and outputs)")
    parser.add_argument("--clips", type=int, default=8, help="source videos")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each source video")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel modes")
    args = parser.parse_args()

    raw = args.work / "raw"
    source_seconds = make_sources(raw, args.clips, args.seconds)
    modes = {"1 process": ["--workers", "1"], f"{args.workers} workers": ["--workers", str(args.workers)],
             f"Ray local ({args.workers} CPUs)": ["--workers", str(args.workers), "--ray", "local"]}  # fmt: skip
    rows, tables, baseline = [], [], None
    load_before = os.getloadavg()[0]
    for label, extra in modes.items():
        output = args.work / label.split()[0].lower()
        command = [sys.executable, "-m", "train", "data", "prepare", "--input", str(raw), "--output", str(output),
                   "--min-seconds", "1", "--max-seconds", "2", *extra]  # fmt: skip
        start = time.perf_counter()
        run = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        baseline = baseline or wall
        kept = len((output / "fileslist.txt").read_text().split() + (output / "val_fileslist.txt").read_text().split())
        rows.append((label, wall, kept))
        step_table = run.stdout.split("\n\n")[0]
        tables.append(f"{label}:\n{step_table}")
    print(f"{args.clips} sources x {args.seconds} s ({source_seconds:.0f} s of 540x960 video); load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")  # fmt: skip
    print("| mode | wall (s) | training clips | sources / min | hours of video / hour | speed-up |")
    print("|---|---|---|---|---|---|")
    for label, wall, kept in rows:
        print(f"| {label} | {wall:.0f} | {kept} | {args.clips / wall * 60:.1f} | {source_seconds / wall:.2f} | "
              f"{baseline / wall:.2f}x |")  # fmt: skip
    print("\nPer step (the closing table of each run):\n\n" + "\n\n".join(tables))


if __name__ == "__main__":
    main()
