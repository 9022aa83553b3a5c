"""Reading model files safely: `.pt` pickles (weights only), `.safetensors`, and strict state-dict loading.

Nothing here knows one model's architecture. `read_checkpoint` returns a flat ``{name: tensor}`` dict plus
whatever metadata the container carried; `load_state_dict_strict` loads it into a module and raises a
`CheckpointError` naming the first offending keys when the two do not match exactly.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointError
from .files import atomic_write

# How many offending keys an error message lists before it says "... and N more".
_MAX_LISTED_KEYS = 8


@dataclass
class Checkpoint:
    """A checkpoint read from disk.

    Attributes:
        state_dict: flat mapping of parameter / buffer names to tensors (on CPU).
        path: the file it came from.
        format: ``"pt"`` or ``"safetensors"``.
        extra: the non-tensor entries of the container (``global_step``, ``dims``, safetensors metadata ...).
    """

    state_dict: dict[str, torch.Tensor]
    path: Path
    format: str
    extra: dict = field(default_factory=dict)


def _describe_size(path: Path) -> str:
    return f"{path.stat().st_size:,} bytes"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} ({_describe_size(path)}) is not a readable .safetensors file: {error}. "
            "The file may be truncated or not a safetensors file; download it again."
        ) from error
    return tensors, {"metadata": metadata}


def _read_pickle(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a page of advice that ends in "weights_only=False"; name only what was refused
        found = re.search(r"GLOBAL (\S+)", str(error))
        refused = f" (a reference to {found.group(1)})" if found else ""
        raise CheckpointError(
            f"Refused to load {path}: it holds Python objects besides tensors{refused}, and only plain-tensor "
            "checkpoints are loaded, because other pickles can run arbitrary code. Use the official checkpoint or "
            "convert the file to .safetensors."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, LookupError) as error:
        raise CheckpointError(
            f"{path} ({_describe_size(path)}) is not a readable PyTorch checkpoint: {error}. "
            "The file may be truncated, empty or of another kind; download it again."
        ) from error


def _is_tensor_dict(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def read_checkpoint(path: str | os.PathLike, *, container_keys: tuple[str, ...] = ("state_dict",)) -> Checkpoint:
    """Read a `.pt`/`.pth`/`.ckpt` (with ``weights_only=True``) or `.safetensors` file.

    Args:
        path: the file.
        container_keys: keys under which a pickle may nest its state dict, tried in order
            (``{"state_dict": ..., "global_step": ...}`` for LatentSync, ``model_state_dict`` for Whisper).
            A pickle that is itself a flat ``{name: tensor}`` dict is accepted as is.

    Returns:
        A `Checkpoint`; its ``extra`` holds the container's other entries.

    Raises:
        CheckpointError: missing, empty, truncated, unsafe or unrecognised files.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Model file not found: {path}. Check the path, or download the file first.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Model file is empty (0 bytes): {path}. The download probably failed; fetch it again.")

    if path.suffix == ".safetensors":
        tensors, extra = _read_safetensors(path)
        return Checkpoint(tensors, path, "safetensors", extra)

    loaded = _read_pickle(path)
    if _is_tensor_dict(loaded):
        return Checkpoint(dict(loaded), path, "pt", {})
    if isinstance(loaded, Mapping):
        for key in container_keys:
            if _is_tensor_dict(loaded.get(key)):
                extra = {k: v for k, v in loaded.items() if k != key}
                return Checkpoint(dict(loaded[key]), path, "pt", extra)
        found = ", ".join(repr(k) for k in list(loaded)[:_MAX_LISTED_KEYS])
        raise CheckpointError(
            f"{path} holds a dict with keys [{found}] but no tensor state dict under "
            f"{' or '.join(repr(k) for k in container_keys)}. It is not a model file this loader understands."
        )
    raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors.")


PT_SUFFIXES = (".pt", ".pth", ".ckpt")


def listed_keys(keys: list[str]) -> str:
    """The first few keys, comma-separated, with "... and N more" when there are more."""
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f" ... and {more} more" if more > 0 else "")


def describe_mismatches(missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> list[str]:
    """One sentence per non-empty list of `state_dict_mismatches`."""
    sentences = []
    if missing:
        sentences.append(f"Missing {len(missing)} keys: {listed_keys(missing)}.")
    if unexpected:
        sentences.append(f"Unexpected {len(unexpected)} keys: {listed_keys(unexpected)}.")
    if wrong_shape:
        sentences.append(f"Wrong shape for {len(wrong_shape)} keys: {listed_keys(wrong_shape)}.")
    return sentences


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    container: Mapping[str, object],
    metadata: Mapping[str, str],
    what: str,
) -> Path:
    """Write weights atomically (temporary name beside ``path``, then rename), as `.pt` or `.safetensors`.

    Args:
        state_dict: the weights (moved to CPU and made contiguous here).
        path: the target; its suffix picks the format.
        container: for `.pt`, the pickled dict's other entries; the weights go under ``"state_dict"``.
        metadata: for `.safetensors`, string metadata stored in the header.
        what: the model's name for the error message.
    """
    path = Path(path)
    if path.suffix not in (*PT_SUFFIXES, ".safetensors"):
        raise CheckpointError(f"Cannot save a {what} as {path.name}: use a .pt or .safetensors file name.")
    tensors = {key: tensor.detach().cpu().contiguous() for key, tensor in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temporary:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(temporary), metadata={"format": "pt", **metadata})
        else:
            torch.save({**container, "state_dict": tensors}, temporary)
    return path


def state_dict_mismatches(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Compare two state dicts by key and shape.

    Returns:
        ``(missing, unexpected, wrong_shape)``: keys only in ``expected``, keys only in ``given``, and
        ``"key: file (a, b) vs model (c, d)"`` lines for shared keys whose shapes differ.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, wrong_shape


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, hint: str = ""
) -> None:
    """Load ``state_dict`` into ``module``; every key and shape must match.

    Args:
        module: the model, possibly on the meta device (then tensors are assigned, not copied).
        state_dict: the weights.
        source: what the weights are called in the error (usually the file path).
        hint: a sentence about what the file looks like instead (see each model's identify function).

    Raises:
        CheckpointError: naming the first missing, unexpected and wrong-shape keys.
    """
    missing, unexpected, wrong_shape = state_dict_mismatches(module.state_dict(), state_dict)
    if missing or unexpected or wrong_shape:
        parts = [f"{source} does not fit {type(module).__name__}."]
        if hint:
            parts.append(hint)
        parts.extend(describe_mismatches(missing, unexpected, wrong_shape))
        raise CheckpointError(" ".join(parts))
    on_meta = any(t.is_meta for t in module.state_dict().values())
    module.load_state_dict(state_dict, strict=True, assign=on_meta)
