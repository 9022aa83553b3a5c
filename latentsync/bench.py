"""Benchmarks: time per frame of every stage, frames per second and peak memory, and two settings side by side.

Two modes (``python -m latentsync bench``, see ``docs/benchmarks.md``):

* **sampler** (default): the model part of lip sync on random faces and audio features: VAE encode of the masked
  and reference faces, DDIM with classifier-free guidance (the UNet), VAE decode. Models are random weights of
  three sizes (`BENCH_SIZES`): ``tiny`` (the test models), ``mid`` (the official architecture with a fifth of the
  channels) and ``full`` (the official architecture: what real checkpoints cost), or real checkpoints.
* **end to end** (``--e2e``): `LipSyncPipeline.run` on a clip (by default a generated one with a detector that
  reports a face in the middle of every frame: `latentsync.bench_clip`), timing decode, detect, align, VAE
  encode, UNet, VAE decode, paste and encode.

`compare` runs two `SpeedSettings` (and/or dtypes) on the same inputs, interleaved, and reports the speed ratio
and the largest output difference. On a shared CPU, compare process CPU time with one thread (``--threads 1``):
wall time depends on what else runs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .conventions import VAE_SCALE_FACTOR
from .errors import ConfigError
from .files import save_json
from .models.unet import UNet3DConditionModel
from .models.unet_configs import get_unet_config
from .models.vae import SD_VAE_FT_MSE_CONFIG, TINY_VAE_CONFIG, DiffusersVAE, LatentCodec
from .pipeline.ddim import initial_noise
from .pipeline.settings import DTYPES
from .pipeline.speed import EXACT, SpeedSettings
from .pipeline.timing import StageClock, device_sync
from .pipeline.windows import WindowGenerator, WindowPixels
from .tiny import randomize_parameters

logger = logging.getLogger(__name__)

# name -> (UNet config, VAE config) of the random-weight models.
BENCH_SIZES: dict[str, tuple[dict, dict]] = {
    "tiny": (get_unet_config("tiny"), TINY_VAE_CONFIG),
    "mid": (
        {**get_unet_config("stage2"), "block_out_channels": [64, 128, 256, 256]},
        {**SD_VAE_FT_MSE_CONFIG, "block_out_channels": [32, 64, 128, 128]},
    ),
    "full": (get_unet_config("stage2"), SD_VAE_FT_MSE_CONFIG),
}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
SAMPLER_STAGES = ("vae_encode", "denoise", "vae_decode")
# Audio tokens per model frame (Whisper features of 10 frames x 5 tokens, as `feature_window` gives them).
AUDIO_TOKENS = 50


def dtype_named(name: str) -> torch.dtype:
    """``fp32`` / ``float32``, ``fp16`` / ``float16``, ``bf16`` / ``bfloat16``."""
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use fp32, fp16 or bf16")
    return DTYPES[name]


def random_models(
    size: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[UNet3DConditionModel, DiffusersVAE]:
    """The UNet and VAE of a `BENCH_SIZES` entry with random weights (`randomize_parameters`), eval mode.

    ``full`` is the official architecture (1.27 G UNet elements: about 5 GB in float32, 2.5 GB in half).
    """
    from diffusers import AutoencoderKL

    if size not in BENCH_SIZES:
        raise ConfigError(f"unknown bench size {size!r}; choose one of {', '.join(BENCH_SIZES)}")
    unet_config, vae_config = BENCH_SIZES[size]
    generator = torch.Generator().manual_seed(seed)
    with torch.device(device):
        unet = UNet3DConditionModel(**copy.deepcopy(unet_config))
        vae = AutoencoderKL(**vae_config)
    randomize_parameters(unet, generator)
    randomize_parameters(vae, generator)
    if dtype != torch.float32:
        unet, vae = unet.to(dtype), vae.to(dtype)
    return unet.eval(), DiffusersVAE(vae.eval())


# ----------------------------------------------------------------------------------------------------------
# Measuring


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak-RSS count afresh where Linux allows it (``/proc/self/clear_refs``) and the CUDA peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the peak is since the start of the process
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (since the last `reset_peak_memory` where supported)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


@dataclass
class BenchResult:
    """One measured run.

    Attributes:
        label: what was run (its switches).
        num_frames: frames generated (sampler) or written (end to end).
        wall: wall-clock seconds per stage; ``cpu``: process CPU seconds per stage (all threads).
        total_wall: seconds of the whole run (at least the sum of the stages).
        peak_rss: peak resident memory in bytes; ``peak_vram``: peak CUDA memory allocated, or None.
        output: what the run produced, for comparisons: decoded faces ``(n, 3, R, R)`` (sampler) or the written
            frames ``(n, h, w, 3)`` uint8 (end to end).
        latents: denoised latents ``(n, 4, R/8, R/8)`` (sampler only).
    """

    label: str
    num_frames: int
    wall: dict[str, float]
    cpu: dict[str, float]
    total_wall: float
    total_cpu: float
    peak_rss: int
    peak_vram: int | None = None
    output: torch.Tensor | None = field(default=None, repr=False)
    latents: torch.Tensor | None = field(default=None, repr=False)

    @property
    def fps(self) -> float:
        """Frames per second of the whole run."""
        return self.num_frames / self.total_wall

    def summary(self) -> dict:
        """JSON-ready numbers (milliseconds per frame per stage)."""
        per_frame = lambda seconds: {stage: 1000 * value / self.num_frames for stage, value in seconds.items()}
        return {
            "label": self.label,
            "frames": self.num_frames,
            "fps": self.fps,
            "ms_per_frame_wall": per_frame(self.wall),
            "ms_per_frame_cpu": per_frame(self.cpu),
            "total_wall_s": self.total_wall,
            "total_cpu_s": self.total_cpu,
            "peak_rss_mib": self.peak_rss / 2**20,
            "peak_vram_mib": None if self.peak_vram is None else self.peak_vram / 2**20,
        }


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def format_result(result: BenchResult) -> str:
    """A table: ms per frame per stage (wall, CPU), frames per second, peak memory."""
    lines = [f"{result.label}: {result.num_frames} frames", f"  {'stage':<11}{'wall ms/f':>11}{'cpu ms/f':>11}"]
    for stage, seconds in result.wall.items():
        cpu = f"{1000 * result.cpu[stage] / result.num_frames:11.1f}" if stage in result.cpu else f"{'-':>11}"
        lines.append(f"  {stage:<11}{1000 * seconds / result.num_frames:11.1f}{cpu}")
    lines.append(
        f"  {'total':<11}{1000 * result.total_wall / result.num_frames:11.1f}"
        f"{1000 * result.total_cpu / result.num_frames:11.1f}"
    )
    lines.append(f"  {result.fps:.3f} frames/s, peak RSS {_mib(result.peak_rss)}, peak VRAM {_mib(result.peak_vram)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Sampler benchmark


@dataclass(frozen=True)
class SamplerInputs:
    """The work of a sampler benchmark.

    Attributes:
        resolution: face side in pixels (latents are ``resolution / 8``).
        num_frames: frames per window (16 in the reference); ``num_windows`` windows.
        num_inference_steps, guidance_scale: DDIM steps and CFG weight (20 and 1.5 in the reference).
        seed: seed of the faces, audio features, initial noise and VAE samples.
    """

    resolution: int = 256
    num_frames: int = 16
    num_windows: int = 1
    num_inference_steps: int = 20
    guidance_scale: float = 1.5
    seed: int = 0

    def __post_init__(self):
        if self.resolution % VAE_SCALE_FACTOR or self.resolution < 16:
            raise ConfigError(f"resolution must be a multiple of 8 and at least 16, got {self.resolution}")
        if self.num_frames < 1 or self.num_windows < 1 or self.num_inference_steps < 1:
            raise ConfigError("frames, windows and steps must be at least 1")


def _model_device_dtype(unet: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(unet.parameters())
    return parameter.device, parameter.dtype


def bench_sampler(
    unet: UNet3DConditionModel,
    vae: LatentCodec,
    inputs: SamplerInputs = SamplerInputs(),
    speed: SpeedSettings = EXACT,
    label: str = "exact",
) -> BenchResult:
    """Time the pipeline's `WindowGenerator` (VAE encode, the denoising loop, VAE decode) on ``inputs.num_windows``
    windows of random inputs.

    The faces are uniform noise in ``[-1, 1]``, the lower half of each face is the region to regenerate, the audio
    features are standard normal; everything comes from ``inputs.seed``, so two runs see the same inputs.
    ``speed`` applies DeepCache, compile (in place on ``unet``), VAE batching and window batching.
    """
    device, _ = _model_device_dtype(unet)
    resolution, num_frames = inputs.resolution, inputs.num_frames
    latent_size = resolution // VAE_SCALE_FACTOR
    generator = torch.Generator().manual_seed(inputs.seed)
    total = num_frames * inputs.num_windows
    faces = torch.rand(total, 3, resolution, resolution, generator=generator) * 2 - 1
    audio = torch.randn(total, AUDIO_TOKENS, unet.config.cross_attention_dim, generator=generator)
    keep = torch.ones(1, 1, resolution, resolution)
    keep[..., resolution // 2 :, :] = 0  # 1 = keep, 0 = regenerate
    mask_latents = torch.nn.functional.interpolate(keep, size=(latent_size, latent_size))[:, :, None]
    noise = initial_noise(latent_size, latent_size, generator)
    windows = [
        WindowPixels(window_faces * keep, window_faces, window_audio)
        for window_faces, window_audio in zip(faces.split(num_frames), audio.split(num_frames))
    ]

    window_generator = WindowGenerator(unet, vae, speed)
    clock = StageClock(sync=device_sync(device))
    reset_peak_memory(device)
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    generated = window_generator.generate(
        windows, noise, mask_latents, generator, inputs.num_inference_steps, inputs.guidance_scale, clock
    )
    return BenchResult(
        label=label,
        num_frames=total,
        wall=dict(clock.seconds),
        cpu=dict(clock.cpu_seconds),
        total_wall=time.perf_counter() - started_wall,
        total_cpu=time.process_time() - started_cpu,
        peak_rss=peak_rss_bytes(),
        peak_vram=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        output=torch.cat([window.faces for window in generated]),
        latents=torch.cat([window.latents for window in generated]).float().cpu(),
    )


# ----------------------------------------------------------------------------------------------------------
# End-to-end benchmark


@contextmanager
def recorded_frames(pipeline) -> Iterator[list[np.ndarray]]:
    """Collect the frames ``pipeline`` produces (before video encoding, which can turn a one-level difference
    into a larger one) while the block runs; the list fills as it goes."""
    frames: list[np.ndarray] = []
    sync_frames = pipeline.sync_frames

    def recording(*args, **kwargs) -> Iterator[np.ndarray]:
        for frame in sync_frames(*args, **kwargs):
            frames.append(frame)
            yield frame

    pipeline.sync_frames = recording
    try:
        yield frames
    finally:
        del pipeline.sync_frames


def bench_pipeline(
    pipeline,
    video_path: Path,
    audio_path: Path,
    output_path: Path,
    label: str = "exact",
) -> BenchResult:
    """Time `LipSyncPipeline.run` per stage (its `LipSyncReport.stage_seconds`); ``output`` holds the frames
    it produced, before encoding."""
    device, _ = _model_device_dtype(pipeline.unet)
    reset_peak_memory(device)
    started_cpu = time.process_time()
    with recorded_frames(pipeline) as frames:
        report = pipeline.run(video_path, audio_path, output_path)
    total_cpu = time.process_time() - started_cpu
    return BenchResult(
        label=label,
        num_frames=report.num_frames,
        wall=report.stage_seconds,
        cpu={},
        total_wall=report.wall_seconds,
        total_cpu=total_cpu,
        peak_rss=peak_rss_bytes(),
        peak_vram=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        output=torch.from_numpy(np.stack(frames)),
    )


# ----------------------------------------------------------------------------------------------------------
# Comparing two settings


@dataclass
class Variant:
    """One side of a comparison: speed switches and the model precision (None = the models' own)."""

    speed: SpeedSettings = EXACT
    dtype: torch.dtype | None = None

    @property
    def label(self) -> str:
        changed = {
            item.name: getattr(self.speed, item.name)
            for item in dataclasses.fields(self.speed)
            if getattr(self.speed, item.name) != item.default
        }
        if self.dtype is not None:
            changed["dtype"] = str(self.dtype).removeprefix("torch.")
        return ",".join(f"{name}={value}" for name, value in changed.items()) or "exact"

    def needs_own_models(self) -> bool:
        """Compiling patches the UNet in place and a dtype change casts it: such a side gets its own copy."""
        return self.speed.compile or self.dtype is not None


def parse_variant(text: str) -> Variant:
    """``"deepcache_interval=3,dtype=bf16"`` -> a `Variant` (``dtype`` next to the `SpeedSettings` switches)."""
    from .pipeline.speed import parse_switches

    items = [item.strip() for item in text.split(",") if item.strip()]
    dtype_items = [item for item in items if item.split("=", 1)[0].strip() == "dtype"]
    switches = parse_switches(",".join(item for item in items if item not in dtype_items))
    dtype = dtype_named(dtype_items[-1].split("=", 1)[1].strip()) if dtype_items else None
    return Variant(SpeedSettings(**switches), dtype)


def models_for(variant: Variant, unet: torch.nn.Module, vae: DiffusersVAE) -> tuple[torch.nn.Module, DiffusersVAE]:
    """The models a variant runs on: the given ones, or a copy (cast to its dtype) when it needs its own."""
    if not variant.needs_own_models():
        return unet, vae
    unet, vae = copy.deepcopy(unet), DiffusersVAE(copy.deepcopy(vae.vae))
    if variant.dtype is not None:
        unet, vae.vae = unet.to(variant.dtype), vae.vae.to(variant.dtype)
    return unet, vae


@dataclass
class Comparison:
    """Two variants measured on the same inputs.

    Attributes:
        base, other: the fastest of the repeated runs of each side.
        speedup: ``base.total / other.total`` (wall, and CPU time in ``cpu_speedup``).
        max_abs_diff, mean_abs_diff: largest and mean ``|other - base|`` of the outputs (decoded faces in [-1, 1],
            or frames 0..255); ``latent_max_abs_diff`` and ``latent_relative_diff`` (divided by the spread of the base latents) for
            the sampler.
    """

    base: BenchResult
    other: BenchResult
    speedup: float
    cpu_speedup: float
    max_abs_diff: float
    mean_abs_diff: float
    latent_max_abs_diff: float | None = None
    latent_relative_diff: float | None = None

    def summary(self) -> dict:
        return {
            "base": self.base.summary(),
            "other": self.other.summary(),
            "speedup_wall": self.speedup,
            "speedup_cpu": self.cpu_speedup,
            "output_max_abs_diff": self.max_abs_diff,
            "output_mean_abs_diff": self.mean_abs_diff,
            "latent_max_abs_diff": self.latent_max_abs_diff,
            "latent_relative_diff": self.latent_relative_diff,
        }


def compare_results(base: BenchResult, other: BenchResult) -> Comparison:
    """Speed ratio and output difference of two runs of the same work."""
    if base.output.shape != other.output.shape:
        raise ConfigError(
            f"the two runs produced different shapes: {tuple(base.output.shape)} and {tuple(other.output.shape)}"
        )
    latent_diff = relative = None
    if base.latents is not None and other.latents is not None:
        latent_diff = (other.latents - base.latents).abs().max().item()
        relative = latent_diff / base.latents.std().item()
    difference = (other.output.float() - base.output.float()).abs()
    return Comparison(
        base=base,
        other=other,
        speedup=base.total_wall / other.total_wall,
        cpu_speedup=base.total_cpu / other.total_cpu,
        max_abs_diff=difference.max().item(),
        mean_abs_diff=difference.mean().item(),
        latent_max_abs_diff=latent_diff,
        latent_relative_diff=relative,
    )


def _fastest(results: list[BenchResult]) -> BenchResult:
    return min(results, key=lambda result: result.total_cpu if result.total_cpu > 0 else result.total_wall)


def compare_sampler(
    unet: UNet3DConditionModel,
    vae: DiffusersVAE,
    base: Variant,
    other: Variant,
    inputs: SamplerInputs = SamplerInputs(),
    repeats: int = 1,
) -> Comparison:
    """Run ``base`` and ``other`` ``repeats`` times each, alternating, on the same inputs; keep each side's fastest run
    (by CPU time on the CPU, wall time on a GPU)."""
    sides = [(variant, *models_for(variant, unet, vae)) for variant in (base, other)]
    runs: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for (variant, side_unet, side_vae), results in zip(sides, runs):
            results.append(bench_sampler(side_unet, side_vae, inputs, variant.speed, variant.label))
    if unet.device.type == "cuda":
        return compare_results(*(min(results, key=lambda result: result.total_wall) for results in runs))
    return compare_results(_fastest(runs[0]), _fastest(runs[1]))


def format_comparison(comparison: Comparison) -> str:
    """Both tables, then the ratios and differences."""
    lines = [format_result(comparison.base), format_result(comparison.other)]
    lines.append(
        f"speed-up {comparison.other.label} vs {comparison.base.label}: {comparison.speedup:.2f}x wall, "
        f"{comparison.cpu_speedup:.2f}x CPU time"
    )
    for stage in comparison.base.wall:
        if stage in comparison.other.wall and comparison.other.wall[stage] > 0:
            lines.append(f"  {stage:<11}{comparison.base.wall[stage] / comparison.other.wall[stage]:8.2f}x wall")
    lines.append(
        f"output difference: max {comparison.max_abs_diff:.3g}, mean {comparison.mean_abs_diff:.3g} "
        "(faces in [-1, 1]; end to end: frames in 0..255 before encoding)"
    )
    if comparison.latent_max_abs_diff is not None:
        lines.append(
            f"max |latent difference|: {comparison.latent_max_abs_diff:.3g} "
            f"({100 * comparison.latent_relative_diff:.2g}% of the latents' standard deviation)"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    """Write benchmark numbers with the machine description."""
    import platform

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    save_json({"machine": machine, **payload}, path)
