"""What model a checkpoint holds, from its key names (and two shapes): `identify_checkpoint`.

Every loader asks it when a file does not fit, so the error can say what the file is and where it belongs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# What `identify_checkpoint` returns.
LATENTSYNC_UNET = "latentsync_unet"
LATENTSYNC_UNET_V10 = "latentsync_unet_v1.0"
SD_UNET_DIFFUSERS = "sd_unet_diffusers"
SD_UNET_ORIGINAL = "sd_unet_original"
VAE = "vae"
WHISPER = "whisper"
SYNCNET = "syncnet"
SYNCNET_DDP = "syncnet_ddp"
WAV2LIP_SYNCNET = "wav2lip_syncnet"
SYNCNET_V2 = "syncnet_v2"
UNET_PART = "unet_part"
UNKNOWN = "unknown"

CHECKPOINT_KINDS = {
    LATENTSYNC_UNET: "a LatentSync UNet (1.5/1.6, latentsync_unet.pt); load it with the UNet loader",
    LATENTSYNC_UNET_V10: (
        "a LatentSync 1.0 UNet (audio cross-attention stored as `audio_cross_attn.*`). Convert it with "
        "`convert_v10_state_dict` and save it again, or use the LatentSync 1.5/1.6 checkpoint"
    ),
    SD_UNET_DIFFUSERS: (
        "a Stable Diffusion UNet in diffusers layout (text cross-attention). Stage-1 training starts from it "
        "with `init_unet_from_sd15`; it cannot be used for lip sync as it is"
    ),
    SD_UNET_ORIGINAL: (
        "a Stable Diffusion checkpoint in the original CompVis layout (`model.diffusion_model.*`). Convert its "
        "UNet to diffusers key names first"
    ),
    VAE: "a VAE (`encoder.*`, `decoder.*`, `quant_conv`); load it as the VAE instead",
    WHISPER: "a Whisper audio model (whisper/tiny.pt); load it as the audio encoder instead",
    SYNCNET: "a SyncNet (`audio_encoder.*`, `visual_encoder.*`); load it as the SyncNet instead",
    SYNCNET_DDP: (
        "a SyncNet saved from a DistributedDataParallel wrapper instead of its .module (keys start with "
        "'module.'); strip that prefix and save it again"
    ),
    WAV2LIP_SYNCNET: "a Wav2Lip-style SyncNet (conv_block layers), a different architecture",
    SYNCNET_V2: (
        "syncnet_v2.model, the SyncNet used for LSE-C/LSE-D scoring, not LatentSync's StableSyncNet "
        "(stable_syncnet.pt)"
    ),
    UNET_PART: "part of a UNet (some of its conv_in / time_embedding / down_blocks / up_blocks keys only)",
    UNKNOWN: "no model this library knows",
}

# Shapes that mark a text-to-image UNet: latent (4), pix2pix (8) or inpainting (9) input channels and CLIP
# text widths (SD-1.x 768, SD-2.x 1024, SDXL 2048). LatentSync has 13 input channels and 384 (Whisper tiny).
_SD_IN_CHANNELS = (4, 8, 9)
_SD_CROSS_ATTENTION_DIMS = (768, 1024, 2048)
_UNET_PREFIXES = ("conv_in.", "time_embedding.", "down_blocks.", "up_blocks.")


def block_indices(keys, prefix: str) -> list[int]:
    """Sorted distinct ``N`` of keys starting with ``{prefix}N.``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(match.group(1)) for key in keys if (match := pattern.match(key))})


def cross_attention_dim_of(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Width of what the UNet's cross-attention attends to (``attn2.to_k`` inputs), or None without one."""
    for key, tensor in state_dict.items():
        if key.endswith("attn2.to_k.weight"):
            return int(tensor.shape[1])
    return None


def identify_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What kind of model a state dict holds, from its key names (and two shapes).

    Returns:
        One of `LATENTSYNC_UNET` (any LatentSync 1.5/1.6 UNet, with or without motion modules),
        `LATENTSYNC_UNET_V10`, `SD_UNET_DIFFUSERS`, `SD_UNET_ORIGINAL`, `VAE`, `WHISPER`, `SYNCNET`, `SYNCNET_DDP`,
        `WAV2LIP_SYNCNET`, `SYNCNET_V2`, `UNET_PART`, `UNKNOWN`; ``CHECKPOINT_KINDS[kind]`` describes it in words.
    """
    keys = list(state_dict)

    def any_key(predicate) -> bool:
        return any(predicate(key) for key in keys)

    if any_key(lambda k: k.startswith("model.diffusion_model.")):
        return SD_UNET_ORIGINAL
    if any_key(lambda k: ".audio_cross_attn." in k):
        return LATENTSYNC_UNET_V10
    if any_key(lambda k: k.endswith("encoder.conv1.weight")) and any_key(
        lambda k: "positional_embedding" in k or "embed_positions" in k
    ):
        return WHISPER
    if any_key(lambda k: k.startswith("module.audio_encoder.")):
        return SYNCNET_DDP
    if any_key(lambda k: ".conv_block." in k):
        return WAV2LIP_SYNCNET
    if any_key(lambda k: k.startswith(("netcnnaud.", "netcnnlip."))):
        return SYNCNET_V2
    if any_key(lambda k: k.startswith("audio_encoder.")) and any_key(lambda k: k.startswith("visual_encoder.")):
        return SYNCNET
    if any_key(lambda k: k.startswith("quant_conv.")) and any_key(lambda k: k.startswith(("encoder.", "decoder."))):
        return VAE
    if (
        "conv_in.weight" in state_dict
        and "time_embedding.linear_1.weight" in state_dict
        and block_indices(keys, "down_blocks.")
    ):
        if any_key(lambda k: "motion_modules." in k):
            return LATENTSYNC_UNET
        in_channels = int(state_dict["conv_in.weight"].shape[1])
        if in_channels in _SD_IN_CHANNELS and cross_attention_dim_of(state_dict) in _SD_CROSS_ATTENTION_DIMS:
            return SD_UNET_DIFFUSERS
        return LATENTSYNC_UNET
    if any_key(lambda k: k.startswith(_UNET_PREFIXES)):
        return UNET_PART
    return UNKNOWN
