"""Run configuration: one defaults table, YAML files that override it, and ``key=value`` overrides on top.

A config file holds any subset of the sections below (unknown keys are an error, so a typo never trains with a
default silently). ``base: other.yaml`` in a file loads that file first (relative to the file), so the 512 and
tiny variants only list what differs. Values from the command line are parsed as YAML (``run.seed=3``,
``run.trainable_modules=[attn2.]``, ``model.unet=tiny``).

The reference's hyper-parameters (``configs/unet/stage2.yaml``) are the defaults: AdamW lr 1e-5, gradient clipping
1.0, constant schedule, mixed noise with alpha 1, loss weights recon 1 / sync 0.05 / perceptual 0.1 / temporal 10.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from latentsync.errors import ConfigError
from latentsync.files import atomic_write
from latentsync.pipeline.settings import SETTING_SPECS, SettingSpec

MODES = ("stage1", "stage2", "lora", "syncnet")
MIXED_PRECISION = ("no", "fp16", "bf16")
DEEPSPEED_PRESETS = ("zero2", "zero2_offload", "zero3")
LORA_PRESETS = ("audio", "motion", "both")
# Bounds and choices of keys, checked by the lip-sync settings' own `SettingSpec.check` (so NaN is refused here too);
# the validation settings are the lip-sync settings of the same name.
_WEIGHT = SettingSpec("loss weight", float, minimum=0.0)
BOUNDS: dict[str, SettingSpec] = {
    "data.num_frames": SettingSpec("frames per sample", int, minimum=1),
    "data.resolution": SettingSpec("face resolution", int, minimum=8),
    "data.batch_size": SettingSpec("samples per batch", int, minimum=1),
    "data.num_workers": SettingSpec("data loader workers", int, minimum=0),
    "run.max_train_steps": SettingSpec("optimizer steps", int, minimum=1),
    "run.gradient_accumulation_steps": SettingSpec("micro-batches per step", int, minimum=1),
    "run.mixed_precision": SettingSpec("mixed precision", choices=MIXED_PRECISION),
    "run.recon_loss_weight": _WEIGHT,
    "run.sync_loss_weight": _WEIGHT,
    "run.perceptual_loss_weight": _WEIGHT,
    "run.trepa_loss_weight": _WEIGHT,
    "run.mixed_noise_alpha": SettingSpec("mixed noise alpha", float, minimum=0.0),
    "optimizer.lr": SettingSpec("learning rate", float, minimum=0.0),
    "optimizer.max_grad_norm": SettingSpec("gradient clipping norm", float, minimum=0.0),
    "optimizer.weight_decay": SettingSpec("weight decay", float, minimum=0.0),
    "optimizer.eps": SettingSpec("AdamW epsilon", float, minimum=0.0),
    "ckpt.save_ckpt_steps": SettingSpec("steps between checkpoints", int, minimum=1),
    "ckpt.checkpoints_total_limit": SettingSpec("checkpoints kept", int, minimum=0),
    "validation.inference_steps": SETTING_SPECS["num_inference_steps"],
    "validation.guidance_scale": SETTING_SPECS["guidance_scale"],
    "losses.missing_weights": SettingSpec("missing loss weights", choices=("error", "disable")),
    "losses.syncnet_loss": SettingSpec("SyncNet loss", choices=("bce", "offsets")),
    "losses.syncnet_windows_per_clip": SettingSpec("windows per clip of the offsets loss", int, minimum=2),
    "losses.syncnet_temperature": SettingSpec("temperature of the offsets loss", float, minimum=1e-3),
    "lora.preset": SettingSpec("LoRA preset", choices=LORA_PRESETS),
    "lora.rank": SettingSpec("LoRA rank", int, minimum=1),
    "lora.alpha": SettingSpec("LoRA alpha", float, minimum=0.0),
    "lora.dropout": SettingSpec("LoRA dropout", float, minimum=0.0, maximum=1.0),
}
# Keys whose value may be a name or a dict (an architecture given inline).
_NAME_OR_DICT = {("model", "unet"), ("model", "syncnet_config"), ("validation", "syncnet_config")}
# Package data (pyproject's [tool.setuptools.package-data]), found wherever the package is installed.
CONFIG_DIR = resources.files("train") / "configs"

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {
        # UNet architecture: a name of `latentsync.models.unet_configs` (stage1, stage2, stage2_efficient, tiny ...)
        # or the YAML `model:` section of the reference as a dict.
        "unet": "stage2",
        # Weights to start from: a LatentSync UNet (.pt / .safetensors); for stage 1 also an SD-1.5 UNet in diffusers
        # key names (the reference's rule drops conv_in and the text cross-attention key/value). "" = fresh init.
        "init_checkpoint": "checkpoints/latentsync_unet.pt",
        "whisper": "checkpoints/whisper/tiny.pt",
        # A diffusers folder or one file of stabilityai/sd-vae-ft-mse.
        "vae": "checkpoints/sd-vae-ft-mse",
        # Frozen SyncNet of the sync loss (UNet modes), or the weights to start from (syncnet mode, "" = fresh).
        "syncnet": "checkpoints/stable_syncnet.pt",
        "syncnet_config": "syncnet_16_pixel_attn",
    },
    "data": {
        # One clip path per line, or a folder searched recursively for .mp4; the pipeline writes both.
        "train_fileslist": "",
        "train_data_dir": "",
        "val_fileslist": "",
        "val_data_dir": "",
        "num_frames": 16,
        "resolution": 256,
        "batch_size": 1,
        "num_workers": 4,
        # "" = the packaged mask (latentsync/face/assets/mask.png).
        "mask_image_path": "",
        "video_fps": 25,
        "audio_sample_rate": 16000,
        # Whisper features and SyncNet mels of every clip are cached here ("" = <output_dir>/cache).
        "cache_dir": "",
        # Validation clip rendered and sync-scored every `validation.every_n_steps` (UNet modes); without it, the
        # clips of val_fileslist (default: the val_fileslist.txt beside train_fileslist).
        "val_video_path": "",
        "val_audio_path": "",
        # SyncNet mode: vary each window's contrast, brightness, mirroring and position (never its timing).
        "augment": False,
    },
    "run": {
        "output_dir": "runs/stage2",
        "seed": 1247,
        "max_train_steps": 10_000_000,
        "pixel_space_supervise": True,
        "use_syncnet": True,
        "recon_loss_weight": 1.0,
        "sync_loss_weight": 0.05,
        "perceptual_loss_weight": 0.1,
        "trepa_loss_weight": 10.0,
        # Parameters whose name contains one of these train (UNet with motion modules); stage 1 trains everything.
        "trainable_modules": ["motion_modules.", "attentions."],
        "use_mixed_noise": True,
        "mixed_noise_alpha": 1.0,
        "mixed_precision": "fp16",
        "gradient_checkpointing": True,
        "gradient_accumulation_steps": 1,
        "log_every_steps": 10,
        # "" = plain DDP / single process; a preset of train/deepspeed/ or a DeepSpeed JSON path.
        "deepspeed": "",
        # "tensorboard" or "" (no tracker).
        "report_to": "tensorboard",
    },
    "optimizer": {
        "lr": 1e-5,
        "scale_lr": False,
        "max_grad_norm": 1.0,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        # torch.optim.AdamW defaults, which the reference keeps.
        "weight_decay": 0.01,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
    },
    "ckpt": {
        "save_ckpt_steps": 10000,
        # Keep the newest N checkpoints (0 = all).
        "checkpoints_total_limit": 3,
        # "" = new run (refused if the output folder has checkpoints), "latest", or a checkpoint folder.
        "resume": "",
    },
    "validation": {
        # 0 = every `ckpt.save_ckpt_steps`; -1 = never.
        "every_n_steps": 0,
        "inference_steps": 20,
        "guidance_scale": 1.5,
        # SyncNet mode: how many validation samples (the reference: 2048).
        "num_samples": 2048,
        # UNet modes: the SyncNet that scores the validation clips ("" = model.syncnet) and its architecture
        # ("" = model.syncnet_config); at most this many clips of the validation list.
        "syncnet": "",
        "syncnet_config": "",
        "max_clips": 4,
    },
    "losses": {
        # LPIPS (VGG-16) perceptual loss: torchvision `vgg16` features weights and the `lpips` package's
        # `weights/v0.1/vgg.pth`. Needed when run.perceptual_loss_weight > 0 in pixel space.
        "vgg16_weights": "",
        "lpips_weights": "",
        # Temporal (TREPA) loss: VideoMAE v2 checkpoint (vit_g_hybrid_pt_1200e_ssv2_ft.pth) and its architecture.
        "videomae_weights": "",
        "videomae_config": "vit_giant_patch14_224",
        # "error": refuse to start when a weighted loss has no weights; "disable": log it and train without it.
        "missing_weights": "error",
        # SyncNet mode: "bce" (the reference: cosine similarity + BCE, half the windows shifted) or "offsets": a
        # batch item is `syncnet_windows_per_clip` windows of one clip and each window's audio must pick its own
        # frames among them (InfoNCE over similarities / `syncnet_temperature`). Only timing tells them apart: on
        # the 21 s of the demo clips "offsets" learned sync in a few hundred steps where "bce" stayed at chance.
        "syncnet_loss": "bce",
        "syncnet_windows_per_clip": 16,
        "syncnet_temperature": 0.1,
    },
    "lora": {
        "preset": "audio",
        "rank": 16,
        "alpha": 16.0,
        "dropout": 0.0,
        # Extra module-name patterns (regex, peft `target_modules`) besides the preset; [] = the preset only.
        "target_modules": [],
    },
}

# What each mode changes in the defaults before its YAML file applies.
MODE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "stage1": {
        "model": {"unet": "stage1"},
        "run": {"output_dir": "runs/stage1", "pixel_space_supervise": False, "use_syncnet": False},
    },
    "stage2": {},
    "lora": {"run": {"output_dir": "runs/lora"}},
    "syncnet": {
        "model": {"syncnet": ""},
        "data": {"batch_size": 256, "num_workers": 12},
        "run": {"output_dir": "runs/syncnet", "seed": 42, "mixed_precision": "fp16"},
        "ckpt": {"save_ckpt_steps": 2500},
        "optimizer": {"lr": 1e-5},
        "validation": {"every_n_steps": 2500},
    },
}


class Config(dict):
    """A resolved run configuration: ``config["run"]["seed"]``; ``config.mode`` is the training mode."""

    def __init__(self, values: Mapping, mode: str):
        super().__init__(copy.deepcopy(dict(values)))
        self.mode = mode

    def to_yaml(self) -> str:
        return yaml.safe_dump({"mode": self.mode, **dict(self)}, sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved config atomically; `load_config` reads it back to the same values."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as temporary:
            temporary.write_text(self.to_yaml())
        return path


def _merge(target: dict, updates: Mapping, source: str, prefix: str = "") -> None:
    """Recursively write ``updates`` into ``target``, refusing keys the defaults do not have."""
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in target:
            known = ", ".join(target) if prefix else ", ".join(DEFAULTS)
            raise ConfigError(f"{source}: unknown config key {dotted!r}; known keys here: {known}.")
        if isinstance(target[key], dict) and not (tuple(dotted.split(".")) in _NAME_OR_DICT):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {dotted!r} must be a mapping of keys, got {value!r}.")
            _merge(target[key], value, source, f"{dotted}.")
        else:
            target[key] = copy.deepcopy(value)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, str | None]:
    """A config file's values with its ``base:`` chain applied; also returns its ``mode:`` if any."""
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}.")
    if path in seen:
        raise ConfigError(f"Config files include each other through 'base:': {' -> '.join(map(str, seen))}.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(values).__name__}.")
    base = values.pop("base", None)
    mode = values.pop("mode", None)
    if base is None:
        return values, mode
    base_values, base_mode = _read_yaml((path.parent / base).resolve(), (*seen, path))
    merged = copy.deepcopy(base_values)
    _deep_update(merged, values)
    return merged, mode or base_mode


