"""DDIM + classifier-free guidance against the reference trajectory (fixture README §6)."""

from __future__ import annotations

import pytest
import torch

from helpers.files import load_json, load_tensors
from latentsync.pipeline.ddim import create_scheduler, initial_noise, sample_ddim

LATENT_ATOL = 2e-4
UNET_ATOL = 1e-4


class RecordingUNet(torch.nn.Module):
    """Wraps a UNet and keeps every (input, output) pair it saw."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, sample, timestep, audio_embeds):
        out = self.unet(sample, timestep, audio_embeds)
        self.calls.append((sample.clone(), out.clone()))
        return out


@pytest.fixture(scope="module")
def trajectory(fixtures_dir):
    return load_tensors(fixtures_dir / "ddim" / "trajectory.safetensors"), load_json(
        fixtures_dir / "ddim" / "trajectory.json"
    )


def test_scheduler_matches_reference(trajectory):
    tensors, _ = trajectory
    scheduler = create_scheduler()
    torch.testing.assert_close(scheduler.alphas_cumprod, tensors["alphas_cumprod"], atol=0, rtol=0)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == tensors["timesteps"].tolist() == [751, 501, 251, 1]


def test_initial_noise_is_one_draw_repeated(trajectory):
    tensors, _ = trajectory
    noise = initial_noise(16, 16, generator=torch.Generator("cpu").manual_seed(3001))
    assert noise.shape == (1, 4, 1, 16, 16)
    torch.testing.assert_close(noise.repeat(1, 1, 8, 1, 1), tensors["init_latents"], atol=0, rtol=0)


@pytest.mark.slow
def test_full_trajectory(trajectory, fixture_unet):
    tensors, _ = trajectory
    recorder = RecordingUNet(fixture_unet)
    seen_latents = []
    final = sample_ddim(
        recorder,
        tensors["init_latents"],
        tensors["mask_latents"],
        tensors["masked_image_latents"],
        tensors["ref_latents"],
        tensors["audio_embeds"],
        num_inference_steps=4,
        guidance_scale=1.5,
        callback=lambda step, total, latents: seen_latents.append(latents.clone()),
    )
    torch.testing.assert_close(recorder.calls[0][0], tensors["step0.unet_input"], atol=0, rtol=0)
    for step in range(4):
        torch.testing.assert_close(
            recorder.calls[step][1], tensors[f"step{step}.noise_pred_raw"], atol=UNET_ATOL, rtol=1e-4
        )
        torch.testing.assert_close(seen_latents[step], tensors[f"step{step}.latents"], atol=LATENT_ATOL, rtol=0)
    torch.testing.assert_close(final, tensors["final_latents"], atol=LATENT_ATOL, rtol=0)


def test_guidance_off_runs_single_batch(trajectory, fixture_unet):
    """With guidance 1 the UNet sees only the conditional batch (the reference skips CFG when w <= 1)."""
    tensors, _ = trajectory
    recorder = RecordingUNet(fixture_unet)
    sample_ddim(
        recorder,
        tensors["init_latents"],
        tensors["mask_latents"],
        tensors["masked_image_latents"],
        tensors["ref_latents"],
        tensors["audio_embeds"],
        num_inference_steps=2,
        guidance_scale=1.0,
    )
    assert [call[0].shape[0] for call in recorder.calls] == [1, 1]


def test_mismatched_audio_is_rejected(trajectory, fixture_unet):
    tensors, _ = trajectory
    with pytest.raises(ValueError, match="audio_embeds"):
        sample_ddim(
            fixture_unet,
            tensors["init_latents"],
            tensors["mask_latents"],
            tensors["masked_image_latents"],
            tensors["ref_latents"],
            tensors["audio_embeds"][:5],
            num_inference_steps=1,
        )
