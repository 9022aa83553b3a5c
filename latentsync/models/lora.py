"""LoRA adapters for the LatentSync UNet: the file format, merging into a loaded model with a strength, and undo.

A LoRA (written by ``python -m train lora``) is saved in **peft's adapter layout**, so peft reads it
(``PeftModel.from_pretrained(unet, folder)`` or ``set_peft_model_state_dict``): a folder with

* ``adapter_model.safetensors``: for each adapted ``nn.Linear`` ``NAME`` of the UNet,
  ``base_model.model.NAME.lora_A.weight`` ``(rank, in_features)`` and ``base_model.model.NAME.lora_B.weight``
  ``(out_features, rank)``; its metadata carries what the pack needs, so the file alone is enough for the pack:
  ``latentsync_lora`` (format version ``"2"``), ``rank``, ``alpha``, ``targets`` (JSON list of the adapted module
  names), ``preset`` (``audio``, ``motion`` or ``both``), ``base_checkpoint`` and ``base_checkpoint_sha256`` (the
  UNet it was trained on: a LoRA fits that UNet; on another one it may do nothing useful), ``global_step``;
* ``adapter_config.json``: peft's ``LoraConfig`` (``peft_type`` LORA, ``r``, ``lora_alpha``, ``target_modules``).

The update of a layer is ``W += strength * (alpha / rank) * B @ A``. `read_lora` takes the folder, its
``adapter_model.safetensors`` (the config beside it when there, else the metadata), or a version-1 file of earlier
versions of this pack (one ``.safetensors`` with ``NAME.lora_A.weight`` keys and the same metadata).

`apply_lora` patches the weights in place and returns a handle whose `AppliedLoRA.undo` restores the original
tensors bit for bit (they are kept on the CPU meanwhile).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from ..checkpoint import read_checkpoint
from ..errors import CheckpointError, ConfigError
from ..files import atomic_write

FORMAT_VERSION = "2"
FORMAT_VERSIONS = ("1", FORMAT_VERSION)
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
_DOWN, _UP = ".lora_A.weight", ".lora_B.weight"


@dataclass
class LoRA:
    """Low-rank updates of named linear layers.

    Attributes:
        layers: module name -> ``(down, up)``: ``lora_A`` ``(rank, in)`` and ``lora_B`` ``(out, rank)``.
        rank: ``r``.
        alpha: scaling numerator; the update is ``(alpha / rank) * up @ down``.
        metadata: the file's other metadata (strings).
    """

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    alpha: float
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, name: str) -> torch.Tensor:
        """The float32 weight update ``(alpha / rank) * up @ down`` of one layer, ``(out, in)``."""
        down, up = self.layers[name]
        return self.scale * (up.float() @ down.float())


def lora_state_dict(lora: LoRA) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_model.safetensors``: ``base_model.model.NAME.lora_A.weight`` / ``lora_B`` per layer."""
    tensors = {}
    for name, (down, up) in lora.layers.items():
        tensors[PEFT_PREFIX + name + _DOWN] = down.detach().cpu().contiguous()
        tensors[PEFT_PREFIX + name + _UP] = up.detach().cpu().contiguous()
    return tensors


def peft_config(lora: LoRA) -> dict:
    """peft's ``adapter_config.json`` of ``lora`` (a ``LoraConfig``; fields left out take peft's defaults)."""
    return {
        "peft_type": "LORA",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": sorted(lora.layers),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "task_type": None,
        "base_model_name_or_path": lora.metadata.get("base_checkpoint"),
    }


def save_lora(lora: LoRA, folder: str | os.PathLike) -> Path:
    """Write ``lora`` into ``folder`` (created) as ``adapter_model.safetensors`` + ``adapter_config.json``, each
    file atomically (temporary name, then rename). Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.suffix == ".safetensors":
        raise ConfigError(f"A LoRA is saved as a folder (peft's layout), not as {folder.name}; give a folder name.")
    metadata = {
        **lora.metadata,
        "format": "pt",
        "latentsync_lora": FORMAT_VERSION,
        "rank": str(lora.rank),
        "alpha": repr(float(lora.alpha)),
        "targets": json.dumps(sorted(lora.layers)),
    }
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / PEFT_WEIGHTS) as temporary:
        save_file(lora_state_dict(lora), str(temporary), metadata=metadata)
    with atomic_write(folder / PEFT_CONFIG) as temporary:
        temporary.write_text(json.dumps(peft_config(lora), indent=2) + "\n")
    return folder


def _rank_and_alpha(path: Path, metadata: Mapping[str, str]) -> tuple[int, float]:
    """From peft's ``adapter_config.json`` beside the weights, else from the pack's metadata."""
    config_path = path.with_name(PEFT_CONFIG)
    try:
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            return int(config["r"]), float(config["lora_alpha"])
        return int(metadata["rank"]), float(metadata["alpha"])
    except (KeyError, ValueError, TypeError) as error:
        source = config_path if config_path.is_file() else f"{path} metadata"
        raise CheckpointError(f"{source} lacks a valid LoRA rank / alpha ({error}).") from error


def read_lora(path: str | os.PathLike) -> LoRA:
    """Read a LoRA: a folder in peft's layout, its ``adapter_model.safetensors``, or a version-1 file.

    Raises:
        CheckpointError: not a readable LoRA, unpaired or mis-shaped tensors, or no rank / alpha.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PEFT_WEIGHTS
    checkpoint = read_checkpoint(path)
    metadata = dict(checkpoint.extra.get("metadata", {}))
    state_dict = checkpoint.state_dict
    peft_layout = all(key.startswith(PEFT_PREFIX) for key in state_dict)
    if metadata.get("latentsync_lora") not in FORMAT_VERSIONS and not (peft_layout and path.with_name(PEFT_CONFIG).is_file()):
        raise CheckpointError(
            f"{path} is not a LatentSync LoRA (no 'latentsync_lora' metadata, no peft {PEFT_CONFIG} beside it); it "
            "may be a full model or a LoRA for another network. Train one with `python -m train lora`."
        )
    rank, alpha = _rank_and_alpha(path, metadata)
    if peft_layout:
        state_dict = {key.removeprefix(PEFT_PREFIX): tensor for key, tensor in state_dict.items()}
    names = sorted({key[: -len(_DOWN)] for key in state_dict if key.endswith(_DOWN)})
    stray = [k for k in state_dict if not k.endswith((_DOWN, _UP)) or k.rsplit(".lora_", 1)[0] not in names]
    if stray or not names:
        raise CheckpointError(f"{path}: tensors {stray[:4] or 'none'} are not lora_A / lora_B pairs.")
    layers = {}
    for name in names:
        down, up = state_dict[name + _DOWN], state_dict.get(name + _UP)
        if up is None or down.ndim != 2 or up.ndim != 2 or down.shape[0] != rank or up.shape[1] != rank:
            raise CheckpointError(f"{path}: {name} has no rank-{rank} lora_A / lora_B pair.")
        layers[name] = (down, up)
    return LoRA(layers, rank, alpha, metadata)


