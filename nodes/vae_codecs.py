"""The VAE as the library's `LatentCodec`, from either loader:

* `ComfyVAECodec` over ComfyUI's core ``VAE`` (Load VAE);
* `ManagedVAECodec` over the diffusers ``AutoencoderKL`` of LatentSync VAE Loader, which is the library's own
  `DiffusersVAE` (the reference's computation, bit for bit) under ComfyUI's memory management.

Both load the UNet together with the VAE before every encode (``keep_loaded``), so that making room for the VAE
never leaves the UNet of the next denoising window offloaded, and report decoded faces (``on_decoded``) for
progress previews.

With ComfyUI's VAE: LatentSync encodes with a *sample* of the VAE posterior (``latent_dist.sample(generator)``)
times 0.18215, while ``comfy.sd.VAE.encode`` returns the unscaled posterior mean. For KL autoencoders (the SD VAE
``sd-vae-ft-mse``, as a single file or a diffusers folder's safetensors) the encoder's moments are read directly
and sampled the way diffusers does, from the pipeline's CPU generator, in image order, so the latents are
those of `DiffusersVAE` (up to ComfyUI's own convolution code). Other VAEs ComfyUI loads with 4 latent channels
and 8x down-sampling (e.g. TAESD, deterministic) are encoded with ``VAE.encode``: their mean, with no noise.

Decoding uses ``VAE.decode`` (ComfyUI batches by free memory and falls back to tiling on OOM); its output is
clamped to the valid pixel range, which the reference only does when it converts to uint8.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from comfy import model_management
from comfy.ldm.models.autoencoder import DiagonalGaussianRegularizer
from comfy.model_patcher import ModelPatcher

from ..latentsync.conventions import VAE_SCALE_FACTOR, VAE_SCALING_FACTOR
from ..latentsync.errors import ConfigError
from ..latentsync.models.vae import SD_VAE_FT_MSE_CONFIG, DiffusersVAE

logger = logging.getLogger(__name__)

LATENT_CHANNELS = SD_VAE_FT_MSE_CONFIG["latent_channels"]
# Images per encoder call (memory); the posterior noise is drawn in image order, so the slices do not change it.
SLICE_SIZE = 8


def check_vae(vae) -> None:
    """Raise `ConfigError` unless ``vae`` is an image VAE with LatentSync's latent space shape (4 channels, 8x)."""
    channels, ratio = getattr(vae, "latent_channels", None), getattr(vae, "downscale_ratio", None)
    if getattr(vae, "latent_dim", 2) != 2 or channels != LATENT_CHANNELS or ratio != VAE_SCALE_FACTOR:
        raise ConfigError(
            f"This VAE has {channels} latent channels and down-samples by {ratio}; LatentSync needs the SD 1.5 VAE "
            "(4 channels, 8x): load sd-vae-ft-mse (e.g. vae-ft-mse-840000-ema-pruned.safetensors) with Load VAE."
        )


class ComfyVAECodec:
    """`latentsync.models.vae.LatentCodec` over a ``comfy.sd.VAE``.

    Args:
        vae: the core VAE.
        keep_loaded: ModelPatchers to load together with the VAE before each encode (the UNet).
        on_decoded: called with each decoded batch ``(f, 3, h, w)`` in [-1, 1].
    """

    def __init__(
        self,
        vae,
        keep_loaded: Sequence = (),
        on_decoded: Callable[[torch.Tensor], None] | None = None,
    ):
        check_vae(vae)
        self.vae = vae
        self.keep_loaded = list(keep_loaded)
        self.on_decoded = on_decoded
        self.samples_posterior = isinstance(
            getattr(vae.first_stage_model, "regularization", None), DiagonalGaussianRegularizer
        )
        if not self.samples_posterior:
            logger.info("%s has no Gaussian posterior: encoding with its mean", type(vae.first_stage_model).__name__)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, 3, h, w)`` in [-1, 1] → scaled latents ``(n, 4, h/8, w/8)`` float32."""
        memory = self.vae.memory_used_encode(pixels.shape, self.vae.vae_dtype)
        model_management.load_models_gpu([self.vae.patcher, *self.keep_loaded], memory_required=memory)
        if not self.samples_posterior:
            return self.vae.encode(((pixels + 1) / 2).movedim(1, -1)).float() * VAE_SCALING_FACTOR
        latents = [self._sample(chunk, generator) for chunk in pixels.split(SLICE_SIZE)]
        return torch.cat(latents).float() * VAE_SCALING_FACTOR

    def _sample(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One posterior sample per image, as diffusers' ``DiagonalGaussianDistribution.sample(generator)``."""
        model = self.vae.first_stage_model
        moments = model.encoder(pixels.to(self.vae.device, self.vae.vae_dtype))
        if getattr(model, "quant_conv", None) is not None:
            moments = model.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        if generator is None:
            noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        else:  # drawn on the generator's device (the CPU), then moved, as diffusers' randn_tensor does
            noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
        return mean + std * noise.to(mean.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(n, 4, h/8, w/8)`` → pixels ``(n, 3, h, w)`` float32 in [-1, 1] on the CPU."""
        images = self.vae.decode(latents.float() / VAE_SCALING_FACTOR)
        pixels = images.movedim(-1, 1).float().cpu() * 2 - 1
        if self.on_decoded is not None:
            self.on_decoded(pixels)
        return pixels


class ManagedVAECodec:
    """`DiffusersVAE` over the ``AutoencoderKL`` in a ModelPatcher (LatentSync VAE Loader); arguments as
    `ComfyVAECodec`."""

    def __init__(
        self,
        patcher,
        keep_loaded: Sequence = (),
        on_decoded: Callable[[torch.Tensor], None] | None = None,
    ):
        self.patcher = patcher
        self.keep_loaded = list(keep_loaded)
        self.on_decoded = on_decoded
        self.codec = DiffusersVAE(patcher.model.module)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        model_management.load_models_gpu([self.patcher, *self.keep_loaded])
        return self.codec.encode(pixels, generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        model_management.load_models_gpu([self.patcher])
        pixels = self.codec.decode(latents).float().cpu()
        if self.on_decoded is not None:
            self.on_decoded(pixels)
        return pixels


def vae_codec(vae, keep_loaded: Sequence = (), on_decoded: Callable[[torch.Tensor], None] | None = None):
    """The codec of a sampler's ``vae`` input: a core VAE, or the ModelPatcher of LatentSync VAE Loader."""
    if isinstance(vae, ModelPatcher):
        return ManagedVAECodec(vae, keep_loaded, on_decoded)
    return ComfyVAECodec(vae, keep_loaded, on_decoded)
