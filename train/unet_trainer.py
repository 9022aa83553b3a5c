"""UNet training: stage 1, stage 2 (and its efficient variant) and LoRA, as the reference's
`scripts/train_unet.py` does it, on accelerate (DDP or DeepSpeed).

One step, for a batch of ``b`` windows of ``f`` frames:

1. VAE-encode the target, masked and reference frames (posterior samples x 0.18215): ``(b, 4, f, h, w)`` each;
   the mouth mask nearest-resized to the latent size: ``(b, 1, f, h, w)``.
2. Noise shared over frames ("mixed noise", alpha 1: half of the variance shared, https://arxiv.org/abs/2305.10474),
   a timestep per window, ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``.
3. ``eps_theta([x_t, mask, masked, ref], t, audio)``; reconstruction loss ``mse(eps_theta, eps)``.
4. Stage 2: ``x_0`` predicted in one step, decoded to pixels (with gradients through the frozen VAE); SyncNet loss
   on the lower half (``BCE(cos(v, a), 1)``), LPIPS on the lower half, temporal (TREPA) loss on the window.
5. ``loss = 1 recon + 0.05 sync + 0.1 lpips + 10 trepa`` (configurable); AdamW with gradient clipping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from latentsync.checkpoint import load_state_dict_strict, read_checkpoint
from latentsync.conventions import VAE_SCALING_FACTOR
from latentsync.errors import CheckpointError, ConfigError
from latentsync.models.identify import LATENTSYNC_UNET, identify_checkpoint
from latentsync.models.lora import read_lora, save_lora
from latentsync.models.unet import UNet3DConditionModel
from latentsync.models.unet_configs import get_unet_config
from latentsync.models.unet_loading import (
    infer_unet_config,
    init_unet_from_sd15,
    load_unet,
    save_unet,
)
from latentsync.pipeline.ddim import create_scheduler

from .checkpoints import CheckpointManager, TrainingProgress, copy_model_file, remove_temporary, resolve_resume
from .config import Config
from .lora import file_sha256, inject_lora
from .loop import flat_config, quiet_other_ranks, train_loop
from .runtime import WEIGHT_DTYPES, create_accelerator, create_lr_scheduler, create_optimizer

logger = logging.getLogger("train")


# ----------------------------------------------------------------------------------------------------------
# Models


def unet_architecture(config: Config) -> dict:
    unet = config["model"]["unet"]
    return dict(unet) if isinstance(unet, dict) else get_unet_config(unet)


def initial_unet(config: Config) -> UNet3DConditionModel:
    """The UNet to train, from ``model.init_checkpoint``.

    A LatentSync checkpoint of the same architecture loads strictly. An SD-1.5 UNet, or a checkpoint without the
    motion modules this architecture has (stage 1 -> stage 2), goes through `init_unet_from_sd15`, which applies
    the reference's rule (drop what cannot fit, start motion modules as identities) and reports it.
    """
    architecture = unet_architecture(config)
    path = config["model"]["init_checkpoint"]
    if not path:
        logger.info("No model.init_checkpoint: the UNet starts from its construction values.")
        return UNet3DConditionModel.from_config(architecture).train()
    state_dict = read_checkpoint(path, container_keys=("state_dict", "model_state_dict")).state_dict
    kind = identify_checkpoint(state_dict)
    without_motion = kind == LATENTSYNC_UNET and not infer_unet_config(state_dict)["use_motion_module"]
    if kind != LATENTSYNC_UNET or (without_motion and architecture["use_motion_module"]):
        unet, report = init_unet_from_sd15(state_dict, architecture)
        logger.info(
            "Initialised the UNet from %s: %d tensors loaded, %d dropped (%s), %d left at their initial values.",
            path, len(report.loaded), len(report.dropped), ", ".join(report.dropped[:4]), len(report.left_at_init),
        )  # fmt: skip
        return unet
    return load_unet(path, config=architecture).train()


def select_trainable(unet: nn.Module, config: Config) -> list[str]:
    """Set ``requires_grad`` as the mode says and return the names of the trained parameters.

    stage 1 (or a UNet without motion modules): everything; stage 2: parameters whose name contains one of
    ``run.trainable_modules``; LoRA: only the injected ``lora_A`` / ``lora_B`` weights.
    """
    if config.mode == "lora":
        lora = config["lora"]
        targets = inject_lora(unet, lora["preset"], lora["rank"], lora["alpha"], lora["dropout"], lora["target_modules"])
        logger.info("LoRA (%s, rank %d, alpha %g) on %d layers.", lora["preset"], lora["rank"], lora["alpha"], len(targets))
    elif config.mode == "stage1" or not unet.config.use_motion_module:
        unet.requires_grad_(True)
    else:
        patterns = config["run"]["trainable_modules"]
        unet.requires_grad_(False)
        for name, parameter in unet.named_parameters():
            parameter.requires_grad_(any(pattern in name for pattern in patterns))
    trainable = [name for name, parameter in unet.named_parameters() if parameter.requires_grad]
    if not trainable:
        raise ConfigError(f"No UNet parameter matches run.trainable_modules {config['run']['trainable_modules']}.")
    return trainable


class UNetFiles:
    """The official ``{"global_step", "state_dict"}`` container (``unet.pt``), loadable by `load_unet` strictly."""

    name = "unet.pt"

    def write(self, state_dict: dict, folder: Path, global_step: int) -> None:
        tensors = {key: value.detach().to("cpu", torch.float32) for key, value in state_dict.items()}
        torch.save({"global_step": int(global_step), "state_dict": tensors}, folder / self.name)

    def read_into(self, model: nn.Module, folder: Path) -> None:
        checkpoint = read_checkpoint(folder / self.name)
        load_state_dict_strict(model, checkpoint.state_dict, source=str(folder / self.name))

    def export(self, checkpoint: Path, export_dir: Path, config: Config) -> Path:
        """``unet.pt`` and ``unet.safetensors`` (config in its metadata), after a strict load of the former."""

        def to_safetensors(source: Path, folder: Path) -> None:
            unet = load_unet(source, config=unet_architecture(config))
            save_unet(unet, folder / "unet.safetensors", global_step=unet.global_step)

        return copy_model_file(checkpoint, self.name, export_dir, to_safetensors)


class LoRAFiles:
    """``lora/``: the LoRA in peft's adapter layout (``adapter_model.safetensors`` + ``adapter_config.json``,
    `latentsync.models.lora`)."""

    name = "lora"

    def __init__(self, config: Config, base_hash: str):
        self.lora = config["lora"]
        self.metadata = {
            "preset": self.lora["preset"],
            "base_checkpoint": Path(config["model"]["init_checkpoint"]).name,
            "base_checkpoint_sha256": base_hash,
        }

    def write(self, state_dict: dict, folder: Path, global_step: int) -> None:
        from latentsync.models.lora import lora_from_peft_state

        metadata = {**self.metadata, "global_step": str(int(global_step))}
        lora = lora_from_peft_state(state_dict, self.lora["rank"], self.lora["alpha"], metadata)
        save_lora(lora, folder / self.name)

    def read_into(self, model: nn.Module, folder: Path) -> None:
        lora = read_lora(folder / self.name)
        if lora.metadata.get("base_checkpoint_sha256") != self.metadata["base_checkpoint_sha256"]:
            raise CheckpointError(
                f"{folder / self.name} was trained on another base UNet ({lora.metadata.get('base_checkpoint')}); "
                "resume with the same model.init_checkpoint."
            )
        with torch.no_grad():
            for name, (down, up) in lora.layers.items():
                module = model.get_submodule(name)
                module.lora_A["default"].weight.copy_(down)
                module.lora_B["default"].weight.copy_(up)

    def export(self, checkpoint: Path, export_dir: Path, config: Config) -> Path:
        return save_lora(read_lora(checkpoint / self.name), export_dir / self.name)


@dataclass
class FrozenModels:
    """What the loss needs besides the UNet (all frozen, in the weight dtype)."""

    vae: nn.Module
    syncnet: Optional[nn.Module]
    syncnet_resolution: int
    syncnet_lower_half: bool
    lpips: Optional[nn.Module]
    temporal: Optional[nn.Module]


def _optional_loss(config: Config, weight_key: str, paths: list[str], what: str) -> bool:
    """Whether a weighted loss can run; its weight is set to 0 (logged) or a `ConfigError` raised when its weights
    are not given, as ``losses.missing_weights`` says."""
    run, losses = config["run"], config["losses"]
    if run[weight_key] == 0 or not run["pixel_space_supervise"]:
        return False
    if all(losses[p] for p in paths):
        return True
    keys = " and ".join(f"losses.{p}" for p in paths)
    if losses["missing_weights"] == "error":
        raise ConfigError(
            f"run.{weight_key} is {run[weight_key]} but {keys} is not set. Give the {what} weights, set "
            f"run.{weight_key}=0, or losses.missing_weights=disable to train without it."
        )
    logger.warning("%s loss disabled: %s is not set (run.%s was %s).", what, keys, weight_key, run[weight_key])
    run[weight_key] = 0.0
    return False


def load_frozen_models(config: Config, unet: UNet3DConditionModel, device, dtype: torch.dtype) -> FrozenModels:
    from latentsync.models.syncnet_loading import load_syncnet
    from latentsync.models.syncnet_configs import get_syncnet_config
    from latentsync.models.vae import load_vae

    from .perceptual import TemporalLoss, load_lpips, load_videomae

    run, model, losses = config["run"], config["model"], config["losses"]
    vae = load_vae(model["vae"], device=device, dtype=dtype).requires_grad_(False)
    if run["pixel_space_supervise"]:
        vae.enable_gradient_checkpointing()

    syncnet, syncnet_resolution, lower_half = None, 0, True
    if run["use_syncnet"] and run["sync_loss_weight"] > 0 and unet.config.add_audio_layer:
        settings = model["syncnet_config"]
        settings = get_syncnet_config(settings) if isinstance(settings, str) else dict(settings)
        data = settings.get("data", {})
        expected_frames = data.get("num_frames", config["data"]["num_frames"])
        if expected_frames != config["data"]["num_frames"]:
            raise ConfigError(
                f"The SyncNet ({model['syncnet_config'] if isinstance(model['syncnet_config'], str) else 'inline'}) "
                f"takes {expected_frames} frames but data.num_frames is {config['data']['num_frames']}. Use the same "
                "frame count, train a SyncNet for it, or set run.use_syncnet=false."
            )
        if data.get("latent_space", False) == run["pixel_space_supervise"]:
            raise ConfigError(
                "The SyncNet works in " + ("latent" if data.get("latent_space") else "pixel")
                + " space but run.pixel_space_supervise is " + str(run["pixel_space_supervise"]).lower() + "."
            )
        syncnet = load_syncnet(model["syncnet"], config=settings, device=device, dtype=dtype).requires_grad_(False)
        syncnet.enable_gradient_checkpointing()
        syncnet_resolution = data.get("resolution", config["data"]["resolution"])
        lower_half = data.get("lower_half", True)
    elif run["sync_loss_weight"] > 0:
        logger.info("SyncNet loss off (run.use_syncnet=%s).", run["use_syncnet"])

    lpips = None
    if _optional_loss(config, "perceptual_loss_weight", ["vgg16_weights", "lpips_weights"], "LPIPS perceptual"):
        # float32, as the reference runs it
        lpips = load_lpips(losses["vgg16_weights"], losses["lpips_weights"]).to(device=device)
    temporal = None
    if _optional_loss(config, "trepa_loss_weight", ["videomae_weights"], "Temporal (TREPA, VideoMAE v2)"):
        encoder = load_videomae(losses["videomae_weights"], losses["videomae_config"])
        temporal = TemporalLoss(encoder).to(device=device, dtype=dtype)
    return FrozenModels(vae, syncnet, syncnet_resolution, lower_half, lpips, temporal)


# ----------------------------------------------------------------------------------------------------------
# Loss


def mixed_noise(latents: torch.Tensor, alpha: Optional[float]) -> torch.Tensor:
    """Noise for ``(b, c, f, h, w)`` latents: with ``alpha``, a part shared by all frames of a window with variance
    ``alpha^2 / (1 + alpha^2)`` plus an independent part with ``1 / (1 + alpha^2)``; with None, one noise
    repeated over the frames."""
    shared = torch.randn_like(latents[:, :, :1]).expand_as(latents)
    if alpha is None:
        return shared.contiguous()
    independent = torch.randn_like(latents)
    return shared * (alpha**2 / (1 + alpha**2)) ** 0.5 + independent * (1 / (1 + alpha**2)) ** 0.5


def predicted_original(scheduler, noise_pred: torch.Tensor, timesteps: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """One-step estimate ``x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` (DDIM eq. 12), ``(b, c, f, h, w)``."""
    alpha_prod = scheduler.alphas_cumprod.to(noise_pred.device)[timesteps].to(noise_pred.dtype)
    alpha_prod = alpha_prod[:, None, None, None, None]
    return (noisy - (1 - alpha_prod) ** 0.5 * noise_pred) / alpha_prod**0.5


def _frames_first(video: torch.Tensor) -> torch.Tensor:
    """``(b, c, f, h, w)`` -> ``(b * f, c, h, w)``."""
    return video.transpose(1, 2).flatten(0, 1)


def _channels_first(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(b * f, c, h, w)`` -> ``(b, c, f, h, w)``."""
    return frames.unflatten(0, (-1, num_frames)).transpose(1, 2)


class UNetLoss:
    """The training objective of one batch (see the module docstring).

    Returns a dict of scalar tensors: ``loss`` and its terms (``recon``, ``sync``, ``lpips``, ``trepa``), plus
    ``pred_pixels`` / ``gt_pixels`` ``(b * f, 3, R, R)`` when decoded (for logging images).
    """

    def __init__(self, config: Config, frozen: FrozenModels, dtype: torch.dtype):
        self.run = config["run"]
        self.num_frames = config["data"]["num_frames"]
        self.frozen = frozen
        self.dtype = dtype
        self.scheduler = create_scheduler()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(b, f, 3, R, R)`` -> scaled latents ``(b, 4, f, R/8, R/8)``."""
        frames = pixels.flatten(0, 1).to(self.dtype)
        latents = self.frozen.vae.encode(frames).latent_dist.sample() * VAE_SCALING_FACTOR
        return _channels_first(latents.float(), pixels.shape[1])

    def __call__(self, unet: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        run, frozen = self.run, self.frozen
        # 1. latents
        gt_latents = self.encode(batch["gt_pixel_values"])
        masked_latents = self.encode(batch["masked_pixel_values"])
        ref_latents = self.encode(batch["ref_pixel_values"])
        masks = F.interpolate(batch["masks"].flatten(0, 1).float(), size=gt_latents.shape[-2:], mode="nearest")
        masks = _channels_first(masks, self.num_frames)

        # 2. forward diffusion
        noise = mixed_noise(gt_latents, run["mixed_noise_alpha"] if run["use_mixed_noise"] else None)
        timesteps = torch.randint(
            0, self.scheduler.config.num_train_timesteps, (gt_latents.shape[0],), device=gt_latents.device
        )
        noisy = self.scheduler.add_noise(gt_latents, noise, timesteps)

        # 3. noise prediction
        model_dtype = next(unet.parameters()).dtype
        unet_input = torch.cat([noisy, masks, masked_latents, ref_latents], dim=1).to(model_dtype)
        audio = batch["audio_embeds"].to(model_dtype) if "audio_embeds" in batch else _no_audio(unet_input, unet)
        noise_pred = unet(unet_input, timesteps, audio)
        terms = {"recon": F.mse_loss(noise_pred.float(), noise.float())}

        # 4. pixel-space and sync losses on the one-step x_0
        pred_latents = predicted_original(self.scheduler, noise_pred.float(), timesteps, noisy)
        if run["pixel_space_supervise"]:
            decoded = frozen.vae.decode((_frames_first(pred_latents) / VAE_SCALING_FACTOR).to(self.dtype)).sample
            gt_pixels = batch["gt_pixel_values"].flatten(0, 1).to(decoded.dtype)
            terms.update(self._pixel_losses(decoded, gt_pixels, batch))
            terms["pred_pixels"], terms["gt_pixels"] = decoded.detach(), gt_pixels.detach()
        elif frozen.syncnet is not None:
            terms["sync"] = self._sync_loss(pred_latents.transpose(1, 2).flatten(1, 2), batch["mel"])

        # 5. weighted sum
        weights = {
            "recon": run["recon_loss_weight"], "sync": run["sync_loss_weight"],
            "lpips": run["perceptual_loss_weight"], "trepa": run["trepa_loss_weight"],
        }  # fmt: skip
        terms["loss"] = sum(weights[name] * terms[name] for name in weights if name in terms)
        return terms

    def _pixel_losses(self, decoded: torch.Tensor, gt_pixels: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        frozen, terms = self.frozen, {}
        half = decoded.shape[-2] // 2
        if frozen.lpips is not None:
            terms["lpips"] = frozen.lpips(decoded[:, :, half:].float(), gt_pixels[:, :, half:].float()).mean()
        if frozen.temporal is not None:
            terms["trepa"] = frozen.temporal(
                _channels_first(decoded, self.num_frames), _channels_first(gt_pixels, self.num_frames)
            )
        if frozen.syncnet is not None:
            pixels = decoded
            if pixels.shape[-1] != frozen.syncnet_resolution:
                size = (frozen.syncnet_resolution, frozen.syncnet_resolution)
                pixels = F.interpolate(pixels, size=size, mode="bicubic")
            terms["sync"] = self._sync_loss(pixels.unflatten(0, (-1, self.num_frames)).flatten(1, 2), batch["mel"])
        return terms

    def _sync_loss(self, packed: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """``BCE(cos(v, a), 1)`` of frames stacked on channels ``(b, f * c, h, w)`` and their mel ``(b, 1, 80, t)``."""
        from latentsync.models.syncnet import cosine_loss

        if self.frozen.syncnet_lower_half:
            packed = packed[:, :, packed.shape[2] // 2 :]
        vision, audio = self.frozen.syncnet(packed.to(self.dtype), mel.to(self.dtype))
        return cosine_loss(vision, audio, torch.ones(len(vision), device=vision.device)).mean()


def _no_audio(unet_input: torch.Tensor, unet: nn.Module) -> torch.Tensor:
    """Placeholder audio for a UNet without audio layers: ``(b, f, 1, cross_attention_dim)`` zeros."""
    batch, _, frames = unet_input.shape[:3]
    width = getattr(unet, "module", unet).config.cross_attention_dim
    return unet_input.new_zeros(batch, frames, 1, width)


# ----------------------------------------------------------------------------------------------------------
# Training loop


def _mouth_mask(config: Config) -> torch.Tensor:
    from latentsync.face.mask import MASK_PATH, read_mask_image

    data = config["data"]
    image = read_mask_image(data["resolution"], data["mask_image_path"] or MASK_PATH)
    return torch.from_numpy(image / 255.0).permute(2, 0, 1).float()


def build_dataloader(config: Config, unet: UNet3DConditionModel, with_mel: bool, cache_dir: Path):
    from .data import AudioFeatureCache, UNetDataset, list_clips

    data = config["data"]
    clips = list_clips(data["train_fileslist"], data["train_data_dir"])
    with_audio = bool(unet.config.add_audio_layer)
    audio = AudioFeatureCache(cache_dir, config["model"]["whisper"] if with_audio else None, data["audio_sample_rate"])
    dataset = UNetDataset(
        clips, data["num_frames"], data["resolution"], _mouth_mask(config), audio, with_audio, with_mel,
        seed=config["run"]["seed"], fps=data["video_fps"],
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=data["batch_size"], shuffle=True, num_workers=data["num_workers"], drop_last=True
    )
    return dataset, loader


def train_unet(config: Config) -> Path:
    """Run UNet training (``config.mode`` stage1, stage2 or lora) and return the export folder."""
    from accelerate.utils import set_seed

    from .validation import Validator

    run = config["run"]
    output_dir = Path(run["output_dir"]).resolve()
    checkpoints_dir = output_dir / "checkpoints"

    # 1. accelerator, run folder, resolved config
    accelerator = create_accelerator(config, output_dir)
    quiet_other_ranks(accelerator)
    logger.info("%s", accelerator.state)
    resume_from = resolve_resume(config["ckpt"]["resume"], checkpoints_dir)
    if accelerator.is_main_process:
        remove_temporary(checkpoints_dir)
        config.save(output_dir / "config.yaml")
    set_seed(run["seed"] + accelerator.process_index)
    weight_dtype = WEIGHT_DTYPES[run["mixed_precision"]]

    # 2. models
    unet = initial_unet(config)
    trainable_names = select_trainable(unet, config)
    if run["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    frozen = load_frozen_models(config, unet, accelerator.device, weight_dtype)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    logger.info(
        "Training %d UNet tensors (%.3f M parameters) of %d.",
        len(trainable), sum(p.numel() for p in trainable) / 1e6, len(list(unet.parameters())),
    )  # fmt: skip

    # 3. data
    cache_dir = Path(config["data"]["cache_dir"] or output_dir / "cache")
    dataset, loader = build_dataloader(config, unet, frozen.syncnet is not None, cache_dir)

    # 4. optimizer, schedule, accelerate
    optimizer = create_optimizer(config, trainable, accelerator.num_processes)
    lr_scheduler = create_lr_scheduler(config, optimizer, accelerator.num_processes)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if accelerator.is_main_process and run["report_to"]:
        accelerator.init_trackers("latentsync", config=flat_config(config))

    # 5. checkpoints and resume
    progress = TrainingProgress()
    files = (
        LoRAFiles(config, file_sha256(config["model"]["init_checkpoint"])) if config.mode == "lora" else UNetFiles()
    )
    manager = CheckpointManager(
        accelerator, unet, files, progress, checkpoints_dir, config["ckpt"]["checkpoints_total_limit"]
    )
    if resume_from is not None:
        manager.load(resume_from)

    def export_best(step: int, folder: Path) -> None:
        files.export(checkpoints_dir / f"checkpoint-{step}", folder, config)

    validator = Validator(config, output_dir, frozen, accelerator, export_best)
    objective = UNetLoss(config, frozen, weight_dtype)

    # 6. train: a validation step is saved first (a failing validation never loses the checkpoint)
    def after_step(step: int, terms: dict) -> dict:
        if step % config["ckpt"]["save_ckpt_steps"] == 0 or validator.due(step):
            manager.save()
        if validator.due(step):
            return validator.run(accelerator.unwrap_model(unet), terms, step)
        return {}

    train_loop(config, accelerator, unet, optimizer, lr_scheduler, loader, dataset, progress, objective, after_step)

    # 7. final checkpoint and export
    last = progress.global_step
    if not (checkpoints_dir / f"checkpoint-{last}").is_dir():
        manager.save()
    export_dir = output_dir / "export"
    if accelerator.is_main_process:
        files.export(checkpoints_dir / f"checkpoint-{last}", export_dir, config)
        logger.info("Exported %s to %s (%d trained tensors).", files.name, export_dir, len(trainable_names))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export_dir
