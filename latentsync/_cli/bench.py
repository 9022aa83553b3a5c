"""``python -m latentsync bench``: time per stage, frames per second and peak memory; ``--compare`` two settings.

Examples::

    python -m latentsync bench --size tiny --frames 8 --steps 4                 # sampler on tiny random weights
    python -m latentsync bench --size tiny --compare deepcache_interval=3 --threads 1 --repeats 3
    python -m latentsync bench --size full --device cuda --dtype fp16 --resolution 512 --compare deepcache_interval=3
    python -m latentsync bench --e2e --frames 32 --steps 2                      # whole pipeline on a generated clip
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from ..errors import ConfigError
from .options import add_threads_option, apply_threads

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..bench import BENCH_SIZES

    parser = subparsers.add_parser(
        "bench",
        help="measure speed and memory per stage; compare speed switches",
        description="Time VAE encode, UNet (DDIM + CFG) and VAE decode on random weights (or real checkpoints), or "
        "the whole pipeline with --e2e; print ms per frame per stage, frames/s, peak RAM and VRAM. With --compare, "
        "run a second setting on the same inputs and print the speed ratio and the largest output difference.",
    )
    models = parser.add_argument_group("models")
    models.add_argument(
        "--size", choices=tuple(BENCH_SIZES), default="tiny",
        help="random weights: tiny (test models), mid (official architecture, a fifth of the channels), full "
        "(official architecture) (default tiny)",
    )  # fmt: skip
    models.add_argument("--models-dir", help="real models in the official layout instead of random weights")
    models.add_argument("--unet", help="real UNet checkpoint (with --models-dir or --vae/--whisper)")
    models.add_argument("--vae", help="real SD VAE folder or file")
    models.add_argument("--whisper", help="real Whisper checkpoint (--e2e)")
    models.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    models.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16 (default fp32)")
    add_threads_option(models)  # 1 makes CPU time a steady measure

    work = parser.add_argument_group("work")
    work.add_argument("--resolution", type=int, default=256, help="face side in pixels (default 256)")
    work.add_argument("--frames", type=int, default=16, help="frames per window, or clip frames with --e2e (16)")
    work.add_argument("--windows", type=int, default=1, help="windows of --frames frames (sampler; default 1)")
    work.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    work.add_argument("--guidance", type=float, default=1.5, help="CFG scale; 1.0 = no guidance (default 1.5)")
    work.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")

    switches = parser.add_argument_group("speed switches (NAME=VALUE,...; see latentsync.pipeline.speed)")
    switches.add_argument("--speed", default="", help="switches of the (base) run, e.g. deepcache_interval=3")
    switches.add_argument(
        "--compare", help="switches of a second run compared with the base, e.g. 'deepcache_interval=3' or 'dtype=bf16'"
    )
    switches.add_argument("--repeats", type=int, default=1, help="runs per side; the fastest is kept (default 1)")

    e2e = parser.add_argument_group("end to end")
    e2e.add_argument("--e2e", action="store_true", help="benchmark LipSyncPipeline.run on a clip")
    e2e.add_argument("--video", help="clip to use (default: a generated 640x360 clip with a centred 'face')")
    e2e.add_argument("--audio", help="speech for --video (default: the video's own); cut to --frames frames")
    e2e.add_argument(
        "--detector", default=None,
        help="face detector for --video (default mediapipe; the generated clip uses a detector that reports a "
        "centred face)",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the numbers (and the machine) to this JSON file")
    return parser


def run(args: argparse.Namespace) -> int:
    from .. import bench
    from ..pipeline.settings import resolve_device

    apply_threads(args)
    for name in ("frames", "windows", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
    device = resolve_device(args.device)
    dtype = bench.dtype_named(args.dtype)
    base = bench.parse_variant(args.speed)
    other = bench.parse_variant(args.compare) if args.compare else None
    print(_machine_line(device, dtype))

    if args.e2e:
        results = _run_e2e(args, device, dtype, base, other)
    else:
        results = _run_sampler(args, device, dtype, base, other)
    if args.json:
        bench.write_json(Path(args.json), {"command": {k: v for k, v in vars(args).items() if k != "run"}, **results})
    return 0


def _machine_line(device, dtype) -> str:
    import os
    import platform

    import torch

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    return f"{where} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}"


def _load_real(args, device, dtype, with_whisper: bool):
    from ..pipeline.models import load_models

    models = load_models(
        args.models_dir, unet=args.unet, whisper=args.whisper, vae=args.vae, device=device, dtype=dtype,
        resolution=args.resolution,
    )  # fmt: skip
    return models.unet, models.vae, models.whisper if with_whisper else None


def _uses_real_models(args) -> bool:
    return bool(args.models_dir or args.unet)


def _run_sampler(args, device, dtype, base, other) -> dict:
    from .. import bench

    if _uses_real_models(args):
        unet, vae, _ = _load_real(args, device, dtype, with_whisper=False)
    else:
        unet, vae = bench.random_models(args.size, device, dtype, args.seed)
    inputs = bench.SamplerInputs(
        resolution=args.resolution, num_frames=args.frames, num_windows=args.windows,
        num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
    )  # fmt: skip
    print(f"sampler: {args.size if not _uses_real_models(args) else 'real'} models, {inputs}")
    if other is None:
        side_unet, side_vae = bench.models_for(base, unet, vae)
        runs = [bench.bench_sampler(side_unet, side_vae, inputs, base.speed, base.label) for _ in range(args.repeats)]
        result = min(runs, key=lambda run: run.total_wall)
        print(bench.format_result(result))
        return {"result": result.summary()}
    comparison = bench.compare_sampler(unet, vae, base, other, inputs, args.repeats)
    print(bench.format_comparison(comparison))
    return {"comparison": comparison.summary()}


def _run_e2e(args, device, dtype, base, other) -> dict:
    from .. import bench, bench_clip
    from ..audio.whisper import load_whisper, random_tiny_whisper_state, save_whisper_checkpoint
    from ..face.detectors import create_face_detector
    from ..pipeline.lipsync import LipSyncPipeline
    from ..pipeline.settings import LipSyncSettings

    with tempfile.TemporaryDirectory(prefix="latentsync-bench-") as folder:
        folder = Path(folder)
        # 1. Models
        if _uses_real_models(args):
            unet, vae, whisper = _load_real(args, device, dtype, with_whisper=True)
        else:
            unet, vae = bench.random_models(args.size, device, dtype, args.seed)
            width = unet.config.cross_attention_dim
            dims = {
                "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": width, "n_audio_head": 4, "n_audio_layer": 4,
                "n_vocab": 64, "n_text_ctx": 16, "n_text_state": width, "n_text_head": 4, "n_text_layer": 1,
            }  # fmt: skip
            save_whisper_checkpoint(folder / "whisper.pt", dims, random_tiny_whisper_state(dims, args.seed))
            whisper = load_whisper(folder / "whisper.pt", device=device)

        # 2. Clip
        if args.video:
            video = Path(args.video)
            audio = bench_clip.cut_audio(Path(args.audio or args.video), args.frames, folder)
            detector_name = args.detector or "mediapipe"
        else:
            video, audio = bench_clip.write_test_clip(folder, args.frames)
            detector_name = args.detector or bench_clip.CentredFaceDetector.name
        settings = LipSyncSettings(
            resolution=args.resolution, num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
            device=str(device),
        )  # fmt: skip
        print(
            f"end to end: {video.name}, {args.frames} frames, {args.resolution} px, {args.steps} steps, {detector_name}"
        )

        def run_variant(variant) -> bench.BenchResult:
            side_unet, side_vae = bench.models_for(variant, unet, vae)
            detector = (
                bench_clip.CentredFaceDetector() if detector_name == bench_clip.CentredFaceDetector.name
                else create_face_detector(detector_name)
            )  # fmt: skip
            pipeline = LipSyncPipeline(side_unet, whisper, side_vae, detector, settings, variant.speed)
            output = folder / f"out_{len(list(folder.glob('out_*')))}.mp4"
            return bench.bench_pipeline(pipeline, video, audio, output, variant.label)

        if other is None:
            result = min((run_variant(base) for _ in range(args.repeats)), key=lambda run: run.total_wall)
            print(bench.format_result(result))
            return {"result": result.summary()}
        runs = ([], [])
        for _ in range(args.repeats):
            for variant, results in zip((base, other), runs):
                results.append(run_variant(variant))
        comparison = bench.compare_results(*(min(results, key=lambda run: run.total_wall) for results in runs))
        print(bench.format_comparison(comparison))
        return {"comparison": comparison.summary()}
