"""The `accelerate` side of a run: the Accelerator (DDP, DeepSpeed, mixed precision, TensorBoard), optimizer and
learning-rate schedule that respect a DeepSpeed config, and logging.

On a machine without CUDA the process group uses ``gloo`` (accelerate needs ``InitProcessGroupKwargs(backend=
"gloo")`` there), and DeepSpeed's shared-memory all-reduce extension, which it would otherwise compile for minutes
on first use, is not built: gloo does the communication.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Iterable

import torch

from latentsync.errors import ConfigError

from .config import DEEPSPEED_PRESETS, Config

logger = logging.getLogger("train")

# Package data (pyproject's [tool.setuptools.package-data]), found wherever the package is installed.
DEEPSPEED_DIR = resources.files("train") / "deepspeed"
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def setup_logging(debug: bool = False) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.DEBUG if debug else logging.INFO,
    )


def deepspeed_config_path(name: str) -> Path:
    """A preset of ``train/deepspeed/`` (``zero2``, ``zero2_offload``, ``zero3``) or a JSON file."""
    path = DEEPSPEED_DIR / f"{name}.json" if name in DEEPSPEED_PRESETS else Path(name)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {name!r} is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a file.")
    return path


def deepspeed_owns_optimizer(config: Config) -> bool:
    """True when the DeepSpeed JSON has an ``optimizer`` section (e.g. CPU-offloaded Adam)."""
    name = config["run"]["deepspeed"]
    return bool(name) and "optimizer" in json.loads(deepspeed_config_path(name).read_text())


def _skip_deepspeed_shm_extension() -> None:
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def create_accelerator(config: Config, output_dir: Path):
    """The run's `Accelerator`.

    DeepSpeed is used when ``run.deepspeed`` names a config; the process is then expected to have been started by
    ``accelerate launch`` (``python -m train ... --deepspeed`` does that).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration

    run = config["run"]
    handlers = []
    launched = "LOCAL_RANK" in os.environ  # started by `accelerate launch` / torchrun
    if launched and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    plugin = None
    if run["deepspeed"]:
        from accelerate import DeepSpeedPlugin

        if not torch.cuda.is_available():
            _skip_deepspeed_shm_extension()
        plugin = DeepSpeedPlugin(
            hf_ds_config=str(deepspeed_config_path(run["deepspeed"])),
            gradient_accumulation_steps=run["gradient_accumulation_steps"],
            gradient_clipping=config["optimizer"]["max_grad_norm"],
        )
    return Accelerator(
        mixed_precision=run["mixed_precision"],
        gradient_accumulation_steps=run["gradient_accumulation_steps"],
        log_with="tensorboard" if run["report_to"] else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=run["seed"]),
        deepspeed_plugin=plugin,
        kwargs_handlers=handlers,
    )


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def create_optimizer(config: Config, parameters: Iterable[torch.nn.Parameter], num_processes: int):
    """AdamW over ``parameters`` (the reference's optimizer), or accelerate's `DummyOptim` when the DeepSpeed config
    defines the optimizer (DeepSpeed then builds it, e.g. its CPU Adam for offloading)."""
    settings = config["optimizer"]
    lr = settings["lr"] * (num_processes if settings["scale_lr"] else 1)
    parameters = list(parameters)
    if deepspeed_owns_optimizer(config):
        from accelerate.utils import DummyOptim

        return DummyOptim(parameters, lr=lr, weight_decay=settings["weight_decay"])
    return torch.optim.AdamW(
        parameters, lr=lr, betas=tuple(settings["betas"]), eps=settings["eps"], weight_decay=settings["weight_decay"]
    )


def create_lr_scheduler(config: Config, optimizer, num_processes: int):
    """diffusers' `get_scheduler` (``constant`` by default), counting steps as its stepper does.

    accelerate steps a prepared scheduler once per process at each optimizer step, so its step counts are
    multiplied by the number of processes. When the DeepSpeed config defines the optimizer (``zero2_offload``),
    the DeepSpeed engine owns the scheduler and steps it once per optimizer step: its counts stay as configured.
    """
    from diffusers.optimization import get_scheduler

    settings = config["optimizer"]
    owned_by_deepspeed = deepspeed_owns_optimizer(config)
    steps_per_update = 1 if owned_by_deepspeed else num_processes

    def build(optimizer):
        return get_scheduler(
            settings["lr_scheduler"],
            optimizer=optimizer,
            num_warmup_steps=settings["lr_warmup_steps"] * steps_per_update,
            num_training_steps=config["run"]["max_train_steps"] * steps_per_update,
        )

    if owned_by_deepspeed:
        from accelerate.utils import DummyScheduler

        return DummyScheduler(optimizer, lr_scheduler_callable=build)
    return build(optimizer)