def parse_lora_argument(text: str) -> tuple[str, float]:
    """``FILE[:STRENGTH]`` -> ``(FILE, STRENGTH)``; the strength defaults to 1 (a colon in the path stays there).

    Raises:
        ConfigError: a strength that is not a finite number.
    """
    path, _, strength = text.rpartition(":")
    if not path:
        return text, 1.0
    try:
        value = float(strength)
    except ValueError:
        return text, 1.0
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"LoRA strength must be a finite number, got {strength!r} in {text!r}.")
    return path, value


class AppliedLoRA:
    """A LoRA merged into a model; `undo` puts the original weights back exactly (once)."""

    def __init__(self, model: nn.Module, originals: dict[str, torch.Tensor], strength: float):
        self.model = model
        self.strength = strength
        self._originals: Optional[dict[str, torch.Tensor]] = originals

    @property
    def active(self) -> bool:
        return self._originals is not None

    def undo(self) -> None:
        if self._originals is None:
            return
        with torch.no_grad():
            for name, original in self._originals.items():
                weight = self.model.get_submodule(name).weight
                weight.copy_(original.to(device=weight.device))
        self._originals = None


def check_lora_fits(model: nn.Module, lora: LoRA) -> None:
    """Raise `CheckpointError` naming the layers of ``lora`` that ``model`` lacks, or has of another kind or shape."""
    problems = []
    for name, (down, up) in lora.layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: no such module")
            continue
        if not isinstance(module, nn.Linear):
            problems.append(f"{name}: a {type(module).__name__}, not a Linear layer")
        elif tuple(module.weight.shape) != (up.shape[0], down.shape[1]):
            problems.append(
                f"{name}: weight {tuple(module.weight.shape)} vs LoRA {(up.shape[0], down.shape[1])}"
            )
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(
            f"The LoRA does not fit this UNet ({len(problems)} of {len(lora.layers)} layers): {shown}. It was trained "
            f"on {lora.metadata.get('base_checkpoint', 'another UNet')}; use it with that architecture."
        )


def apply_lora(model: nn.Module, lora: LoRA, strength: float = 1.0) -> AppliedLoRA:
    """Merge ``lora`` into ``model``'s weights in place: ``W += strength * (alpha / rank) * B @ A``.

    Nothing is changed when any layer does not fit. The update is computed in float32 and added in the weight's
    dtype. Returns the handle to undo it.

    Raises:
        CheckpointError: a named module is missing, not linear, or of another shape.
    """
    check_lora_fits(model, lora)
    originals = {}
    with torch.no_grad():
        for name in lora.layers:
            weight = model.get_submodule(name).weight
            originals[name] = weight.detach().to("cpu", copy=True)
            delta = strength * lora.delta(name).to(weight.device)
            weight.copy_((weight.float() + delta).to(weight.dtype))
    return AppliedLoRA(model, originals, strength)


def load_lora_into(model: nn.Module, path: str | os.PathLike, strength: float = 1.0) -> AppliedLoRA:
    """`read_lora` then `apply_lora`."""
    return apply_lora(model, read_lora(path), strength)


def lora_from_peft_state(state_dict: Mapping[str, torch.Tensor], rank: int, alpha: float, metadata=None) -> LoRA:
    """Collect the ``...NAME.lora_A.<adapter>.weight`` / ``lora_B`` tensors of a peft-injected model into a `LoRA`
    whose names are those of the plain model."""
    layers: dict[str, list] = {}
    for key, tensor in state_dict.items():
        for marker, slot in ((".lora_A.", 0), (".lora_B.", 1)):
            if marker in key and key.endswith(".weight"):
                name = key.split(marker)[0].removeprefix("base_model.model.")
                layers.setdefault(name, [None, None])[slot] = tensor
    missing = [name for name, pair in layers.items() if pair[0] is None or pair[1] is None]
    if missing or not layers:
        raise CheckpointError(f"No complete lora_A / lora_B pairs in the state dict (incomplete: {missing[:4]}).")
    return LoRA({name: (pair[0], pair[1]) for name, pair in layers.items()}, rank, alpha, dict(metadata or {}))
