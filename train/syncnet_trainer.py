"""StableSyncNet training with the reference recipe (`scripts/train_syncnet.py`, `syncnet_16_pixel_attn.yaml`), or
with the offsets loss.

``losses.syncnet_loss: bce`` (the reference): a batch holds windows of ``f`` faces (``(b, f, 3, R, R)`` in
``[-1, 1]``) with the mel of the true window start and a label: 1 when the frames are that window, 0 when they are
another window of the same clip. Frames are stacked on channels (``b (f c) h w``), cut to the lower half, embedded
together with the mel, and the loss is ``BCE(cos(v, a), y)``. Validation logs the mean loss and the accuracy
(similarity > 0.5 means "in sync").

``losses.syncnet_loss: offsets``: a batch holds ``k`` windows of each of ``b`` clips (``(b, k, f, 3, R, R)``) with
their mels, and the loss is `offset_contrastive_loss`. Validation logs the mean loss and the offset accuracy (the
share of windows whose audio is most similar to their own frames among the clip's ``k``).

Validation runs every ``validation.every_n_steps`` over ``validation.num_samples`` validation windows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from latentsync.checkpoint import load_state_dict_strict, read_checkpoint
from latentsync.errors import ConfigError
from latentsync.models.syncnet import (
    SYNC_THRESHOLD,
    StableSyncNet,
    cosine_loss,
    offset_contrastive_loss,
    pack_frames,
    sync_similarity,
)
from latentsync.models.syncnet_loading import load_syncnet, save_syncnet
from latentsync.models.syncnet_configs import get_syncnet_config

from .checkpoints import CheckpointManager, TrainingProgress, copy_model_file, remove_temporary, resolve_resume
from .config import Config
from .loop import flat_config, quiet_other_ranks, train_loop
from .runtime import create_accelerator, create_lr_scheduler, create_optimizer

logger = logging.getLogger("train")


def syncnet_settings(config: Config) -> dict:
    """The SyncNet config (``{"model", "data"}``) with ``data`` taken from the run's data section."""
    settings = config["model"]["syncnet_config"]
    settings = get_syncnet_config(settings) if isinstance(settings, str) else dict(settings)
    data = {**settings.get("data", {})}
    if data.get("latent_space"):
        raise ConfigError("Training a latent-space SyncNet is not supported; use a pixel-space config.")
    data.update(num_frames=config["data"]["num_frames"], resolution=config["data"]["resolution"])
    visual_channels = settings["model"]["visual_encoder"]["in_channels"]
    if visual_channels != 3 * data["num_frames"]:
        raise ConfigError(
            f"The SyncNet's visual encoder takes {visual_channels} channels = {visual_channels // 3} RGB frames, but "
            f"data.num_frames is {data['num_frames']}."
        )
    return {"model": settings["model"], "data": data}


class SyncNetFiles:
    """The official SyncNet training container (``syncnet.pt``), loadable by `load_syncnet` strictly."""

    name = "syncnet.pt"

    def __init__(self, settings: dict):
        self.settings = settings

    def write(self, state_dict: dict, folder: Path, global_step: int) -> None:
        with torch.device("meta"):
            model = StableSyncNet.from_config(self.settings)
        tensors = {key: value.detach().to("cpu", torch.float32) for key, value in state_dict.items()}
        load_state_dict_strict(model, tensors, source="the trained SyncNet")
        save_syncnet(model, folder / self.name, global_step)

    def read_into(self, model: nn.Module, folder: Path) -> None:
        checkpoint = read_checkpoint(folder / self.name)
        load_state_dict_strict(model, checkpoint.state_dict, source=str(folder / self.name))

    def export(self, checkpoint: Path, export_dir: Path, config: Config) -> Path:
        def to_safetensors(source: Path, folder: Path) -> None:
            model = load_syncnet(source, config=self.settings)
            save_syncnet(model, folder / "syncnet.safetensors", global_step=int(read_checkpoint(source).extra["global_step"]))

        return copy_model_file(checkpoint, self.name, export_dir, to_safetensors)


