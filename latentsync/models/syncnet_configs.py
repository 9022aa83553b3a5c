"""Architectures of StableSyncNet: the official `configs/syncnet/*.yaml` files and a tiny test model.

Each entry mirrors the YAML layout: ``"model"`` is what `StableSyncNet.from_config` takes (one dict per
encoder: ``in_channels``, ``block_out_channels``, ``downsample_factors``, ``attn_blocks``, ``dropout``), and
``"data"`` holds the fields of the YAML ``data:`` section that decide what the model is fed:

* ``num_frames`` video frames per window, stacked on channels, so the visual ``in_channels`` is
  ``num_frames * 3`` in pixel space or ``num_frames * 4`` (SD VAE latents) when ``latent_space`` is true;
* ``resolution`` of the square face crops, of which only the rows ``resolution // 2 :`` are kept when
  ``lower_half`` is true;
* the mel window is ``ceil(num_frames / 5 * 16)`` mel frames long (80 mel bins, 16 kHz audio, 25 fps video).

Use `get_syncnet_config(name)`; it returns a deep copy you may edit.
"""

from __future__ import annotations

import copy

from ..errors import ConfigError

# The checkpoint LatentSync 1.5/1.6 ship (`checkpoints/stable_syncnet.pt`) and the one UNet training uses.
DEFAULT_SYNCNET_CONFIG = "syncnet_16_pixel_attn"

_PIXEL_16_DATA = {
    "num_frames": 16,
    "resolution": 256,
    "lower_half": True,
    "latent_space": False,
    "audio_sample_rate": 16000,
    "video_fps": 25,
}

