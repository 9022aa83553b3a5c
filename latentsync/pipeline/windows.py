"""The model part of lip sync, one way for every caller: windows of faces → VAE encode → DDIM → VAE decode.

`WindowGenerator` is what `LipSyncPipeline` runs and what ``python -m latentsync bench`` times; the caller injects
the clock (a `StageClock`, which may wait for the device at both ends of each stage) and a step callback
(progress, cancel). `sample_windows` denoises several windows in one UNet batch (``window_batch``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..models.vae import LatentCodec, decode_in_batches, encode_in_batches
from .ddim import StepCallback, create_scheduler, sample_ddim
from .denoiser import wrap_unet
from .speed import EXACT, SpeedSettings
from .timing import StageClock


@dataclass
class WindowInputs:
    """What `sample_ddim` needs for one window of ``f`` frames, batch 1.

    Attributes:
        latents: ``x_T`` ``(1, 4, f, h, w)``.
        mask_latents: ``(1, 1, f, h, w)``.
        masked_image_latents: ``(1, 4, f, h, w)``.
        ref_latents: ``(1, 4, f, h, w)``.
        audio_embeds: ``(1, f, n, d)``.
    """

    latents: torch.Tensor
    mask_latents: torch.Tensor
    masked_image_latents: torch.Tensor
    ref_latents: torch.Tensor
    audio_embeds: torch.Tensor


def sample_windows(
    unet: Callable, windows: Sequence[WindowInputs], window_batch: int = 1, **sample_options
) -> list[torch.Tensor]:
    """Denoise several windows, ``window_batch`` at a time in one UNet batch (consecutive windows of equal shape).

    Every window is denoised independently (the UNet treats batch items apart), so the result equals one
    `sample_ddim` call per window up to float rounding of the larger matrix products.

    Args:
        unet: what `sample_ddim` calls (e.g. `wrap_unet`'s result).
        windows: the windows, in order.
        window_batch: windows per UNet batch (the guided batch is twice that).
        sample_options: passed to `sample_ddim` (``num_inference_steps``, ``guidance_scale``, ``scheduler``, ...).

    Returns:
        ``x_0`` ``(1, 4, f, h, w)`` per window, in order.
    """
    results: list[torch.Tensor] = []
    start = 0
    while start < len(windows):
        shape = windows[start].latents.shape
        stop = start + 1
        while stop < len(windows) and stop - start < window_batch and windows[stop].latents.shape == shape:
            stop += 1
        group = windows[start:stop]
        batched = {
            name: torch.cat([getattr(window, name) for window in group])
            for name in ("latents", "mask_latents", "masked_image_latents", "ref_latents", "audio_embeds")
        }
        results.extend(sample_ddim(unet, **batched, **sample_options).split(1))
        start = stop
    return results


@dataclass
class WindowPixels:
    """One window of ``f`` frames to generate.

    Attributes:
        masked: ``(f, 3, R, R)`` faces in ``[-1, 1]`` with the region to regenerate blanked (`MouthMask.mask_image`).
        reference: ``(f, 3, R, R)`` faces in ``[-1, 1]``.
        audio: ``(f, n, d)`` audio features of the same frames (`feature_window`).
    """

    masked: torch.Tensor
    reference: torch.Tensor
    audio: torch.Tensor


@dataclass
class GeneratedWindow:
    """One generated window.

    Attributes:
        latents: ``(f, 4, R/8, R/8)`` denoised latents ``x_0`` (times the VAE scaling factor), model device and dtype.
        faces: ``(f, 3, R, R)`` float32 CPU decoded faces in about ``[-1, 1]``, the whole face.
    """

    latents: torch.Tensor
    faces: torch.Tensor


def _to_video(latents: torch.Tensor) -> torch.Tensor:
    """``(f, c, h, w)`` → ``(1, c, f, h, w)``."""
    return latents.permute(1, 0, 2, 3).unsqueeze(0)


class WindowGenerator:
    """Generates windows of faces: VAE encode, DDIM with classifier-free guidance, VAE decode.

    Args:
        unet: LatentSync UNet; its device and dtype are the model's. ``speed.compile`` compiles its layers in place.
        vae: any `LatentCodec`.
        speed: `SpeedSettings`: DeepCache and compile (`wrap_unet`), ``vae_batch``, ``window_batch``,
            ``cfg_batch``.
        scheduler: a configured `DDIMScheduler`; the official one by default.
    """

    def __init__(self, unet: torch.nn.Module, vae: LatentCodec, speed: SpeedSettings = EXACT, scheduler=None):
        parameter = next(unet.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.denoiser = wrap_unet(unet, speed)  # what the sampler calls: the UNet, or DeepCache around it
        self.vae = vae
        self.speed = speed
        self.vae_batch = speed.vae_batch_on(self.device)
        self.scheduler = scheduler if scheduler is not None else create_scheduler()

    @torch.no_grad()
    def generate(
        self,
        windows: Iterable[WindowPixels],
        noise: torch.Tensor,
        mask_latents: torch.Tensor,
        generator: torch.Generator | None,
        num_inference_steps: int,
        guidance_scale: float,
        clock: StageClock | None = None,
        callback: StepCallback | None = None,
        on_frames: Callable[[str, int], None] | None = None,
    ) -> list[GeneratedWindow]:
        """VAE-encode the masked and then the reference faces of each window in turn (posterior samples from
        ``generator`` in that order), denoise ``speed.window_batch`` windows per UNet batch from ``noise``, and
        VAE-decode.

        Args:
            windows: the windows, in order (read once, so a generator keeps only the current window's pixels).
            noise: ``(1, 4, 1, R/8, R/8)`` initial noise (`initial_noise`), repeated over the frames.
            mask_latents: ``(1, 1, 1, R/8, R/8)`` mask channel (1 = keep, 0 = regenerate), repeated over the frames.
            generator: CPU generator for the VAE posterior samples.
            clock: times the stages ``vae_encode``, ``denoise`` and ``vae_decode``.
            callback: `sample_ddim`'s ``callback(step_index, num_steps, latents)`` after every step of every UNet
                batch; it may raise to cancel.
            on_frames: ``on_frames(stage, num_frames)`` after each window's ``"vae_encode"`` and ``"vae_decode"``
                (progress); it may raise to cancel.

        Returns:
            `GeneratedWindow` per window, in order.
        """
        clock = clock or StageClock()
        device, dtype = self.device, self.dtype
        mask_latents = mask_latents.to(device, dtype)

        # 1. Conditioning latents, window by window
        inputs = []
        for window in windows:
            num_frames = window.reference.shape[0]
            with clock.section("vae_encode"):
                masked_latents = encode_in_batches(self.vae, window.masked, generator, self.vae_batch)
                ref_latents = encode_in_batches(self.vae, window.reference, generator, self.vae_batch)
            if on_frames is not None:
                on_frames("vae_encode", num_frames)
            inputs.append(
                WindowInputs(
                    latents=noise.repeat(1, 1, num_frames, 1, 1).to(device, dtype),
                    mask_latents=mask_latents.expand(-1, -1, num_frames, -1, -1),
                    masked_image_latents=_to_video(masked_latents).to(device, dtype),
                    ref_latents=_to_video(ref_latents).to(device, dtype),
                    audio_embeds=window.audio[None].to(device, dtype),
                )
            )

        # 2. Denoise
        with clock.section("denoise"):
            denoised = sample_windows(
                self.denoiser,
                inputs,
                self.speed.window_batch,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                scheduler=self.scheduler,
                callback=callback,
                batch_cfg=self.speed.cfg_batch,
            )

        # 3. Back to pixels
        generated = []
        for window in denoised:
            latents = window[0].permute(1, 0, 2, 3)
            with clock.section("vae_decode"):
                generated.append(GeneratedWindow(latents, decode_in_batches(self.vae, latents, self.vae_batch)))
            if on_frames is not None:
                on_frames("vae_decode", latents.shape[0])
        return generated
