"""LoRA adapters for the LatentSync UNet: the file format, merging into a loaded model with a strength, and undo.

A LoRA file (written by ``python -m train lora``) is a ``.safetensors`` file with, for each adapted ``nn.Linear``
``NAME`` of the UNet, ``NAME.lora_A.weight`` ``(rank, in_features)`` and ``NAME.lora_B.weight``
``(out_features, rank)`` (peft's names without the adapter name), and metadata:

* ``latentsync_lora``: format version (``"1"``);
* ``rank``, ``alpha``: the update of a layer is ``W += strength * (alpha / rank) * B @ A``;
* ``targets``: JSON list of the adapted module names; ``preset``: ``audio``, ``motion`` or ``both``;
* ``base_checkpoint``, ``base_checkpoint_sha256``: the UNet file it was trained on (a LoRA fits the UNet it was
  trained on; on another one it may do nothing useful);
* ``global_step``.

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
from ..errors import CheckpointError
from ..files import atomic_write

FORMAT_VERSION = "1"
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
    """The tensors of a LoRA file: ``NAME.lora_A.weight`` / ``NAME.lora_B.weight`` per layer."""
    tensors = {}
    for name, (down, up) in lora.layers.items():
        tensors[name + _DOWN] = down.detach().cpu().contiguous()
        tensors[name + _UP] = up.detach().cpu().contiguous()
    return tensors


def save_lora(lora: LoRA, path: str | os.PathLike) -> Path:
    """Write ``lora`` as ``.safetensors`` atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"Save LoRA files as .safetensors, not {path.name}.")
    metadata = {
        **lora.metadata,
        "format": "pt",
        "latentsync_lora": FORMAT_VERSION,
        "rank": str(lora.rank),
        "alpha": repr(float(lora.alpha)),
        "targets": json.dumps(sorted(lora.layers)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temporary:
        save_file(lora_state_dict(lora), str(temporary), metadata=metadata)
    return path


def read_lora(path: str | os.PathLike) -> LoRA:
    """Read a LoRA ``.safetensors`` file written by `save_lora`.

    Raises:
        CheckpointError: not a readable LoRA file, unpaired or mis-shaped tensors, or missing metadata.
    """
    checkpoint = read_checkpoint(path)
    metadata = dict(checkpoint.extra.get("metadata", {}))
    if metadata.get("latentsync_lora") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not a LatentSync LoRA file (no 'latentsync_lora' metadata); it may be a full model or a LoRA "
            "for another network. Train one with `python -m train lora`."
        )
    try:
        rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: LoRA metadata lacks a valid rank / alpha ({error}).") from error
    state_dict = checkpoint.state_dict
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


def _check_fits(model: nn.Module, lora: LoRA) -> None:
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
    _check_fits(model, lora)
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