SYNCNET_CONFIGS: dict[str, dict] = {
    # configs/syncnet/syncnet_16_pixel_attn.yaml: audio (1, 80, 52), visual (48, 128, 256).
    "syncnet_16_pixel_attn": {
        "model": {
            "audio_encoder": {
                "in_channels": 1,
                "block_out_channels": [32, 64, 128, 256, 512, 1024, 2048],
                "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
                "attn_blocks": [0, 0, 0, 1, 1, 0, 0],
                "dropout": 0.0,
            },
            "visual_encoder": {
                "in_channels": 48,
                "block_out_channels": [64, 128, 256, 256, 512, 1024, 2048, 2048],
                "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2],
                "attn_blocks": [0, 0, 0, 0, 1, 1, 0, 0],
                "dropout": 0.0,
            },
        },
        "data": dict(_PIXEL_16_DATA),
    },
    # configs/syncnet/syncnet_16_pixel.yaml: the same network without attention blocks.
    "syncnet_16_pixel": {
        "model": {
            "audio_encoder": {
                "in_channels": 1,
                "block_out_channels": [32, 64, 128, 256, 512, 1024, 2048],
                "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
                "attn_blocks": [0, 0, 0, 0, 0, 0, 0],
                "dropout": 0.0,
            },
            "visual_encoder": {
                "in_channels": 48,
                "block_out_channels": [64, 128, 256, 256, 512, 1024, 2048, 2048],
                "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2],
                "attn_blocks": [0, 0, 0, 0, 0, 0, 0, 0],
                "dropout": 0.0,
            },
        },
        "data": dict(_PIXEL_16_DATA),
    },
    # configs/syncnet/syncnet_25_pixel.yaml: audio (1, 80, 80), visual (75, 128, 256). The YAML has no
    # `attn_blocks` (the reference class then fails with a KeyError); no attention is what it describes.
    "syncnet_25_pixel": {
        "model": {
            "audio_encoder": {
                "in_channels": 1,
                "block_out_channels": [64, 128, 256, 256, 512, 1024],
                "downsample_factors": [2, 2, 2, 2, 2, 2],
                "attn_blocks": [0, 0, 0, 0, 0, 0],
                "dropout": 0.0,
            },
            "visual_encoder": {
                "in_channels": 75,
                "block_out_channels": [128, 128, 256, 256, 512, 512, 1024, 1024],
                "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2],
                "attn_blocks": [0, 0, 0, 0, 0, 0, 0, 0],
                "dropout": 0.0,
            },
        },
        "data": {**_PIXEL_16_DATA, "num_frames": 25},
    },
    # configs/syncnet/syncnet_16_latent.yaml: audio (1, 80, 52), visual (64, 32, 32) = 16 SD-VAE latents
    # (scaled by 0.18215) of whole 256x256 faces.
    "syncnet_16_latent": {
        "model": {
            "audio_encoder": {
                "in_channels": 1,
                "block_out_channels": [32, 64, 128, 256, 512, 1024],
                "downsample_factors": [[2, 1], 2, 2, 2, 2, [2, 3]],
                "attn_blocks": [0, 0, 0, 0, 0, 0],
                "dropout": 0.0,
            },
            "visual_encoder": {
                "in_channels": 64,
                "block_out_channels": [64, 128, 256, 256, 512, 1024],
                "downsample_factors": [2, 2, 2, 1, 2, 2],
                "attn_blocks": [0, 0, 0, 0, 0, 0],
                "dropout": 0.0,
            },
        },
        "data": {**_PIXEL_16_DATA, "lower_half": False, "latent_space": True},
    },
    # Test model (`fixtures/syncnet/config_tiny.json`): `syncnet_16_pixel_attn` with 32/64 channels.
    "syncnet_tiny": {
        "model": {
            "audio_encoder": {
                "in_channels": 1,
                "block_out_channels": [32, 32, 32, 32, 64, 64, 64],
                "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
                "attn_blocks": [0, 0, 0, 1, 1, 0, 0],
                "dropout": 0.0,
            },
            "visual_encoder": {
                "in_channels": 48,
                "block_out_channels": [32, 32, 32, 32, 64, 64, 64, 64],
                "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2],
                "attn_blocks": [0, 0, 0, 0, 1, 1, 0, 0],
                "dropout": 0.0,
            },
        },
        "data": dict(_PIXEL_16_DATA),
    },
    # A tiny SyncNet to train on the demo clips (`scripts/train_tiny_syncnet.py`, config tiny_syncnet_trained):
    # 5 frames of 64x64 faces (256x256 aligned faces, resized), lower half.
    "syncnet_tiny_trained": {
        "model": {
            "audio_encoder": {
                "in_channels": 1,
                "block_out_channels": [32, 32, 64, 64, 128],
                "downsample_factors": [[2, 1], 2, 2, 2, [5, 2]],
                "attn_blocks": [0, 0, 0, 0, 0],
                "dropout": 0.0,
            },
            "visual_encoder": {
                "in_channels": 15,
                "block_out_channels": [32, 32, 64, 64, 128],
                "downsample_factors": [[1, 2], 2, 2, 2, 4],
                "attn_blocks": [0, 0, 0, 0, 0],
                "dropout": 0.0,
            },
        },
        "data": {**_PIXEL_16_DATA, "num_frames": 5, "resolution": 64},
    },
}

# The configs of the official repository; config inference takes down-sampling factors from these.
OFFICIAL_SYNCNET_CONFIGS = ("syncnet_16_pixel_attn", "syncnet_16_pixel", "syncnet_25_pixel", "syncnet_16_latent")


def get_syncnet_config(name: str = DEFAULT_SYNCNET_CONFIG) -> dict:
    """A deep copy of ``SYNCNET_CONFIGS[name]`` (``{"model": ..., "data": ...}``).

    Raises:
        ConfigError: unknown name.
    """
    if name not in SYNCNET_CONFIGS:
        raise ConfigError(f"Unknown SyncNet config {name!r}; choose one of {', '.join(SYNCNET_CONFIGS)}.")
    return copy.deepcopy(SYNCNET_CONFIGS[name])
