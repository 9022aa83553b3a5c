"""StableSyncNet training with the reference recipe (`scripts/train_syncnet.py`, `syncnet_16_pixel_attn.yaml`).

A batch holds windows of ``f`` faces (``(b, f, 3, R, R)`` in ``[-1, 1]``) with the mel of the true window start and a
label: 1 when the frames are that window, 0 when they are another window of the same clip. Frames are stacked on
channels (``b (f c) h w``), cut to the lower half, embedded together with the mel, and the loss is
``BCE(cos(v, a), y)``. Every ``validation.every_n_steps`` the mean loss and accuracy (similarity > 0.5 means "in
sync") over ``validation.num_samples`` validation windows are logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from latentsync.checkpoint import load_state_dict_strict, read_checkpoint
from latentsync.errors import ConfigError
from latentsync.models.syncnet import SYNC_THRESHOLD, StableSyncNet, cosine_loss, pack_frames, sync_similarity
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


def _batch_loss(model: nn.Module, batch: dict, lower_half: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window losses ``(b,)`` and similarities ``(b,)``."""
    frames = pack_frames(batch["frames"], lower_half=lower_half)
    parameter = next(model.parameters())
    vision, audio = model(frames.to(parameter.dtype), batch["audio_samples"].to(parameter.dtype))
    return cosine_loss(vision, audio, batch["y"]), sync_similarity(vision, audio)


@torch.no_grad()
def evaluate(model: nn.Module, loader, dataset, num_samples: int, lower_half: bool, accelerator) -> dict[str, float]:
    """Mean loss and accuracy over at least ``num_samples`` validation windows (all processes), the same windows at
    every call: pass ``e`` over the loader draws them from ``(seed, e, index)``."""
    model.eval()
    losses, correct, seen, epoch = [], [], 0, 0
    while seen < num_samples:
        dataset.set_epoch(epoch)
        for batch in loader:
            loss, similarity = _batch_loss(model, batch, lower_half)
            predicted = (similarity > SYNC_THRESHOLD).float()
            loss, predicted, labels = accelerator.gather_for_metrics((loss, predicted, batch["y"].reshape(-1)))
            losses.append(loss.float())
            correct.append((predicted == labels).float())
            seen += len(loss)
            if seen >= num_samples:
                break
        epoch += 1
    model.train()
    return {"val/loss": torch.cat(losses).mean().item(), "val/accuracy": torch.cat(correct).mean().item()}


def train_syncnet(config: Config) -> Path:
    """Run SyncNet training and return the export folder."""
    from accelerate.utils import set_seed

    from .data import AudioFeatureCache, SyncNetDataset, list_clips

    run, data, ckpt = config["run"], config["data"], config["ckpt"]
    output_dir = Path(run["output_dir"]).resolve()
    checkpoints_dir = output_dir / "checkpoints"
    settings = syncnet_settings(config)
    lower_half = settings["data"].get("lower_half", True)

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
                               data["resolution"], audio, seed=run["seed"])
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=data["batch_size"], shuffle=True, num_workers=data["num_workers"], drop_last=True
    )
    val_loader = val_set = None
    if data["val_fileslist"] or data["val_data_dir"]:
        val_set = SyncNetDataset(list_clips(data["val_fileslist"], data["val_data_dir"]), data["num_frames"],
                                 data["resolution"], audio, seed=run["seed"] + 1)
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
        return {"loss": _batch_loss(model, batch, lower_half)[0].mean()}

    def after_step(step: int, terms: dict) -> dict:
        if step % ckpt["save_ckpt_steps"] == 0:
            manager.save()
        if val_loader is None or every <= 0 or step % every:
            return {}
        logs = evaluate(model, val_loader, val_set, config["validation"]["num_samples"], lower_half, accelerator)
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
