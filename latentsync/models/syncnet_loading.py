"""StableSyncNet checkpoints: load the official ``stable_syncnet.pt`` (and the files `save_syncnet` writes)
strictly, infer a checkpoint's architecture from its weights, and say what a foreign file is.

The model itself is in `latentsync.models.syncnet`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

from ..checkpoint import Checkpoint, load_state_dict_strict, read_checkpoint, save_checkpoint
from ..errors import CheckpointError, ConfigError
from .identify import CHECKPOINT_KINDS, SYNCNET, UNKNOWN, identify_checkpoint
from .syncnet import ENCODER_NAMES, StableSyncNet
from .syncnet_configs import OFFICIAL_SYNCNET_CONFIGS, SYNCNET_CONFIGS, get_syncnet_config

# Entries of the official training container besides `state_dict` and `global_step`.
HISTORY_KEYS = ("train_step_list", "train_loss_list", "val_step_list", "val_loss_list")
_METADATA_CONFIG_KEY = "syncnet_config"


def describe_foreign_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A sentence saying what a state dict that is not a StableSyncNet looks like, or ``""`` if it may be one."""
    kind = identify_checkpoint(state_dict)
    if kind not in (SYNCNET, UNKNOWN):
        return f"It looks like {CHECKPOINT_KINDS[kind]}."
    for name in ENCODER_NAMES:
        if f"{name}.conv_in.weight" not in state_dict:
            keys = list(state_dict)
            return f"It has no {name}.conv_in.weight (first keys: {', '.join(keys[:4]) or 'none'})."
    return ""


