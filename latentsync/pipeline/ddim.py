"""DDIM sampling with classifier-free guidance, exactly as the LatentSync pipeline runs it.

Notation follows the DDIM paper and diffusers' `DDIMScheduler`: ``x_t`` are the noisy latents, the UNet predicts
the noise ``eps_theta(x_t, t, audio)``; guidance mixes the prediction for zero audio (unconditional) and for the
real audio (conditional): ``eps = eps_uncond + w * (eps_cond - eps_uncond)``, applied only when ``w > 1``.

The UNet input has 13 channels, concatenated in this order (fixture README §2 and §6):
``[x_t (4), mouth mask (1), masked-face latents (4), reference-face latents (4)]``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from diffusers import DDIMScheduler

# `configs/scheduler_config.json` of the official repository.
OFFICIAL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


StepCallback = Callable[[int, int, torch.Tensor], None]
"""``callback(step_index, num_steps, latents)`` after each step; it may raise to cancel."""


def create_scheduler(**overrides) -> DDIMScheduler:
    """A `DDIMScheduler` with the official LatentSync configuration (``overrides`` replace single keys)."""
    return DDIMScheduler(**{**OFFICIAL_SCHEDULER_CONFIG, **overrides})


def initial_noise(
    latent_height: int,
    latent_width: int,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The starting noise ``x_T`` shared by every frame of a video.

    The reference draws one ``(1, 4, 1, h, w)`` normal tensor and repeats it over all frames; drawing it once per
    video (on the generator's device, then moving it) reproduces that for any number of windows.

    Returns:
        Tensor of shape ``(1, 4, 1, h, w)``; repeat it along dim 2 to the window's frame count.
    """
    generator_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(
        (1, 4, 1, latent_height, latent_width), generator=generator, device=generator_device, dtype=dtype
    )
    return noise.to(device)


def guided_noise_prediction(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: torch.Tensor,
    audio_embeds: torch.Tensor,
    guidance_scale: float,
    batch_cfg: bool = True,
) -> torch.Tensor:
    """One UNet evaluation with classifier-free guidance.

    Args:
        unet: called as ``unet(sample, timestep, audio_embeds)`` and returning the noise prediction.
        latents: ``x_t`` of shape ``(b, 4, f, h, w)``.
        timestep: 0-d integer tensor.
        conditioning: ``(b, 9, f, h, w)`` = mask, masked-face latents and reference latents on channels.
        audio_embeds: ``(b, f, 50, d)`` conditional audio features.
        guidance_scale: ``w``; guidance (a doubled batch with zero audio first) only when ``w > 1``.
        batch_cfg: evaluate the unconditional and the conditional input in one doubled batch (the reference's
            way); False makes two UNet calls of the original batch size (same math, less memory).

    Returns:
        The (guided) noise prediction, shape ``(b, 4, f, h, w)``.
    """
    if guidance_scale <= 1.0:
        return unet(torch.cat([latents, conditioning], dim=1), timestep, audio_embeds)
    unet_input = torch.cat([latents, conditioning], dim=1)
    if batch_cfg:
        audio_batch = torch.cat([torch.zeros_like(audio_embeds), audio_embeds])
        noise_uncond, noise_cond = unet(torch.cat([unet_input, unet_input]), timestep, audio_batch).chunk(2)
    else:
        noise_uncond = unet(unet_input, timestep, torch.zeros_like(audio_embeds))
        noise_cond = unet(unet_input, timestep, audio_embeds)
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


@torch.no_grad()
def sample_ddim(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    mask_latents: torch.Tensor,
    masked_image_latents: torch.Tensor,
    ref_latents: torch.Tensor,
    audio_embeds: torch.Tensor,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.5,
    scheduler: Optional[DDIMScheduler] = None,
    callback: Optional[StepCallback] = None,
    batch_cfg: bool = True,
) -> torch.Tensor:
    """Denoise one window of frames from ``x_T`` to ``x_0`` with DDIM (eta 0) and classifier-free guidance.

    Args:
        unet: the LatentSync UNet, called as ``unet(sample, timestep, audio_embeds)``.
        latents: initial noise ``x_T`` of shape ``(b, 4, f, h, w)`` (already scaled by ``init_noise_sigma``, which
            is 1 for DDIM).
        mask_latents: ``(b, 1, f, h, w)``, 1 = keep, 0 = regenerate.
        masked_image_latents: ``(b, 4, f, h, w)`` VAE latents of the masked faces, times the scaling factor.
        ref_latents: ``(b, 4, f, h, w)`` VAE latents of the reference faces, times the scaling factor.
        audio_embeds: ``(b, f, 50, d)``, or ``(f, 50, d)`` for ``b = 1``.
        num_inference_steps: DDIM steps (the official inference uses 20).
        guidance_scale: classifier-free guidance weight (official 1.5).
        scheduler: a configured `DDIMScheduler`; the official one when omitted. Its timesteps are (re)set here.
        callback: called after every step as ``callback(step_index, num_steps, latents)``; may raise to cancel.
        batch_cfg: see `guided_noise_prediction`.

    Returns:
        The denoised latents ``x_0`` of shape ``(b, 4, f, h, w)`` (still multiplied by the VAE scaling factor).
    """
    if audio_embeds.dim() == 3:
        audio_embeds = audio_embeds.unsqueeze(0)
    if audio_embeds.shape[:2] != (latents.shape[0], latents.shape[2]):
        raise ValueError(
            f"audio_embeds {tuple(audio_embeds.shape)} must be (batch, frames, tokens, dim) matching latents "
            f"{tuple(latents.shape)} (batch, 4, frames, h, w)"
        )
    scheduler = scheduler if scheduler is not None else create_scheduler()
    scheduler.set_timesteps(num_inference_steps, device=latents.device)

    # 1. The conditioning channels are the same at every step.
    conditioning = torch.cat([mask_latents, masked_image_latents, ref_latents], dim=1).to(latents.dtype)
    audio_embeds = audio_embeds.to(latents.dtype)

    # 2. Denoising loop: x_t -> x_{t-1}.
    for step_index, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, timestep)
        noise_pred = guided_noise_prediction(
            unet, model_input, timestep, conditioning, audio_embeds, guidance_scale, batch_cfg
        )
        latents = scheduler.step(noise_pred, timestep, latents, eta=0.0).prev_sample
        if callback is not None:
            callback(step_index, len(scheduler.timesteps), latents)
    return latents
