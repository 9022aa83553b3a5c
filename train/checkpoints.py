"""Checkpoints of a run: atomic folders, the newest N kept, resume, and the exported model files.

``<output_dir>/checkpoints/checkpoint-<step>/`` holds accelerate's state (optimizer, scheduler, RNG of every
process, the sampler, the `TrainingProgress`; with DeepSpeed its ZeRO checkpoint) and the trained model in its
official format (`ModelFiles`). A checkpoint is written under ``.tmp-checkpoint-<step>`` and renamed when every
process has finished, so a run killed at any moment (even with SIGKILL) leaves only complete checkpoints and loses
at most one save interval; leftover temporary folders are removed on the next start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch

from latentsync.errors import ConfigError
from latentsync.files import atomic_write

from .runtime import is_deepspeed

logger = logging.getLogger("train")

CHECKPOINT_PREFIX = "checkpoint-"
TEMPORARY_PREFIX = ".tmp-checkpoint-"
PROGRESS_FILE = "training_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass
class TrainingProgress:
    """Where the run is: optimizer steps done, epoch, and micro-batches of that epoch already consumed.

    Registered with ``accelerator.register_for_checkpointing`` so it is saved and restored with the state.
    """

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


class ModelFiles(Protocol):
    """How one training mode writes its model into a checkpoint folder and reads it back on resume."""

    def write(self, state_dict: dict[str, torch.Tensor], folder: Path, global_step: int) -> None: ...

    def read_into(self, model: torch.nn.Module, folder: Path) -> None: ...


def list_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as ``(step, folder)``, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for folder in checkpoints_dir.iterdir():
        match = _CHECKPOINT_NAME.match(folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def resolve_resume(resume: str, checkpoints_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from.

    Args:
        resume: ``""`` (new run), ``"latest"`` or a checkpoint folder.

    Raises:
        ConfigError: a new run whose folder already has checkpoints (never silently start over), or a resume with
            nothing to resume from.
    """
    existing = list_checkpoints(checkpoints_dir)
    if not resume:
        if existing:
            raise ConfigError(
                f"{checkpoints_dir} already has checkpoints (newest: step {existing[-1][0]}). Resume with --resume "
                "(ckpt.resume=latest) or choose another run.output_dir."
            )
        return None
    if resume == "latest":
        if not existing:
            raise ConfigError(
                f"Nothing to resume: {checkpoints_dir} has no complete checkpoint. Start a new run without --resume."
            )
        return existing[-1][1]
    folder = Path(resume)
    if not (folder / PROGRESS_FILE).is_file():
        raise ConfigError(f"{folder} is not a checkpoint folder of this trainer (no {PROGRESS_FILE}).")
    return folder


def remove_temporary(checkpoints_dir: Path) -> None:
    """Delete checkpoint folders a killed run left half-written."""
    if checkpoints_dir.is_dir():
        for folder in checkpoints_dir.glob(f"{TEMPORARY_PREFIX}*"):
            logger.info("Removing the incomplete checkpoint %s", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _fp32_state_from_deepspeed(folder: Path) -> dict[str, torch.Tensor]:
    """Full float32 weights from the ZeRO checkpoint accelerate wrote (master weights, not the 16-bit copy)."""
    from accelerate.utils.constants import MODEL_NAME
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=MODEL_NAME)


class CheckpointManager:
    """Saves and restores the state of one trained model with accelerate.

    Args:
        accelerator: the run's accelerator; ``model`` must have been prepared with it.
        model: the trained model (wrapped or not).
        model_files: how the model is written in the official format.
        progress: the run's `TrainingProgress`.
        checkpoints_dir: ``<output_dir>/checkpoints``.
        total_limit: keep the newest N checkpoints (0 = keep all).
    """

    def __init__(self, accelerator, model, model_files: ModelFiles, progress: TrainingProgress,
                 checkpoints_dir: Path, total_limit: int):
        self.accelerator = accelerator
        self.model = model
        self.model_files = model_files
        self.progress = progress
        self.checkpoints_dir = checkpoints_dir
        self.total_limit = total_limit
        accelerator.register_for_checkpointing(progress)
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

    def _save_hook(self, models: list, weights: list, folder: str) -> None:
        # Without DeepSpeed, write the official file instead of accelerate's copy of the same weights.
        if weights:
            if self.accelerator.is_main_process:
                state_dict = self.accelerator.unwrap_model(models[0]).state_dict()
                self.model_files.write(state_dict, Path(folder), self.progress.global_step)
            weights.pop()

    def _load_hook(self, models: list, folder: str) -> None:
        if models:
            self.model_files.read_into(self.accelerator.unwrap_model(models.pop()), Path(folder))

    def save(self) -> Path:
        """Write ``checkpoint-<global_step>`` atomically on every process and drop the oldest ones."""
        accelerator, step = self.accelerator, self.progress.global_step
        temporary = self.checkpoints_dir / f"{TEMPORARY_PREFIX}{step}"
        final = self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if is_deepspeed(accelerator):
                self.model_files.write(_fp32_state_from_deepspeed(temporary), temporary, step)
            (temporary / PROGRESS_FILE).write_text(json.dumps(self.progress.state_dict(), indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
            self._rotate()
            logger.info("Saved checkpoint %s", final)
        accelerator.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        if self.total_limit <= 0:
            return
        for _, folder in list_checkpoints(self.checkpoints_dir)[: -self.total_limit]:
            logger.info("Removing old checkpoint %s (keeping the newest %d)", folder, self.total_limit)
            shutil.rmtree(folder, ignore_errors=True)

    def load(self, folder: Path) -> None:
        """Restore model, optimizer, scheduler, RNG states, sampler and progress from ``folder``."""
        self.accelerator.load_state(str(folder))
        logger.info("Resumed from %s at step %d", folder, self.progress.global_step)


def copy_model_file(checkpoint: Path, name: str, export_dir: Path, convert: Optional[Callable[[Path, Path], None]] = None) -> Path:
    """Copy ``checkpoint/name`` to ``export_dir/name`` (through a temporary name); ``convert(source, export_dir)``
    may write further formats next to it."""
    export_dir.mkdir(parents=True, exist_ok=True)
    target = export_dir / name
    with atomic_write(target) as temporary:
        shutil.copyfile(checkpoint / name, temporary)
    if convert is not None:
        convert(target, export_dir)
    return target
