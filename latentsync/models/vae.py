"""The image VAE: `stabilityai/sd-vae-ft-mse` as a diffusers `AutoencoderKL`, loaded from a folder or one file.

LatentSync works in the latent space of the SD-1.5 VAE (``sd-vae-ft-mse``), with latents multiplied by 0.18215.
People keep that VAE either as a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) or as a
single original-format file in ``ComfyUI/models/vae`` (``vae-ft-mse-840000-ema-pruned.safetensors``); both load here,
offline, strictly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

import torch

from ..checkpoint import load_state_dict_strict, read_checkpoint
from ..conventions import VAE_SCALING_FACTOR
from ..errors import CheckpointError

if TYPE_CHECKING:  # diffusers is imported when a VAE is built (`load_vae`), not with this module
    from diffusers import AutoencoderKL

# `config.json` of stabilityai/sd-vae-ft-mse (diffusers format).
SD_VAE_FT_MSE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": VAE_SCALING_FACTOR,
}

# A VAE with the same structure and 8x down-sampling but a few thousand parameters, for tests and demos.
TINY_VAE_CONFIG = {
    **SD_VAE_FT_MSE_CONFIG,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
}

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class LatentCodec(Protocol):
    """What the pipeline needs from a VAE (ours, or ComfyUI's wrapped by a node).

    ``encode`` maps pixels ``(n, 3, h, w)`` in [-1, 1] to scaled latents ``(n, 4, h/8, w/8)``; ``decode`` maps scaled
    latents back to pixels in [-1, 1].
    """

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def encode_in_batches(
    codec: LatentCodec, pixels: torch.Tensor, generator: Optional[torch.Generator], batch_size: int
) -> torch.Tensor:
    """``codec.encode`` ``batch_size`` images at a time; the posterior samples are drawn in the same order, so the
    result does not depend on ``batch_size``: ``(n, 3, h, w)`` → ``(n, 4, h/8, w/8)``."""
    return torch.cat([codec.encode(chunk, generator) for chunk in pixels.split(batch_size)])


def decode_in_batches(codec: LatentCodec, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``codec.decode`` ``batch_size`` latents at a time, as float32 on the CPU: ``(n, 4, h/8, w/8)`` →
    ``(n, 3, h, w)``."""
    return torch.cat([codec.decode(chunk).float().cpu() for chunk in latents.split(batch_size)])


class DiffusersVAE:
    """`LatentCodec` over a diffusers `AutoencoderKL`, reproducing the reference's use of it.

    Encoding samples the posterior (the reference uses ``latent_dist.sample(generator)``, not the mean) and scales
    by ``scaling_factor``; decoding divides by it. Every call works on the whole batch it is given: callers bound
    memory with `encode_in_batches` / `decode_in_batches` (the pipeline's ``vae_batch``).
    """

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(n, 3, h, w)`` in [-1, 1] → scaled latents ``(n, 4, h/8, w/8)``."""
        pixels = pixels.to(self.device, self.dtype)
        return self.vae.encode(pixels).latent_dist.sample(generator=generator) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(n, 4, h/8, w/8)`` → pixels ``(n, 3, h, w)`` in [-1, 1] (not clamped)."""
        latents = latents.to(self.device, self.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample


def _is_ldm_layout(state_dict: dict) -> bool:
    """Original (CompVis/LDM) key names such as ``encoder.down.0.block.0.conv1.weight``."""
    return any(".down.0.block." in key or key.startswith("first_stage_model.") for key in state_dict)


def _to_diffusers_layout(state_dict: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state_dict, config)


def _locate(path: Path) -> tuple[dict, Path]:
    """(config, weights file) for a diffusers folder or a single file."""
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(
                f"VAE folder {path} has no config.json. Give the diffusers folder of stabilityai/sd-vae-ft-mse "
                "(config.json + diffusion_pytorch_model.safetensors) or a single .safetensors VAE file."
            )
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                config = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
                return config, path / name
        raise CheckpointError(f"VAE folder {path} holds none of {', '.join(_WEIGHT_FILES)}.")
    return dict(SD_VAE_FT_MSE_CONFIG), path


def load_vae(
    path: str | os.PathLike,
    device: Optional[torch.device | str] = None,
    dtype: Optional[torch.dtype] = None,
) -> AutoencoderKL:
    """Load an `AutoencoderKL` from a diffusers folder or a single (diffusers- or LDM-keyed) file, strictly.

    A single file is assumed to hold the ``sd-vae-ft-mse`` architecture (the only VAE LatentSync was trained with);
    original LDM key names (and full SD checkpoints' ``first_stage_model.*``) are converted to diffusers names.

    Raises:
        CheckpointError: unreadable file, or weights that do not fit the VAE (e.g. a UNet given as VAE).
    """
    config, weights_file = _locate(Path(path))
    state_dict = read_checkpoint(weights_file).state_dict
    if _is_ldm_layout(state_dict):
        state_dict = _to_diffusers_layout(state_dict, config)
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    load_state_dict_strict(
        vae,
        state_dict,
        source=str(weights_file),
        hint="A VAE file holds encoder.*/decoder.*/quant_conv.* weights (stabilityai/sd-vae-ft-mse).",
    )
    vae = vae.to(device or "cpu")
    if dtype is not None and dtype != torch.float32:
        vae = vae.to(dtype)
    return vae.eval()
