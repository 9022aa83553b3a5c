"""``python -m train stage1|stage2|lora|syncnet --config FILE [section.key=value ...]`` and ``python -m train data ...``.

Training runs in this process, or, with ``--num-processes N`` / ``--deepspeed PRESET`` / several machines, in
processes started by ``accelerate launch`` with this same command line (``--print-command`` prints that line
instead, for multi-node and SLURM jobs). `main` owns the exit codes: 0 done, 1 a configuration or data error
(one clear line; ``--debug`` shows the traceback) or a missing training package (the command that installs
it), 130 interrupted, 143 terminated.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys

from latentsync.errors import exit_with_status

logger = logging.getLogger("train")

_MODE_HELP = {
    "stage1": "train the whole UNet without motion modules (from SD-1.5 or a LatentSync UNet), noise loss only",
    "stage2": "train motion modules + attentions with the sync / LPIPS / temporal losses (stage2_efficient: "
    "motion modules + audio cross-attention)",
    "lora": "train LoRA adapters (audio cross-attention, motion modules or both) on a frozen UNet",
    "syncnet": "train StableSyncNet (cosine similarity + BCE, 16 frames, lower half)",
}


def _add_training_parser(subparsers, mode: str) -> None:
    from .config import DEEPSPEED_PRESETS

    parser = subparsers.add_parser(mode, help=_MODE_HELP[mode], description=_MODE_HELP[mode])
    parser.add_argument(
        "--config", default=mode,
        help=f"YAML file, or the name of a packaged config in train/configs (default: {mode})",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, parsed as YAML")
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint (ckpt.resume=latest)")
    launch = parser.add_argument_group("multi-process (re-launched through `accelerate launch`)")
    launch.add_argument("--num-processes", type=int, default=1, help="processes on this machine (GPUs)")
    launch.add_argument(
        "--deepspeed", metavar="PRESET",
        help=f"DeepSpeed config: {', '.join(DEEPSPEED_PRESETS)} (train/deepspeed/*.json) or a JSON path",
    )  # fmt: skip
    launch.add_argument("--num-machines", type=int, default=1, help="machines of a multi-node run")
    launch.add_argument("--machine-rank", default="0", help="rank of this machine (e.g. $SLURM_NODEID)")
    launch.add_argument("--main-process-ip", default=None, help="address of machine 0 (e.g. $MASTER_ADDR)")
    launch.add_argument("--main-process-port", default=None, help="port on machine 0 (e.g. 29500)")
    launch.add_argument("--print-command", action="store_true", help="print the `accelerate launch` line and exit")
    parser.set_defaults(run=_run_training, mode=mode)


def build_parser() -> argparse.ArgumentParser:
    # imported here, inside `exit_with_status`, so that a missing torch is a one-line hint
    from .config import MODES

    parser = argparse.ArgumentParser(prog="python -m train", description="Train LatentSync models.")
    parser.add_argument("--debug", action="store_true", help="debug logs and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mode in MODES:
        _add_training_parser(subparsers, mode)
    from . import memory
    from .data import prepare

    prepare.add_parser(subparsers)
    memory.add_parser(subparsers)
    return parser


def _child_arguments(args: argparse.Namespace) -> list[str]:
    """This command line as the launched processes run it (launch options become config overrides)."""
    arguments = [args.mode, "--config", args.config, *args.overrides]
    if args.deepspeed:
        arguments.append(f"run.deepspeed={args.deepspeed}")
    if args.resume:
        arguments.append("--resume")
    return (["--debug"] if args.debug else []) + arguments


def launch_command(args: argparse.Namespace, mixed_precision: str) -> list[str]:
    """The ``accelerate launch`` command that runs this training on ``--num-processes`` x ``--num-machines``."""
    import torch

    from .runtime import deepspeed_config_path

    total = args.num_processes * args.num_machines
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(total), "--num_machines", str(args.num_machines),
        "--machine_rank", str(args.machine_rank), "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
    ]  # fmt: skip
    if args.main_process_ip:
        command += ["--main_process_ip", args.main_process_ip]
    if args.main_process_port:
        command += ["--main_process_port", str(args.main_process_port)]
    if args.deepspeed:
        command += ["--use_deepspeed", "--deepspeed_config_file", str(deepspeed_config_path(args.deepspeed))]
    elif total > 1:
        command.append("--multi_gpu" if torch.cuda.is_available() else "--cpu")
    return command + ["-m", "train", *_child_arguments(args)]


def _run_training(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + (["ckpt.resume=latest"] if args.resume else [])
    if args.deepspeed:
        overrides.append(f"run.deepspeed={args.deepspeed}")
    from .config import load_config

    config = load_config(args.mode, args.config, overrides)
    if args.print_command or args.deepspeed or args.num_processes * args.num_machines > 1:
        command = launch_command(args, config["run"]["mixed_precision"])
        if args.print_command:
            print(shlex.join(command))
            return 0
        if "LOCAL_RANK" not in os.environ:
            logger.info("Launching: %s", shlex.join(command))
            return subprocess.call(command)
    if config.mode == "syncnet":
        from .syncnet_trainer import train_syncnet

        export_dir = train_syncnet(config)
    else:
        from .unet_trainer import train_unet

        export_dir = train_unet(config)
    logger.info("Done. Exported model: %s", export_dir)
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv

    def run() -> int | None:
        from .runtime import setup_logging

        parser = build_parser()
        # Overrides may stand between or after options (`--config X a.b=1 --resume c.d=2`).
        args, extra = parser.parse_known_args(argv)
        unknown = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        setup_logging(args.debug)
        return args.run(args)

    exit_with_status(run, debug="--debug" in argv)
