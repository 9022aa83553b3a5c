"""The benchmark harness at a tiny size: sampler, comparison, end to end, command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from latentsync import bench
from latentsync._cli import bench as bench_cli
from latentsync.errors import ConfigError
from latentsync.pipeline.speed import SpeedSettings

SMALL = bench.SamplerInputs(resolution=32, num_frames=3, num_windows=2, num_inference_steps=2)
E2E_STAGES = {"decode", "detect", "align", "vae_encode", "denoise", "vae_decode", "paste", "encode"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench_models():
    return bench.random_models("tiny")


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    return bench_cli.run(parser.parse_args(["bench", *argv]))


def test_sampler_bench_times_every_stage(bench_models):
    result = bench.bench_sampler(*bench_models, SMALL)
    assert set(result.wall) == set(bench.SAMPLER_STAGES) and set(result.cpu) == set(bench.SAMPLER_STAGES)
    assert result.num_frames == 6 and result.fps > 0 and result.peak_rss > 2**20 and result.peak_vram is None
    assert result.total_wall >= sum(result.wall.values()) * 0.99
    assert result.output.shape == (6, 3, 32, 32) and result.latents.shape == (6, 4, 4, 4)
    assert "denoise" in bench.format_result(result) and "frames/s" in bench.format_result(result)


def test_comparison_reports_ratio_and_difference(bench_models):
    unet, vae = bench_models
    same = bench.compare_sampler(unet, vae, bench.Variant(), bench.Variant(SpeedSettings(window_batch=2)), SMALL)
    assert same.max_abs_diff < 1e-4 and same.speedup > 0
    four_steps = bench.SamplerInputs(resolution=32, num_frames=3, num_inference_steps=4)
    cached = bench.compare_sampler(unet, vae, bench.Variant(), bench.parse_variant("deepcache_interval=2"), four_steps)
    assert cached.other.label == "deepcache_interval=2"
    assert cached.max_abs_diff > 0 and cached.latent_relative_diff > 0
    text = bench.format_comparison(cached)
    assert "speed-up deepcache_interval=2 vs exact" in text and "output difference: max" in text


def test_variants_parse_switches_and_dtype(bench_models):
    variant = bench.parse_variant("deepcache_interval=3, dtype=bf16")
    assert variant.speed.deepcache_interval == 3 and variant.dtype == torch.bfloat16
    assert variant.label == "deepcache_interval=3,dtype=bfloat16"
    unet, vae = bench_models
    cast_unet, _ = bench.models_for(variant, unet, vae)
    assert next(cast_unet.parameters()).dtype == torch.bfloat16 and next(unet.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype"):
        bench.parse_variant("dtype=fp8")


def test_cli_sampler_prints_and_writes_json(tmp_path, capsys):
    output = tmp_path / "bench.json"
    assert run_cli("--frames", "2", "--steps", "1", "--resolution", "32", "--threads", "1", "--json", str(output)) == 0
    printed = capsys.readouterr().out
    assert "vae_encode" in printed and "frames/s" in printed
    numbers = json.loads(output.read_text())
    assert numbers["machine"]["torch"] == torch.__version__
    assert set(numbers["result"]["ms_per_frame_wall"]) == set(bench.SAMPLER_STAGES)


def test_cli_end_to_end_on_a_generated_clip(tmp_path, capsys):
    output = tmp_path / "e2e.json"
    assert run_cli("--e2e", "--frames", "6", "--steps", "1", "--guidance", "1.0", "--json", str(output)) == 0
    result = json.loads(output.read_text())["result"]
    assert result["frames"] == 6
    assert E2E_STAGES <= set(result["ms_per_frame_wall"])


@pytest.mark.slow
def test_cli_end_to_end_comparison_of_exact_switches(tmp_path, capsys):
    """The pipeline's exact switches against its defaults on the same clip: frames within one level before
    encoding (float rounding of the smaller VAE and UNet batches)."""
    output = tmp_path / "compare.json"
    switches = "cfg_batch=false,vae_batch=2,window_batch=2,io_overlap=false"  # in SpeedSettings' order
    arguments = ["--e2e", "--frames", "34", "--steps", "1", "--threads", "1"]  # windows of 16, 16 and 2
    assert run_cli(*arguments, "--compare", switches, "--json", str(output)) == 0
    comparison = json.loads(output.read_text())["comparison"]
    assert comparison["other"]["label"] == switches.replace("true", "True").replace("false", "False")
    assert comparison["base"]["frames"] == comparison["other"]["frames"] == 34
    assert comparison["output_max_abs_diff"] <= 1 and comparison["speedup_wall"] > 0
    assert "speed-up" in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_bench_runs():
    completed = subprocess.run(
        [sys.executable, "-m", "latentsync", "bench", "--frames", "2", "--steps", "1", "--resolution", "32",
         "--threads", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "frames/s" in completed.stdout