def _encoder_layout(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """Channels, attention and which blocks down-sample, read from one encoder's weight names and shapes."""
    block_prefix = f"{prefix}down_blocks."
    indices = sorted({int(k[len(block_prefix) :].split(".", 1)[0]) for k in state_dict if k.startswith(block_prefix)})
    if indices != list(range(len(indices))) or not indices:
        raise CheckpointError(f"The {prefix}down_blocks.* entries are not numbered 0..n-1 (found {indices}).")

    block_out_channels, attn_blocks, downsamples = [], [], []
    for index in indices:
        block = f"{block_prefix}{index}."
        if f"{block}conv1.weight" in state_dict:
            block_out_channels.append(int(state_dict[f"{block}conv1.weight"].shape[0]))
            attn_blocks.append(0)
            downsamples.append(f"{block}downsample_conv.weight" in state_dict)
        elif f"{block}attn.to_q.weight" in state_dict and attn_blocks and not attn_blocks[-1]:
            attn_blocks[-1] = 1
        else:
            raise CheckpointError(f"{block}* is neither a ResNet block (conv1) nor an attention block after one.")
    return {
        "in_channels": int(state_dict[f"{prefix}conv_in.weight"].shape[1]),
        "block_out_channels": block_out_channels,
        "attn_blocks": attn_blocks,
        "downsamples": downsamples,
    }


def _downsample_factors(layout: dict, encoder_name: str) -> list:
    """Strides are not stored in the weights: take them from the official encoders that down-sample in the same
    blocks, preferring the same channels, then the same input channels; when no official encoder does, from the
    pack's own configs (`SYNCNET_CONFIGS`, e.g. the tiny SyncNet trained for the tests)."""
    pack_configs = [name for name in SYNCNET_CONFIGS if name not in OFFICIAL_SYNCNET_CONFIGS]
    blocks = [i for i, downsamples in enumerate(layout["downsamples"]) if downsamples]
    for config_names in (OFFICIAL_SYNCNET_CONFIGS, pack_configs):
        encoders = [SYNCNET_CONFIGS[name]["model"][encoder_name] for name in config_names]
        same_pattern = [e for e in encoders if [f != 1 for f in e["downsample_factors"]] == layout["downsamples"]]
        if not same_pattern:
            continue
        tiers = (
            [e for e in same_pattern if e["block_out_channels"] == layout["block_out_channels"]],
            [e for e in same_pattern if e["in_channels"] == layout["in_channels"]],
            same_pattern,
        )
        choices = next({json.dumps(e["downsample_factors"]) for e in tier} for tier in tiers if tier)
        if len(choices) == 1:
            return json.loads(choices.pop())
        raise ConfigError(
            f"Cannot infer the {encoder_name} downsample_factors: strides are not stored in the weights and SyncNet "
            f"configs with {len(blocks)} blocks down-sampling at {blocks} differ in them. Pass config= (the YAML it "
            "was trained with)."
        )
    raise ConfigError(
        f"Cannot infer the {encoder_name} downsample_factors: strides are not stored in the weights and no known "
        f"SyncNet config has {len(layout['downsamples'])} blocks down-sampling at {blocks}. Pass config= (the YAML "
        "it was trained with)."
    )


def infer_syncnet_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The ``model`` section (YAML form) of the StableSyncNet that produced ``state_dict``.

    Channels and attention blocks come from the weights; down-sampling factors, which weights do not hold,
    from the official config whose encoder down-samples in the same blocks (see `_downsample_factors`);
    dropout is 0 as in every official config.

    Raises:
        CheckpointError: the state dict is not a StableSyncNet (with what it looks like instead).
        ConfigError: the down-sampling factors are ambiguous or unknown.
    """
    if hint := describe_foreign_state_dict(state_dict):
        raise CheckpointError(f"Not a StableSyncNet state dict. {hint}")
    config = {}
    for name in ENCODER_NAMES:
        layout = _encoder_layout(state_dict, f"{name}.")
        config[name] = {
            "in_channels": layout["in_channels"],
            "block_out_channels": layout["block_out_channels"],
            "downsample_factors": _downsample_factors(layout, name),
            "attn_blocks": layout["attn_blocks"],
            "dropout": 0.0,
        }
    return config


def _config_from_metadata(checkpoint: Checkpoint) -> dict | None:
    stored = checkpoint.extra.get("metadata", {}).get(_METADATA_CONFIG_KEY)
    if stored is None:
        return None
    try:
        return json.loads(stored)
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{checkpoint.path} has an unreadable '{_METADATA_CONFIG_KEY}' metadata entry: {error}."
        ) from error


def _with_known_data(model_section: dict) -> dict:
    """The named config (`SYNCNET_CONFIGS`, with its ``data`` section: frames, face resolution) whose ``model``
    section this is; else the section alone."""
    for name, known in SYNCNET_CONFIGS.items():
        if known["model"] == model_section:
            return get_syncnet_config(name)
    return model_section


def load_syncnet(
    path: str | os.PathLike,
    config: Mapping | str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> StableSyncNet:
    """Load a StableSyncNet checkpoint strictly, in eval mode.

    Args:
        path: the official ``stable_syncnet.pt`` (``{"state_dict", "global_step", ...}``), a flat state-dict
            ``.pt`` or a ``.safetensors`` file (as written by `save_syncnet`).
        config: a `SYNCNET_CONFIGS` name, a YAML dict or its ``model`` section. ``None``: the config stored in
            the safetensors metadata, else `infer_syncnet_config` from the weights (with the ``data`` section of the
            named config it is, if any).
        device: where to put the model (default CPU).
        dtype: parameter dtype (default float32).

    Raises:
        CheckpointError: unreadable file, another kind of model, or keys/shapes that do not fit the config.
        ConfigError: an invalid config, or one that cannot be inferred.
    """
    checkpoint = read_checkpoint(path, container_keys=("state_dict",))
    if config is None:
        config = _config_from_metadata(checkpoint) or _with_known_data(infer_syncnet_config(checkpoint.state_dict))
    with torch.device("meta"):
        model = StableSyncNet.from_config(config)
    hint = describe_foreign_state_dict(checkpoint.state_dict)
    load_state_dict_strict(model, checkpoint.state_dict, source=str(checkpoint.path), hint=hint)
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def save_syncnet(
    model: StableSyncNet,
    path: str | os.PathLike,
    global_step: int = 0,
    *,
    history: Mapping[str, list] | None = None,
) -> Path:
    """Write ``model``'s weights atomically (temporary file, then rename).

    ``.pt``/``.pth``/``.ckpt``: the official training container ``{"state_dict", "global_step",
    "train_step_list", "train_loss_list", "val_step_list", "val_loss_list"}``, so the official scripts can
    load and resume from it; ``history`` fills the four lists (empty by default). ``.safetensors``: the
    weights, with the config and ``global_step`` in the metadata.

    Returns:
        The path written.
    """
    if not isinstance(model, StableSyncNet):
        raise CheckpointError(
            f"save_syncnet expects a StableSyncNet, got {type(model).__name__}; unwrap DistributedDataParallel "
            "(.module) or torch.compile (._orig_mod) first so the keys match the official checkpoint."
        )
    history = dict(history or {})
    if unknown := set(history) - set(HISTORY_KEYS):
        raise ConfigError(f"save_syncnet history keys must be among {list(HISTORY_KEYS)}, got {sorted(unknown)}.")
    container = {"global_step": int(global_step), **{key: list(history.get(key, [])) for key in HISTORY_KEYS}}
    return save_checkpoint(
        model.state_dict(),
        path,
        container=container,
        metadata={_METADATA_CONFIG_KEY: json.dumps(model.config), "global_step": str(int(global_step))},
        what="SyncNet",
    )
