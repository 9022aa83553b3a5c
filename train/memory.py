"""``python -m train memory --config NAME``: what one training step of a config needs, counted and measured.

Counted for the config's own architecture (built on the meta device, so full-size models cost nothing):
parameters, trainable parameters, and the bytes of float32 weights, their gradients and AdamW's two moments.

Measured on the device at hand: the peak memory of one UNet training step (noise loss: forward, backward, AdamW
step) on random inputs at ``--resolution`` and ``--num-frames`` (batch ``data.batch_size``), with the config's
gradient checkpointing. On CUDA that is ``torch.cuda.max_memory_allocated`` (the allocator's peak, the number that
must fit the card). On a CPU a full-size step does not fit an ordinary machine's RAM in reasonable time, so pass a
reduced size (``--resolution 64 --num-frames 2`` or a ``tiny_*`` config): the increase of the process's peak
resident memory is reported, labelled as such. The VAE, the SyncNet and LPIPS / VideoMAE of stage 2 come on top
(frozen; their weights are in the line "frozen models" when the config names them).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from .config import MODES, config_file_mode, load_config

GIB = 1024**3


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "memory",
        help="parameters, optimizer state and the measured peak memory of one training step of a config",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--config", required=True, help="packaged config name or YAML file (its `mode:` decides)")
    parser.add_argument("--mode", choices=MODES, help="training mode when the file has no `mode:`")
    parser.add_argument("--resolution", type=int, help="face resolution of the measured step (default: data.resolution)")
    parser.add_argument("--num-frames", type=int, help="frames of the measured step (default: data.num_frames)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1")
    parser.add_argument("--no-step", action="store_true", help="count only; do not run a step")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    parser.set_defaults(run=run)


def _unet(config, device):
    from latentsync.models.unet import UNet3DConditionModel

    from .unet_trainer import select_trainable, unet_architecture

    with torch.device(device):
        unet = UNet3DConditionModel.from_config(unet_architecture(config))
    select_trainable(unet, config)
    return unet


def count(config) -> dict:
    """Parameters and trainable parameters of the config's UNet, built on the meta device."""
    unet = _unet(config, "meta")
    parameters = sum(p.numel() for p in unet.parameters())
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return {"parameters": parameters, "trainable": trainable}


def measure_step(config, device: torch.device, resolution: int, num_frames: int) -> tuple[float, float]:
    """Peak bytes of one training step (see the module docstring) and its seconds."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    else:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    began = time.perf_counter()
    unet = _unet(config, device)
    if config["run"]["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    unet.train()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config["optimizer"]["lr"])
    batch, side = config["data"]["batch_size"], resolution // 8
    sample = torch.randn(batch, unet.config.in_channels, num_frames, side, side, device=device)
    audio = torch.randn(batch, num_frames, 50, unet.config.cross_attention_dim, device=device)
    target = torch.randn(batch, unet.config.out_channels, num_frames, side, side, device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    loss = torch.nn.functional.mse_loss(unet(sample, timesteps, audio), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
    return float(peak), time.perf_counter() - began


def run(args: argparse.Namespace) -> int:
    from latentsync.pipeline.settings import resolve_device

    mode = args.mode or config_file_mode(args.config) or "stage2"
    if mode == "syncnet":
        from latentsync.errors import ConfigError

        raise ConfigError("`memory` measures UNet training configs (stage1, stage2, lora); SyncNet configs are small.")
    config = load_config(mode, args.config, args.overrides)
    data = config["data"]
    resolution = args.resolution or data["resolution"]
    num_frames = args.num_frames or data["num_frames"]
    numbers = count(config)
    weights = 4 * numbers["parameters"]
    gradients = 4 * numbers["trainable"]
    adam = 8 * numbers["trainable"]
    print(f"config {args.config} ({mode}): UNet {config['model']['unet'] if isinstance(config['model']['unet'], str) else 'inline'}")
    print(f"parameters            {numbers['parameters'] / 1e6:10.1f} M   float32 weights {weights / GIB:7.2f} GiB")
    print(f"trainable parameters  {numbers['trainable'] / 1e6:10.1f} M   gradients       {gradients / GIB:7.2f} GiB")
    print(f"optimizer state (AdamW, 2 float32 moments)           {adam / GIB:7.2f} GiB")
    print(f"weights + gradients + optimizer                      {(weights + gradients + adam) / GIB:7.2f} GiB")
    if args.no_step:
        return 0
    device = torch.device(resolve_device(args.device))
    peak, seconds = measure_step(config, device, resolution, num_frames)
    what = (
        "peak allocated (torch.cuda.max_memory_allocated)"
        if device.type == "cuda"
        else "increase of the peak resident memory (CPU; reduced sizes are not the GPU's numbers)"
    )
    print(
        f"one step at {resolution}x{resolution}, {num_frames} frames, batch {data['batch_size']}, gradient "
        f"checkpointing {'on' if config['run']['gradient_checkpointing'] else 'off'}, on {device}: "
        f"{peak / GIB:.2f} GiB {what}, {seconds:.1f} s"
    )
    sys.stdout.flush()
    return 0
