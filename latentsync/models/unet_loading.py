"""Loading, recognising and saving LatentSync UNet checkpoints, and starting stage-1 training from SD-1.5.

* `load_unet` reads an official checkpoint (``{"state_dict", "global_step"}`` ``.pt``), a bare state dict or a
  ``.safetensors`` file, builds the model on the meta device and loads it **strictly**: every key and shape must
  match, otherwise a `CheckpointError` names the offending keys and says what the file looks like.
* `latentsync.models.identify.identify_checkpoint` tells a LatentSync UNet from the files people mix it up with
  (LatentSync 1.0, SD-1.5 UNets, VAEs, Whisper, SyncNet); `infer_unet_config` reads the architecture from keys
  and shapes.
* `init_unet_from_sd15` is the one place where weights may be dropped: it applies the reference's rule for
  starting from an SD-1.5 UNet (see the fixture README, section 1) and reports what it dropped and kept.
* `save_unet` writes the official ``.pt`` container or ``.safetensors`` with the config in its metadata.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import (
    Checkpoint,
    describe_mismatches,
    listed_keys,
    load_state_dict_strict,
    read_checkpoint,
    save_checkpoint,
    state_dict_mismatches,
)
from ..errors import CheckpointError
from .identify import (
    CHECKPOINT_KINDS,
    LATENTSYNC_UNET,
    SD_UNET_DIFFUSERS,
    block_indices,
    cross_attention_dim_of,
    identify_checkpoint,
)
from .unet import UNet3DConditionModel
from .unet_configs import STAGE2, UNET_CONFIG_KEYS, UNET_CONFIGS, get_unet_config

# `init_unet_from_sd15` may leave these model keys at their construction values (besides the dropped ones):
# SD-1.5 has no temporal layers.
_SD15_ABSENT_MODULES = ("motion_modules.",)
# The only weights the reference drops when a checkpoint does not fit: the input / output convolutions and the
# cross-attention key/value projections (text width vs audio width).
_CROSS_ATTENTION_KV = re.compile(r"attn2\.to_[kv]\.")
_CONFIG_METADATA_KEY = "latentsync_unet_config"

UnetConfig = str | Mapping


# ----------------------------------------------------------------------------------------------------------
# Recognising a file


def infer_unet_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The UNet config (YAML ``model:`` keys) that builds exactly the keys and shapes of ``state_dict``.

    Read from the file: ``in_channels``, ``out_channels``, ``block_out_channels``, ``layers_per_block``, block
    types, ``cross_attention_dim`` / ``add_audio_layer``, where the motion modules are
    (``use_motion_module``, ``motion_module_resolutions``, ``motion_module_decoder_only``,
    ``motion_module_mid_block``) and their ``num_transformer_block``, number of attentions, position table length
    and ``temporal_attention_dim_div``.

    Assumed, because shapes do not show them: 8 attention heads everywhere (``attention_head_dim: 8`` and
    ``num_attention_heads: 8``, as in every official config), ``norm_num_groups`` 32, ``norm_eps`` 1e-5 and the
    official values of the remaining keys (``sample_size`` 64, which has no effect). A ``.safetensors`` file
    written by `save_unet` carries its exact config, which `load_unet` prefers.

    Raises:
        CheckpointError: the state dict is not a diffusers-layout UNet, or its motion modules sit in a pattern no
            config produces.
    """
    kind = identify_checkpoint(state_dict)
    if kind not in (LATENTSYNC_UNET, SD_UNET_DIFFUSERS):
        raise CheckpointError(
            f"Cannot read a UNet config from this state dict: it looks like {CHECKPOINT_KINDS[kind]}."
        )
    keys = list(state_dict)
    shape = {key: tuple(tensor.shape) for key, tensor in state_dict.items()}
    down_indices = block_indices(keys, "down_blocks.")
    num_blocks = len(down_indices)

    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    config = get_unet_config("stage2")
    cross_attention_dim = cross_attention_dim_of(state_dict)
    config.update(
        in_channels=shape["conv_in.weight"][1],
        out_channels=shape["conv_out.weight"][0],
        block_out_channels=[shape[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(num_blocks)],
        layers_per_block=len(block_indices(keys, "down_blocks.0.resnets.")),
        down_block_types=[
            "CrossAttnDownBlock3D" if has(f"down_blocks.{i}.attentions.") else "DownBlock3D" for i in range(num_blocks)
        ],
        up_block_types=[
            "CrossAttnUpBlock3D" if has(f"up_blocks.{i}.attentions.") else "UpBlock3D" for i in range(num_blocks)
        ],
        add_audio_layer=cross_attention_dim is not None,
        cross_attention_dim=cross_attention_dim or STAGE2["cross_attention_dim"],
    )

    # Down block i and up block n - 1 - i work at resolution 2**i.
    down_resolutions = {2**i for i in range(num_blocks) if has(f"down_blocks.{i}.motion_modules.")}
    up_resolutions = {2 ** (num_blocks - 1 - i) for i in range(num_blocks) if has(f"up_blocks.{i}.motion_modules.")}
    mid_block = has("mid_block.motion_modules.")
    if not (down_resolutions or up_resolutions or mid_block):
        config["use_motion_module"] = False
        return config
    if down_resolutions and down_resolutions != up_resolutions:
        raise CheckpointError(
            f"The motion modules sit at encoder resolutions {sorted(down_resolutions)} but decoder resolutions "
            f"{sorted(up_resolutions)}; no UNet config builds that."
        )
    motion_prefix = next(key for key in keys if "motion_modules." in key).split("temporal_transformer.")[0]
    block_prefix = f"{motion_prefix}temporal_transformer.transformer_blocks.0."
    table = shape.get(f"{block_prefix}attention_blocks.0.pos_encoder.pe")  # (1, max_len, c) or None
    default_max_len = STAGE2["motion_module_kwargs"]["temporal_position_encoding_max_len"]
    inner_dim, channels = shape[f"{motion_prefix}temporal_transformer.proj_in.weight"]
    config.update(
        use_motion_module=True,
        motion_module_resolutions=sorted(up_resolutions),
        motion_module_mid_block=mid_block,
        motion_module_decoder_only=not down_resolutions and bool(up_resolutions),
    )
    config["motion_module_kwargs"].update(
        num_transformer_block=len(block_indices(keys, f"{motion_prefix}temporal_transformer.transformer_blocks.")),
        attention_block_types=["Temporal_Self"] * len(block_indices(keys, f"{block_prefix}attention_blocks.")),
        temporal_position_encoding=table is not None,
        temporal_position_encoding_max_len=table[1] if table else default_max_len,
        temporal_attention_dim_div=channels // inner_dim,
    )
    return config


def describe_unet_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """One or two sentences on what a state dict looks like, for error messages. Never raises."""
    kind = identify_checkpoint(state_dict)
    if kind != LATENTSYNC_UNET:
        return f"The file looks like {CHECKPOINT_KINDS[kind]}; its keys start with {listed_keys(list(state_dict))}."
    try:
        config = infer_unet_config(state_dict)
    except CheckpointError as error:
        return f"The file looks like a LatentSync UNet of unusual layout: {error}"
    if not config["use_motion_module"]:
        motion = "no motion modules (stage-1 layout)"
    elif config["motion_module_decoder_only"]:
        motion = f"motion modules in the decoder only at resolutions {config['motion_module_resolutions']}"
    else:
        motion = f"motion modules in encoder and decoder at resolutions {config['motion_module_resolutions']}"
    named = [name for name, known in UNET_CONFIGS.items() if _same_architecture(config, known)]
    return (
        f"The file looks like a LatentSync UNet with block_out_channels {config['block_out_channels']}, "
        f"layers_per_block {config['layers_per_block']}, in_channels {config['in_channels']}, cross_attention_dim "
        f"{config['cross_attention_dim']} and {motion}"
        + (f", i.e. the {' / '.join(named)} config" if named else "")
        + "."
    )


def _same_architecture(first: Mapping, second: Mapping) -> bool:
    """Equal configs up to ``sample_size``, which changes nothing in the model."""
    return all(first.get(key) == second.get(key) for key in UNET_CONFIG_KEYS if key != "sample_size")


# ----------------------------------------------------------------------------------------------------------
# Loading and saving


def _resolve_config(config: UnetConfig, checkpoint: Checkpoint | None = None) -> dict:
    """A config dict from a dict, a name of `UNET_CONFIGS`, or ``"auto"`` (the file's saved config, else inferred)."""
    if isinstance(config, Mapping):
        return dict(config)
    if config == "auto" and checkpoint is not None:
        saved = checkpoint.extra.get("metadata", {}).get(_CONFIG_METADATA_KEY)
        return json.loads(saved) if saved else infer_unet_config(checkpoint.state_dict)
    return get_unet_config(config)


def _global_step(checkpoint: Checkpoint) -> int:
    step = checkpoint.extra.get("global_step", checkpoint.extra.get("metadata", {}).get("global_step", 0))
    return int(step)


def load_unet(
    path: str | os.PathLike,
    config: UnetConfig = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> UNet3DConditionModel:
    """Load a LatentSync UNet checkpoint strictly, in eval mode.

    Args:
        path: official ``{"state_dict", "global_step"}`` ``.pt``, a bare state dict ``.pt``, or ``.safetensors``.
        config: ``"auto"`` (the config saved in a `save_unet` ``.safetensors``, else `infer_unet_config`), a name
            of `UNET_CONFIGS` (``"stage2_512"`` for the released LatentSync 1.5/1.6 checkpoint) or a config dict.
        device: where to put the model (default CPU).
        dtype: parameter dtype; None keeps the checkpoint's (that of ``conv_in.weight``).

    Returns:
        The model; ``unet.global_step`` holds the container's ``global_step`` (0 when the file has none).

    Raises:
        CheckpointError: unreadable or unsafe file, a file of another kind, or keys/shapes that do not match the
            config exactly (the message names the first offenders and what the file looks like).
        ConfigError: an unknown config name or key.
    """
    checkpoint = read_checkpoint(path, container_keys=("state_dict", "model_state_dict"))
    state_dict = checkpoint.state_dict
    kind = identify_checkpoint(state_dict)
    # A UNet of SD-like shapes still gets the strict key-by-key comparison when a config is given.
    if kind != LATENTSYNC_UNET and (config == "auto" or kind != SD_UNET_DIFFUSERS):
        raise CheckpointError(
            f"{path} is not a LatentSync 1.5/1.6 UNet checkpoint. {describe_unet_checkpoint(state_dict)}"
        )

    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config(_resolve_config(config, checkpoint))
    dtype = dtype or state_dict["conv_in.weight"].dtype
    # Cast while loading (the model is on the meta device, so the tensors are taken over as they are).
    tensors = {key: tensor.to(device=device, dtype=dtype) for key, tensor in state_dict.items()}
    load_state_dict_strict(unet, tensors, source=str(path), hint=describe_unet_checkpoint(state_dict))
    unet.global_step = _global_step(checkpoint)
    return unet.eval()


def _config_of(unet: UNet3DConditionModel) -> dict:
    return {key: unet.config[key] for key in UNET_CONFIG_KEYS}


def save_unet(unet: UNet3DConditionModel, path: str | os.PathLike, global_step: int = 0) -> Path:
    """Write ``unet`` atomically (temporary name, then rename).

    ``.pt`` / ``.pth`` / ``.ckpt``: the official training container ``{"global_step", "state_dict"}``, which the
    reference scripts load. ``.safetensors``: the state dict, with metadata ``latentsync_unet_config`` (the config
    as JSON, used by ``load_unet(config="auto")``) and ``global_step``.

    Returns:
        The path written.
    """
    return save_checkpoint(
        unet.state_dict(),
        path,
        container={"global_step": int(global_step)},
        metadata={_CONFIG_METADATA_KEY: json.dumps(_config_of(unet)), "global_step": str(int(global_step))},
        what="UNet",
    )


# ----------------------------------------------------------------------------------------------------------
# Other layouts


def convert_v10_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LatentSync 1.0 key names -> current ones (a pure renaming; the arithmetic is the same).

    1.0 kept the audio cross-attention of each transformer block in a sub-module ``audio_cross_attn`` with its
    own ``norm`` and ``attn``; 1.5 names them ``norm2`` and ``attn2`` like SD-1.5. 1.0 has no motion modules, so
    the result loads with a ``stage1`` config.
    """
    return {
        key.replace(".audio_cross_attn.norm.", ".norm2.").replace(".audio_cross_attn.attn.", ".attn2."): tensor
        for key, tensor in state_dict.items()
    }


@dataclass
class SD15InitReport:
    """What `init_unet_from_sd15` did.

    Attributes:
        dropped: keys of the SD file removed because their shape cannot fit (``conv_in``, ``conv_out``,
            ``attn2.to_k`` / ``attn2.to_v``).
        loaded: keys copied from the SD file.
        left_at_init: model keys keeping their construction values (dropped ones, motion modules).
    """

    dropped: list[str]
    loaded: list[str]
    left_at_init: list[str]


def _keys_that_cannot_fit(state_dict: Mapping[str, torch.Tensor], unet: UNet3DConditionModel) -> list[str]:
    """The reference's rule: drop conv_in / conv_out when channel counts differ, and cross-attention key/value
    projections whose input width differs from ``cross_attention_dim``."""
    config = unet.config
    dropped = []
    if "conv_in.weight" in state_dict and state_dict["conv_in.weight"].shape[1] != config.in_channels:
        dropped += ["conv_in.weight", "conv_in.bias"]
    if "conv_out.weight" in state_dict and state_dict["conv_out.weight"].shape[0] != config.out_channels:
        dropped += ["conv_out.weight", "conv_out.bias"]
    dropped += [
        key
        for key, tensor in state_dict.items()
        if _CROSS_ATTENTION_KV.search(key) and tensor.shape[1] != config.cross_attention_dim
    ]
    return [key for key in dropped if key in state_dict]


def plan_sd15_init(
    state_dict: Mapping[str, torch.Tensor], unet: UNet3DConditionModel, source: str = "the SD-1.5 state dict"
) -> SD15InitReport:
    """Decide which SD-1.5 weights go into ``unet`` (works on meta tensors; nothing is copied).

    ``conv_in.*`` and ``conv_out.*`` are dropped when their channel counts differ from the model, and every
    ``attn2.to_k`` / ``attn2.to_v`` whose input width differs from ``cross_attention_dim`` (text 768 vs audio
    384). Everything else must fit.

    Raises:
        CheckpointError: any other shape conflict, a key the model lacks, or a model key the file lacks outside
            the motion modules.
    """
    dropped = _keys_that_cannot_fit(state_dict, unet)
    kept = [key for key in state_dict if key not in dropped]
    missing, unexpected, wrong_shape = state_dict_mismatches(unet.state_dict(), {key: state_dict[key] for key in kept})
    absent = [key for key in missing if key not in dropped and not any(m in key for m in _SD15_ABSENT_MODULES)]
    if unexpected or wrong_shape or absent:
        problems = [f"{source} does not fit the UNet config beyond the weights SD-1.5 initialisation may drop."]
        problems.extend(describe_mismatches(absent, unexpected, wrong_shape))
        problems.append(describe_unet_checkpoint(state_dict))
        raise CheckpointError(" ".join(problems))
    return SD15InitReport(dropped=dropped, loaded=kept, left_at_init=missing)


def init_unet_from_sd15(
    sd15: str | os.PathLike | Mapping[str, torch.Tensor], config: UnetConfig
) -> tuple[UNet3DConditionModel, SD15InitReport]:
    """Build a fresh UNet and copy in the weights of an SD-1.5 UNet (diffusers key names), for stage-1 training.

    A fresh model has ``conv_in`` / ``conv_out`` at zero, motion-module output projections at zero (so each starts
    as an identity) and PyTorch's default init elsewhere, as the reference. Which SD weights are dropped and what
    must fit is decided by `plan_sd15_init`. (The same works for any diffusers-layout UNet, e.g. a stage-1
    LatentSync checkpoint into a stage-2 config.)

    Args:
        sd15: a file (``.safetensors``, a state-dict ``.pt``/``.bin`` or ``{"state_dict": ...}``) or a state dict.
        config: a name of `UNET_CONFIGS` or a config dict.

    Returns:
        ``(unet, report)``; the model is on CPU in float32 and in training mode.

    Raises:
        CheckpointError: unreadable file, a file of another kind, or weights that do not fit (see `plan_sd15_init`).
    """
    if isinstance(sd15, Mapping):
        source, state_dict = "the SD-1.5 state dict", dict(sd15)
    else:
        source, state_dict = str(sd15), read_checkpoint(sd15).state_dict
    kind = identify_checkpoint(state_dict)
    if kind not in (SD_UNET_DIFFUSERS, LATENTSYNC_UNET):
        raise CheckpointError(
            f"{source} is not an SD-1.5 UNet in diffusers layout. {describe_unet_checkpoint(state_dict)}"
        )

    unet = UNet3DConditionModel.from_config(_resolve_config(config))
    report = plan_sd15_init(state_dict, unet, source)
    unet.load_state_dict({key: state_dict[key] for key in report.loaded}, strict=False)
    return unet, report