class SyncNetObjective:
    """The loss of a batch and what validation counts as right, for ``losses.syncnet_loss``."""

    def __init__(self, losses: dict, lower_half: bool):
        self.offsets = losses["syncnet_loss"] == "offsets"
        self.temperature = losses["syncnet_temperature"]
        self.lower_half = lower_half

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-window losses ``(n,)`` and whether each window is judged right ``(n,)`` bool."""
        frames, mel = batch["frames"], batch["audio_samples"]
        if self.offsets:  # (b, k, ...) -> (b k, ...)
            frames, mel = frames.flatten(0, 1), mel.flatten(0, 1)
        parameter = next(model.parameters())
        vision, audio = model(pack_frames(frames, lower_half=self.lower_half).to(parameter.dtype), mel.to(parameter.dtype))
        if self.offsets:
            num_windows = batch["frames"].shape[1]
            losses, right = offset_contrastive_loss(
                vision.unflatten(0, (-1, num_windows)), audio.unflatten(0, (-1, num_windows)), self.temperature
            )
            return losses.flatten(), right.flatten()
        labels = batch["y"].reshape(-1)
        predicted = sync_similarity(vision, audio) > SYNC_THRESHOLD
        return cosine_loss(vision, audio, labels), predicted == labels.bool()


@torch.no_grad()
def evaluate(model: nn.Module, loader, dataset, num_samples: int, objective: SyncNetObjective, accelerator) -> dict[str, float]:
    """Mean loss and accuracy over at least ``num_samples`` validation windows (all processes), the same windows at
    every call: pass ``e`` over the loader draws them from ``(seed, e, index)``."""
    model.eval()
    losses, right, seen, epoch = [], [], 0, 0
    while seen < num_samples:
        dataset.set_epoch(epoch)
        for batch in loader:
            loss, correct = objective(model, batch)
            loss, correct = accelerator.gather_for_metrics((loss.float(), correct.float()))
            losses.append(loss)
            right.append(correct)
            seen += len(loss)
            if seen >= num_samples:
                break
        epoch += 1
    model.train()
    accuracy = "val/offset_accuracy" if objective.offsets else "val/accuracy"
    return {"val/loss": torch.cat(losses).mean().item(), accuracy: torch.cat(right).mean().item()}


def train_syncnet(config: Config) -> Path:
    """Run SyncNet training and return the export folder."""
    from accelerate.utils import set_seed

    from .data import AudioFeatureCache, SyncNetDataset, list_clips

    run, data, ckpt, losses = config["run"], config["data"], config["ckpt"], config["losses"]
    output_dir = Path(run["output_dir"]).resolve()
    checkpoints_dir = output_dir / "checkpoints"
    settings = syncnet_settings(config)
    objective = SyncNetObjective(losses, settings["data"].get("lower_half", True))
    windows_per_clip = losses["syncnet_windows_per_clip"] if objective.offsets else None

    # 1. accelerator, run folder
    accelerator = create_accelerator(config, output_dir)
    quiet_other_ranks(accelerator)
    logger.info("%s", accelerator.state)
    resume_from = resolve_resume(ckpt["resume"], checkpoints_dir)
    if accelerator.is_main_process:
        remove_temporary(checkpoints_dir)
        config.save(output_dir / "config.yaml")
    set_seed(run["seed"] + accelerator.process_index)

    # 2. model: fresh, or the given weights (strictly)
    if config["model"]["syncnet"]:
        model = load_syncnet(config["model"]["syncnet"], config=settings).train()
    else:
        model = StableSyncNet.from_config(settings)
    if run["gradient_checkpointing"]:
        model.enable_gradient_checkpointing()

    # 3. data
    audio = AudioFeatureCache(Path(data["cache_dir"] or output_dir / "cache"), None, data["audio_sample_rate"])
    train_set = SyncNetDataset(list_clips(data["train_fileslist"], data["train_data_dir"]), data["num_frames"],
                               data["resolution"], audio, run["seed"], windows_per_clip, data["augment"])
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=data["batch_size"], shuffle=True, num_workers=data["num_workers"], drop_last=True
    )
    val_loader = val_set = None
    if data["val_fileslist"] or data["val_data_dir"]:
        val_set = SyncNetDataset(list_clips(data["val_fileslist"], data["val_data_dir"]), data["num_frames"],
                                 data["resolution"], audio, run["seed"] + 1, windows_per_clip)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=data["batch_size"], num_workers=data["num_workers"])

    # 4. optimizer, accelerate, checkpoints
    optimizer = create_optimizer(config, [p for p in model.parameters() if p.requires_grad], accelerator.num_processes)
    lr_scheduler = create_lr_scheduler(config, optimizer, accelerator.num_processes)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare_data_loader(val_loader)
    if accelerator.is_main_process and run["report_to"]:
        accelerator.init_trackers("latentsync_syncnet", config=flat_config(config))
    progress = TrainingProgress()
    files = SyncNetFiles(settings)
    manager = CheckpointManager(accelerator, model, files, progress, checkpoints_dir, ckpt["checkpoints_total_limit"])
    if resume_from is not None:
        manager.load(resume_from)

    # 5. train: checkpoint first, then evaluate
    every = config["validation"]["every_n_steps"]

    def loss_terms(model: nn.Module, batch: dict) -> dict:
        return {"loss": objective(model, batch)[0].mean()}

    def after_step(step: int, terms: dict) -> dict:
        if step % ckpt["save_ckpt_steps"] == 0:
            manager.save()
        if val_loader is None or every <= 0 or step % every:
            return {}
        logs = evaluate(model, val_loader, val_set, config["validation"]["num_samples"], objective, accelerator)
        logger.info("step %d: %s", step, ", ".join(f"{name} {value:.4f}" for name, value in logs.items()))
        return logs

    train_loop(config, accelerator, model, optimizer, lr_scheduler, loader, train_set, progress, loss_terms, after_step)

    # 6. final checkpoint and export
    last = progress.global_step
    if not (checkpoints_dir / f"checkpoint-{last}").is_dir():
        manager.save()
    export_dir = output_dir / "export"
    if accelerator.is_main_process:
        files.export(checkpoints_dir / f"checkpoint-{last}", export_dir, config)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export_dir