def _deep_update(target: dict, updates: Mapping) -> None:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"run.seed=3"`` -> ``(["run", "seed"], 3)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like section.key=value (e.g. run.max_train_steps=100).")
    dotted, raw = text.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) != 2 or not all(keys):
        raise ConfigError(f"Override {text!r}: the key must be section.key (e.g. optimizer.lr), got {dotted!r}.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"Override {text!r}: cannot parse the value as YAML ({error}).") from error
    return keys, value


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A file path, or the name of a packaged config (``stage2``, ``tiny_stage2`` -> train/configs/NAME.yaml)."""
    path = Path(name)
    if path.is_file():
        return path.resolve()
    packaged = CONFIG_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"Config {name!r} is neither a file nor a packaged config ({available}).")


def config_file_mode(path: str | os.PathLike) -> str | None:
    """The ``mode:`` a config file (or packaged config name) declares, through its ``base:`` chain."""
    return _read_yaml(resolve_config_path(path))[1]


def load_config(mode: str, path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the mode's defaults, then the file (with its ``base:`` chain), then ``overrides``.

    Raises:
        ConfigError: unknown mode or keys, a file written for another mode, values of the wrong type or range.
    """
    if mode not in MODES:
        raise ConfigError(f"Unknown training mode {mode!r}; choose one of {', '.join(MODES)}.")
    values = copy.deepcopy(DEFAULTS)
    _merge(values, MODE_DEFAULTS[mode], "mode defaults")
    if path is not None:
        file_path = resolve_config_path(path)
        file_values, file_mode = _read_yaml(file_path)
        if file_mode is not None and file_mode != mode:
            raise ConfigError(f"{file_path} is a {file_mode!r} config; run it with `python -m train {file_mode}`.")
        _merge(values, file_values, str(file_path))
    for text in overrides:
        keys, value = parse_override(text)
        _merge(values, {keys[0]: {keys[1]: value}}, f"override {text!r}")
    config = Config(values, mode)
    validate(config)
    return config


def _check_type(config: Config, section: str, key: str) -> None:
    default = DEFAULTS[section][key]
    value = config[section][key]
    if (section, key) in _NAME_OR_DICT:
        ok = isinstance(value, (str, dict))
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string.
            try:
                value = config[section][key] = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{section}.{key} must be a {type(default).__name__} (like {default!r}), got {value!r}."
        )


def validate(config: Config) -> None:
    """Types (from the defaults table) and ranges. Paths are checked when the run starts, where they are used."""
    for section, keys in DEFAULTS.items():
        for key in keys:
            _check_type(config, section, key)
    for dotted, spec in BOUNDS.items():
        section, key = dotted.split(".")
        spec.check(dotted, config[section][key])
    data, run, optimizer, lora = (config[k] for k in ("data", "run", "optimizer", "lora"))
    if data["num_frames"] < 2 and config.mode != "syncnet":
        raise ConfigError(f"data.num_frames must be at least 2 for UNet training, got {data['num_frames']}.")
    if data["resolution"] % 8:
        raise ConfigError(f"data.resolution must be a multiple of 8 (the VAE's factor), got {data['resolution']}.")
    if optimizer["lr"] == 0 or optimizer["max_grad_norm"] == 0:
        raise ConfigError("optimizer.lr and optimizer.max_grad_norm must be positive.")
