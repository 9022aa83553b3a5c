"""Training configuration, command line and the small pure functions of the trainer (no training here)."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch

from latentsync.errors import ConfigError
from train.cli import build_parser, launch_command
from train.config import CONFIG_DIR, load_config, parse_override
from train.data.datasets import reference_start
from train.runtime import DEEPSPEED_DIR
from train.unet_trainer import mixed_noise, predicted_original

PACKAGED = {
    "stage1": "stage1", "stage1_512": "stage1", "stage2": "stage2", "stage2_512": "stage2",
    "stage2_efficient": "stage2", "lora": "lora", "syncnet": "syncnet", "tiny_stage1": "stage1",
    "tiny_stage2": "stage2", "tiny_lora": "lora", "tiny_syncnet": "syncnet", "tiny_syncnet_trained": "syncnet",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_configs_load_with_their_mode(name):
    config = load_config(PACKAGED[name], name, ["data.train_fileslist=list.txt"])
    assert config.mode == PACKAGED[name]
    for other in set(PACKAGED.values()) - {PACKAGED[name]}:
        with pytest.raises(ConfigError, match="config; run it with"):
            load_config(other, name)


def test_every_yaml_is_listed():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted([*PACKAGED, "tiny_base"])


def test_reference_hyper_parameters():
    stage2 = load_config("stage2", "stage2")
    assert stage2["optimizer"] == {**stage2["optimizer"], "lr": 1e-5, "max_grad_norm": 1.0, "lr_scheduler": "constant"}
    run = stage2["run"]
    assert (run["recon_loss_weight"], run["sync_loss_weight"], run["perceptual_loss_weight"]) == (1, 0.05, 0.1)
    assert run["trepa_loss_weight"] == 10 and run["use_mixed_noise"] and run["mixed_noise_alpha"] == 1
    assert run["trainable_modules"] == ["motion_modules.", "attentions."]
    assert stage2["data"]["num_frames"] == 16 and stage2["data"]["resolution"] == 256
    efficient = load_config("stage2", "stage2_efficient")
    assert efficient["model"]["unet"] == "stage2_efficient"
    assert efficient["run"]["trainable_modules"] == ["motion_modules.", "attn2."]
    assert efficient["run"]["trepa_loss_weight"] == 0
    assert load_config("stage2", "stage2_512")["data"]["resolution"] == 512
    stage1 = load_config("stage1", "stage1")
    assert not stage1["run"]["pixel_space_supervise"] and stage1["model"]["unet"] == "stage1"


def test_overrides_are_typed_and_checked():
    config = load_config("stage2", "stage2", ["run.seed=3", "run.trainable_modules=[attn2.]", "optimizer.lr=2e-5"])
    assert config["run"]["seed"] == 3 and config["run"]["trainable_modules"] == ["attn2."]
    assert config["optimizer"]["lr"] == 2e-5
    assert parse_override("model.unet=tiny") == (["model", "unet"], "tiny")
    with pytest.raises(ConfigError, match="unknown config key 'run.sede'"):
        load_config("stage2", "stage2", ["run.sede=3"])
    with pytest.raises(ConfigError, match="run.seed must be a int"):
        load_config("stage2", "stage2", ["run.seed=abc"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("stage2", "stage2", ["run.seed"])
    with pytest.raises(ConfigError, match="data.num_frames must be at least 2"):
        load_config("stage2", "stage2", ["data.num_frames=1"])


def test_saved_config_reloads_identically(tmp_path):
    config = load_config("lora", "tiny_lora", ["lora.rank=2"])
    path = config.save(tmp_path / "config.yaml")
    again = load_config("lora", path)
    assert dict(again) == dict(config)


def test_deepspeed_presets():
    presets = {p.stem: json.loads(p.read_text()) for p in DEEPSPEED_DIR.glob("*.json")}
    assert set(presets) == {"zero2", "zero2_offload", "zero3"}
    for name, preset in presets.items():
        zero = preset["zero_optimization"]
        assert preset["bf16"]["enabled"] == "auto" and preset["fp16"]["enabled"] == "auto", name
        assert zero["reduce_bucket_size"] > 0, name
    assert presets["zero2"]["zero_optimization"]["allgather_bucket_size"] > 0
    assert presets["zero2_offload"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert presets["zero3"]["zero_optimization"]["stage"] == 3


def test_print_command_for_multi_node():
    parser = build_parser()
    args = parser.parse_args(
        ["stage2", "--config", "tiny_stage2", "run.seed=5", "--num-processes", "4", "--num-machines", "2",
         "--machine-rank", "$SLURM_NODEID", "--main-process-ip", "$MASTER_ADDR", "--deepspeed", "zero2"]
    )  # fmt: skip
    command = launch_command(args, "bf16")
    line = shlex.join(command)
    assert "--num_processes 8 --num_machines 2 --machine_rank '$SLURM_NODEID'" in line
    assert "--use_deepspeed --deepspeed_config_file" in line and line.endswith(
        "-m train stage2 --config tiny_stage2 run.seed=5 run.deepspeed=zero2"
    )


@pytest.mark.parametrize("deepspeed", ["", "zero2", "zero2_offload"])
def test_warmup_lasts_the_configured_optimizer_steps_with_n_processes(deepspeed):
    """With 4 processes, the warm-up ends after 8 optimizer steps whoever steps the scheduler: accelerate steps its
    schedulers once per process (4 calls per optimizer step), the DeepSpeed engine that owns the optimizer of
    ``zero2_offload`` once per optimizer step."""
    from train.runtime import create_lr_scheduler, deepspeed_owns_optimizer

    processes, warmup = 4, 8
    overrides = ["optimizer.lr_scheduler=constant_with_warmup", f"optimizer.lr_warmup_steps={warmup}",
                 "optimizer.lr=1.0", f"run.deepspeed={deepspeed}"]  # fmt: skip
    config = load_config("stage2", "tiny_stage2", overrides)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = create_lr_scheduler(config, optimizer, processes)
    owned = deepspeed_owns_optimizer(config)
    assert owned == (deepspeed == "zero2_offload")
    if owned:  # what accelerate hands the DeepSpeed engine, which steps it at each optimizer step
        scheduler = scheduler.lr_scheduler_callable(optimizer)
    calls_per_optimizer_step = 1 if owned else processes
    rates = []
    for _ in range(warmup + 2):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        for _ in range(calls_per_optimizer_step):
            scheduler.step()
    assert rates[:3] == pytest.approx([0.0, 1 / warmup, 2 / warmup])
    assert rates[warmup - 1] < 1.0 and rates[warmup:] == [1.0, 1.0]


@pytest.mark.slow
def test_train_runs_from_any_folder_once_installed(tmp_path):
    """``pip install`` puts the configs and DeepSpeed presets beside the code (package data); ``python -m train``
    finds them from another folder, without the checkout on the path."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    # from a copy of the sources: building writes a build/ folder into the source tree
    repository = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("latentsync", "train"):
        shutil.copytree(repository / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repository / name, source / name)
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--target", str(target), str(source)]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    command = [sys.executable, "-m", "train", "stage2", "--config", "tiny_stage2", "--num-processes", "2",
               "--deepspeed", "zero2_offload", "--print-command"]  # fmt: skip
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target)}
    result = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"--deepspeed_config_file {target / 'train' / 'deepspeed' / 'zero2_offload.json'}" in result.stdout


