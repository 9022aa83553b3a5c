"""The training loop of every mode (UNet stages, LoRA, SyncNet): epochs that resume mid-way, gradient
accumulation, clipping, logging and the per-step work of the trainer (checkpoints, validation).

Logged losses are means: each term is averaged over the processes at every micro-batch and over all the
micro-batches of the logging interval (``run.log_every_steps`` optimizer steps), so a logged point does not depend
on which micro-batch happened to come last. Only the main process logs at INFO; the others log warnings and errors.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Mapping

import torch

from latentsync.errors import ConfigError

from .checkpoints import TrainingProgress
from .config import Config

logger = logging.getLogger("train")

# loss_terms(model, batch) -> {"loss": the scalar to minimise, other scalar terms to log ...}
LossTerms = Callable[[torch.nn.Module, dict], Mapping[str, torch.Tensor]]
# after_step(step, terms) -> extra numbers to log at that step (validation ...), called after each optimizer step
AfterStep = Callable[[int, Mapping[str, torch.Tensor]], Mapping[str, float]]


def quiet_other_ranks(accelerator) -> None:
    """Log INFO on the main process only."""
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)


def flat_config(config: Config) -> dict:
    """Scalars of the config for the tracker's hyper-parameter table (``section.key``)."""
    flat = {}
    for section, values in config.items():
        for key, value in values.items():
            if isinstance(value, (int, float, str, bool)):
                flat[f"{section}.{key}"] = value
    return flat


class IntervalMeans:
    """Sums of logged terms over the micro-batches of one logging interval."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def pop(self) -> dict[str, float]:
        """The means since the last `pop`, and a fresh start."""
        means = {name: total / self.count for name, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def train_loop(
    config: Config,
    accelerator,
    model: torch.nn.Module,
    optimizer,
    lr_scheduler,
    loader,
    dataset,
    progress: TrainingProgress,
    loss_terms: LossTerms,
    after_step: AfterStep,
) -> None:
    """Train until ``run.max_train_steps`` optimizer steps, starting from ``progress`` (a resumed run skips the
    micro-batches of the epoch it had already consumed).

    Raises:
        ConfigError: the data give no full batch.
        FloatingPointError: the loss is not finite.
    """
    from tqdm.auto import tqdm

    run = config["run"]
    max_steps = run["max_train_steps"]
    if len(loader) == 0:
        raise ConfigError(
            f"{len(dataset)} clips give no full batch of {config['data']['batch_size']} per process; "
            "lower data.batch_size or add clips."
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=max_steps, initial=progress.global_step, desc="steps", disable=not accelerator.is_local_main_process)
    means = IntervalMeans()
    while progress.global_step < max_steps:
        dataset.set_epoch(progress.epoch)
        loader.set_epoch(progress.epoch)
        batches = accelerator.skip_first_batches(loader, progress.batches_in_epoch) if progress.batches_in_epoch else loader
        model.train()
        for batch in batches:
            progress.batches_in_epoch += 1
            with accelerator.accumulate(model):
                terms = loss_terms(model, batch)
                accelerator.backward(terms["loss"])
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, config["optimizer"]["max_grad_norm"])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            reduced = {name: accelerator.reduce(value.detach().float(), reduction="mean").item() for name, value in terms.items() if value.ndim == 0}
            if not math.isfinite(reduced["loss"]):
                raise FloatingPointError(f"The loss is {reduced['loss']} at step {progress.global_step + 1}.")
            means.add(reduced)
            if not accelerator.sync_gradients:
                continue
            progress.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{reduced['loss']:.4f}")
            logs = dict(after_step(progress.global_step, terms))
            if progress.global_step % run["log_every_steps"] == 0 or progress.global_step in (1, max_steps):
                logs.update({f"train/{name}": value for name, value in means.pop().items()})
                logs["lr"] = lr_scheduler.get_last_lr()[0]
            if logs:
                accelerator.log(logs, step=progress.global_step)
            if progress.global_step >= max_steps:
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()
