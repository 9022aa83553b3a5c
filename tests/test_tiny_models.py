"""`make-tiny-models`, the VAE loader and the offline download helper."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import latentsync
from helpers.files import REPO_ROOT
from latentsync.errors import CheckpointError
from latentsync.models.vae import DiffusersVAE


pytestmark = pytest.mark.slow  # the CLI in subprocesses: minutes on a 2-core runner


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Run the real CLI once, as a user would."""
    dest = tmp_path_factory.mktemp("tiny")
    result = subprocess.run(
        [sys.executable, "-m", "latentsync", "make-tiny-models", str(dest), "--seed", "7"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stdout
    return dest


def test_files_have_the_official_layout(tiny_dir):
    unet_file = torch.load(tiny_dir / "latentsync_unet.pt", weights_only=True)
    assert set(unet_file) == {"state_dict", "global_step"}
    whisper_file = torch.load(tiny_dir / "whisper" / "tiny.pt", weights_only=True)
    assert set(whisper_file) == {"dims", "model_state_dict"}
    assert any(key.startswith("decoder.") for key in whisper_file["model_state_dict"])
    assert (tiny_dir / "sd-vae-ft-mse" / "config.json").is_file()
    assert "RANDOM WEIGHTS" in (tiny_dir / "RANDOM_WEIGHTS.txt").read_text()


def test_every_model_loads_strictly_and_fits_together(tiny_dir):
    unet = latentsync.load_unet(tiny_dir / "latentsync_unet.pt")
    whisper = latentsync.load_whisper(tiny_dir / "whisper" / "tiny.pt")
    vae = DiffusersVAE(latentsync.load_vae(tiny_dir / "sd-vae-ft-mse"))
    latentsync.load_syncnet(tiny_dir / "stable_syncnet.pt")

    features = whisper.encode(torch.randn(16000).numpy() * 0.1)
    window = latentsync.audio_window(latentsync.feature_chunks(features), 0, 4)
    pixels = torch.rand(4, 3, 64, 64) * 2 - 1
    latents = vae.encode(pixels, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (4, 4, 8, 8)
    frames_latents = latents.permute(1, 0, 2, 3).unsqueeze(0)  # (f, c, h, w) -> (1, c, f, h, w)
    mask = torch.ones(1, 1, 4, 8, 8)
    sample = torch.cat([torch.randn_like(frames_latents), mask, frames_latents, frames_latents], dim=1)
    assert sample.shape == (1, 13, 4, 8, 8)
    with torch.no_grad():
        with_audio = unet(sample, torch.tensor(500), window.unsqueeze(0))
        silent = unet(sample, torch.tensor(500), torch.zeros_like(window).unsqueeze(0))
    assert with_audio.shape == (1, 4, 4, 8, 8)
    assert (with_audio - silent).abs().max() > 1e-3, "random conv_in/conv_out must make the output depend on audio"
    assert vae.decode(latents).shape == (4, 3, 64, 64)


def test_seed_makes_identical_files(tiny_dir, tmp_path):
    from latentsync.tiny import make_tiny_models

    again = make_tiny_models(tmp_path, seed=7)
    first = torch.load(tiny_dir / "latentsync_unet.pt", weights_only=True)["state_dict"]
    second = torch.load(again["unet"], weights_only=True)["state_dict"]
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_vae_single_file_and_wrong_file(tiny_dir, tmp_path):
    folder_vae = latentsync.load_vae(tiny_dir / "sd-vae-ft-mse")
    # A single diffusers-keyed file is read with the sd-vae-ft-mse architecture: the tiny one does not fit it.
    single = tmp_path / "tiny_vae.safetensors"
    save_file(folder_vae.state_dict(), single)
    with pytest.raises(CheckpointError, match="Wrong shape"):
        latentsync.load_vae(single)
    with pytest.raises(CheckpointError, match="VAE"):
        latentsync.load_vae(tiny_dir / "latentsync_unet.pt")
    with pytest.raises(CheckpointError, match="config.json"):
        latentsync.load_vae(tmp_path)


def test_download_fails_clearly_offline(tmp_path):
    """Run offline on purpose (a dead loopback endpoint), so the test never downloads gigabytes on a user's machine."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "latentsync", "download", "--version", "1.5", "--dest", str(tmp_path / "models")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "by hand" in result.stderr and "latentsync_unet.pt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists(), "nothing may be left behind"
    # direct download addresses (/resolve/), not the Hub's web pages (/blob/)
    assert "https://huggingface.co/ByteDance/LatentSync-1.5/resolve/main/latentsync_unet.pt" in result.stderr
    assert "/blob/" not in result.stderr
    # the reason in words, not an inner error number
    assert "cannot be reached from this machine" in result.stderr and "Errno" not in result.stderr


def test_download_for_comfyui_puts_the_vae_in_models_vae(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "latentsync", "download", "--comfyui", str(tmp_path / "ComfyUI")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    models = tmp_path / "ComfyUI" / "models"
    for line in (
        f"/resolve/main/latentsync_unet.pt  ->  {models / 'latentsync' / 'latentsync_unet.pt'}",
        f"/resolve/main/whisper/tiny.pt  ->  {models / 'latentsync' / 'whisper' / 'tiny.pt'}",
        f"/resolve/main/config.json  ->  {models / 'vae' / 'sd-vae-ft-mse' / 'config.json'}",
    ):
        assert line in result.stderr