def test_mixed_noise_statistics():
    torch.manual_seed(0)
    latents = torch.zeros(64, 4, 8, 8, 8)
    noise = mixed_noise(latents, alpha=1.0)
    assert abs(noise.var().item() - 1.0) < 0.02
    # half of the variance is shared by the frames of a window: corr(frame 0, frame 1) = 0.5
    correlation = torch.corrcoef(torch.stack([noise[:, :, 0].flatten(), noise[:, :, 1].flatten()]))[0, 1]
    assert abs(correlation.item() - 0.5) < 0.03
    repeated = mixed_noise(latents, alpha=None)
    assert torch.equal(repeated[:, :, 0], repeated[:, :, 5])


def test_one_step_prediction_inverts_the_forward_process():
    from latentsync.pipeline.ddim import create_scheduler

    scheduler = create_scheduler()
    clean, noise = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    timesteps = torch.tensor([0, 500, 999])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    torch.testing.assert_close(predicted_original(scheduler, noise, timesteps, noisy), clean, atol=2e-4, rtol=1e-4)


def test_reference_window_is_at_least_a_window_away():
    generator = np.random.default_rng(0)
    for _ in range(200):
        total = int(generator.integers(15, 80))
        start = int(generator.integers(total - 5 + 1))
        ref = reference_start(start, total, 5, generator)
        assert abs(ref - start) >= 5 and 0 <= ref <= total - 5


@pytest.mark.slow
def test_memory_command_counts_and_measures_a_step(capsys):
    """``python -m train memory``: the counts are the real model's, and a step at a reduced size really runs."""
    from latentsync.models.unet import UNet3DConditionModel
    from latentsync.models.unet_configs import get_unet_config

    args = build_parser().parse_args(["memory", "--config", "tiny_stage2", "--resolution", "64", "--num-frames", "2"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    unet = UNet3DConditionModel.from_config(get_unet_config("tiny"))
    total = sum(p.numel() for p in unet.parameters())
    trained = sum(p.numel() for n, p in unet.named_parameters() if "motion_modules." in n or "attentions." in n)
    assert f"parameters            {total / 1e6:10.1f} M" in printed
    assert f"trainable parameters  {trained / 1e6:10.1f} M" in printed
    assert "one step at 64x64, 2 frames, batch 1, gradient checkpointing on, on cpu" in printed
    assert "increase of the peak resident memory (CPU" in printed

    full = build_parser().parse_args(["memory", "--config", "stage2", "--no-step"])
    assert full.run(full) == 0
    assert "parameters                1267.1 M" in capsys.readouterr().out  # counted on the meta device
