"""Architectures of the LatentSync UNet: the official `configs/unet/*.yaml` ``model:`` sections and a tiny test model.

Every config holds exactly the keys of the YAML ``model:`` section; they are the constructor arguments of
`UNet3DConditionModel`. The official files differ only in where the temporal (motion) modules go:

* ``stage1``: no motion modules (stage-1 training from SD-1.5, 849,962,244 parameters);
* ``stage2``: motion modules after every spatial layer of the encoder and decoder (LatentSync 1.5/1.6,
  1,267,944,644 state-dict elements);
* ``stage2_efficient``: motion modules in the decoder only.

``stage1_512`` and ``stage2_512`` have the same ``model:`` sections as ``stage1`` and ``stage2`` (only the
training resolution differs); the shipped inference script uses ``stage2_512``. ``tiny`` is the 3-million-element
model of the conformance fixtures (``unet_tiny/config.json``), used by tests and by ``make tiny-models``.

Use `get_unet_config(name)`; it returns a deep copy you may edit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from ..errors import ConfigError

# Keys of the YAML `model:` section, in file order. `UNet3DConditionModel` accepts exactly these.
UNET_CONFIG_KEYS = (
    "act_fn",
    "add_audio_layer",
    "attention_head_dim",
    "block_out_channels",
    "center_input_sample",
    "cross_attention_dim",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "downsample_padding",
    "flip_sin_to_cos",
    "freq_shift",
    "in_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "norm_eps",
    "norm_num_groups",
    "out_channels",
    "sample_size",
    "resnet_time_scale_shift",
    "use_motion_module",
    "motion_module_resolutions",
    "motion_module_mid_block",
    "motion_module_decoder_only",
    "motion_module_type",
    "motion_module_kwargs",
)

# Keys of `motion_module_kwargs` (the `Vanilla` temporal module).
MOTION_MODULE_KWARGS_KEYS = (
    "num_attention_heads",
    "num_transformer_block",
    "attention_block_types",
    "temporal_position_encoding",
    "temporal_position_encoding_max_len",
    "temporal_attention_dim_div",
    "zero_initialize",
)

_STAGE2 = {
    "act_fn": "silu",
    "add_audio_layer": True,
    # The number of attention heads of the spatial transformers (head size = channels / 8), not the head size.
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    # Whisper-tiny audio embeddings.
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    # 4 noisy latents + 1 mask + 4 masked-frame latents + 4 reference-frame latents.
    "in_channels": 13,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "resnet_time_scale_shift": "default",
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 24,
        "temporal_attention_dim_div": 1,
        "zero_initialize": True,
    },
}

STAGE1: dict = {**_STAGE2, "use_motion_module": False}
STAGE2: dict = _STAGE2
STAGE2_EFFICIENT: dict = {**_STAGE2, "motion_module_decoder_only": True}
# /shared/fixtures/unet_tiny/config.json
TINY: dict = {
    **_STAGE2,
    "block_out_channels": [32, 64, 64, 64],
    "cross_attention_dim": 24,
    "layers_per_block": 1,
    "sample_size": 16,
}

UNET_CONFIGS: dict[str, dict] = {
    "stage1": STAGE1,
    "stage1_512": STAGE1,
    "stage2": STAGE2,
    "stage2_512": STAGE2,
    "stage2_efficient": STAGE2_EFFICIENT,
    "tiny": TINY,
}


def get_unet_config(name: str) -> dict:
    """A deep copy of a named config (``stage1``, ``stage1_512``, ``stage2``, ``stage2_512``, ``stage2_efficient``,
    ``tiny``).

    Raises:
        ConfigError: unknown name.
    """
    if name not in UNET_CONFIGS:
        raise ConfigError(f"Unknown UNet config {name!r}; choose one of {', '.join(UNET_CONFIGS)}.")
    return copy.deepcopy(UNET_CONFIGS[name])


def check_unet_config_keys(config: Mapping) -> None:
    """Refuse keys that are not in the YAML ``model:`` section (or in ``motion_module_kwargs``).

    Keys starting with ``_`` (diffusers' ``_class_name``, ``_diffusers_version``) are ignored.

    Raises:
        ConfigError: naming the unknown keys.
    """
    unknown = [key for key in config if key not in UNET_CONFIG_KEYS and not key.startswith("_")]
    if unknown:
        raise ConfigError(
            f"Unknown UNet config keys {unknown}. A UNet config holds the keys of the `model:` section of "
            f"configs/unet/*.yaml: {', '.join(UNET_CONFIG_KEYS)}."
        )
    unknown = [key for key in config.get("motion_module_kwargs") or {} if key not in MOTION_MODULE_KWARGS_KEYS]
    if unknown:
        raise ConfigError(
            f"Unknown motion_module_kwargs keys {unknown}; expected some of {', '.join(MOTION_MODULE_KWARGS_KEYS)}."
        )
