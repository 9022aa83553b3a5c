"""Peak memory and time per stage of lip-sync runs of different lengths, each in a fresh Python process.

The clips are the synthetic talking face of the tests (``tests/helpers/pipeline.py``), square, 25 fps, a face in
every frame, with as much speech as video; the models are the tiny random-weight ones (``latentsync.tiny``), on the
CPU. Every run is a new process, so ``ru_maxrss`` (peak resident memory) is that run's alone::

    python scripts/measure_memory.py                         # 200 and 2000 frames of 256 x 256, tiny UNet
    python scripts/measure_memory.py --frames 20 100 --stub --json

``--stub`` replaces the UNet by one that predicts zero noise and the VAE by 8x pooling (`tests/helpers/pipeline.py`):
everything else (decoding, faces, windows, paste, encoding and their buffers) runs for real, in a fraction of the
time. The last line printed is the ratio of the longest run's peak to the shortest's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

FPS = 25


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[200, 2000], help="clip lengths to measure")
    parser.add_argument("--size", type=int, default=256, help="frame width and height in pixels")
    parser.add_argument("--stub", action="store_true", help="zero-noise UNet and pooling VAE instead of the tiny ones")
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale (1.0: no guidance)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per denoising window")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of the runs (default: torch's)")
    parser.add_argument("--models", type=Path, help="tiny models folder (default: made in a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")
    parser.add_argument("--child", nargs=3, metavar=("VIDEO", "AUDIO", "MODELS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    """One measured run; prints its result as one JSON line."""
    import torch
    from helpers.pipeline import PoolingCodec, SyntheticFaceDetector, ZeroNoiseUNet

    from latentsync.pipeline.lipsync import LipSyncPipeline
    from latentsync.pipeline.models import load_models
    from latentsync.pipeline.settings import LipSyncSettings

    video, audio, models_dir = args.child
    if args.threads:
        torch.set_num_threads(args.threads)
    models = load_models(models_dir, resolution=256)
    unet, vae = (ZeroNoiseUNet(), PoolingCodec()) if args.stub else (models.unet, models.vae)
    settings = LipSyncSettings(
        resolution=256, num_inference_steps=args.steps, guidance_scale=args.guidance, num_frames=args.num_frames
    )
    pipeline = LipSyncPipeline(unet, models.whisper, vae, SyntheticFaceDetector(), settings)
    with tempfile.TemporaryDirectory() as folder:
        report = pipeline.run(video, audio, Path(folder) / "out.mp4")
    result = {
        "frames": report.num_frames,
        "generated": report.num_generated,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": report.wall_seconds,
        "stage_ms_per_frame": {
            stage: 1000 * seconds / max(report.num_frames, 1) for stage, seconds in report.stage_seconds.items()
        },
    }
    print(json.dumps(result))


def measure(args: argparse.Namespace, folder: Path, num_frames: int, models_dir: Path) -> dict:
    from helpers.pipeline import speech, write_clip, write_wav

    video = write_clip(folder / f"clip_{num_frames}.mp4", num_frames, size=(args.size, args.size))
    audio = write_wav(folder / f"speech_{num_frames}.wav", speech(num_frames / FPS))
    command = [sys.executable, __file__, "--child", str(video), str(audio), str(models_dir)]
    command += ["--steps", str(args.steps), "--guidance", str(args.guidance), "--num-frames", str(args.num_frames)]
    command += ["--stub"] if args.stub else []
    command += ["--threads", str(args.threads)] if args.threads else []
    started = time.perf_counter()
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(f"the {num_frames}-frame run failed:\n{result.stderr}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["process_seconds"] = time.perf_counter() - started
    return measured


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        models_dir = args.models
        if models_dir is None:
            from latentsync.tiny import make_tiny_models

            models_dir = folder / "models"
            make_tiny_models(models_dir, seed=0)
        runs = [measure(args, folder, num_frames, models_dir) for num_frames in sorted(args.frames)]

    if args.json:
        for run in runs:
            print(json.dumps(run))
    else:
        models = "stub UNet and VAE" if args.stub else "tiny models"
        threads = f", {args.threads} torch thread(s)" if args.threads else ""
        print(f"{args.size}x{args.size}, {models}, {args.steps} step(s), guidance {args.guidance}{threads}")
        print(f"{'frames':>7}{'peak RSS MiB':>14}{'seconds':>9}{'ms/frame':>10}")
        for run in runs:
            print(
                f"{run['frames']:7d}{run['peak_rss_mib']:14.1f}{run['seconds']:9.1f}{1000 * run['seconds'] / run['frames']:10.1f}"
            )
        print("ms per output frame by stage (longest run):")
        for stage, ms in runs[-1]["stage_ms_per_frame"].items():
            print(f"  {stage:<11}{ms:8.1f}")
    ratio = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    print(f"peak RSS ratio {runs[-1]['frames']} / {runs[0]['frames']} frames: {ratio:.3f}")


if __name__ == "__main__":
    main()
