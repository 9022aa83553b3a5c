"""Encoder, middle and decoder blocks of the LatentSync UNet.

A block is a stack of layers; layer ``i`` is ``resnets[i]``, then (in cross-attention blocks) the spatial
transformer ``attentions[i]``, then (where enabled) the temporal module ``motion_modules[i]``. The block types of
the YAML config map to two classes: ``CrossAttnDownBlock3D`` / ``DownBlock3D`` are `DownBlock3D` with or without
transformers, ``CrossAttnUpBlock3D`` / ``UpBlock3D`` are `UpBlock3D` likewise.

With gradient checkpointing on (`UNet3DConditionModel.enable_gradient_checkpointing`), each resnet, transformer
and motion module is recomputed in the backward pass instead of keeping its activations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn

from ..errors import ConfigError
from .attention import Transformer3DModel
from .motion_module import get_motion_module
from .resnet import Downsample3D, ResnetBlock3D, Upsample3D

DOWN_BLOCK_TYPES = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}  # type -> has transformers
UP_BLOCK_TYPES = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}
MID_BLOCK_TYPE = "UNetMidBlock3DCrossAttn"


@dataclass(frozen=True)
class LayerSpec:
    """What every layer of a block shares.

    Attributes:
        temb_channels: width of the time embedding.
        norm_num_groups: GroupNorm groups of resnets and transformers.
        norm_eps: GroupNorm eps of the resnets.
        heads: attention heads of the spatial transformers.
        cross_attention_dim: audio embedding width; None builds transformers without cross-attention.
        motion_module_type: ``"Vanilla"``.
        motion_module_kwargs: the YAML ``motion_module_kwargs``.
    """

    temb_channels: int
    norm_num_groups: int
    norm_eps: float
    heads: int
    cross_attention_dim: int | None
    motion_module_type: str
    motion_module_kwargs: dict


class UNetBlock3D(nn.Module):
    """Holds the layer lists and runs a module with or without gradient checkpointing.

    Args:
        resnets: the ResNet blocks, one per layer (the mid block has one more).
        num_layers: layers with a transformer / motion module.
        channels: output channels of the layers.
        spec: what the layers share.
        with_attention: build spatial transformers.
        with_motion: build motion modules.
    """

    def __init__(
        self,
        resnets: list[ResnetBlock3D],
        num_layers: int,
        channels: int,
        spec: LayerSpec,
        with_attention: bool,
        with_motion: bool,
    ):
        super().__init__()
        # Registered in the reference order (attentions, resnets, motion_modules), so state dicts list keys alike.
        self.attentions = (
            nn.ModuleList(
                [
                    Transformer3DModel(channels, spec.heads, spec.cross_attention_dim, spec.norm_num_groups)
                    for _ in range(num_layers)
                ]
            )
            if with_attention
            else None
        )
        self.resnets = nn.ModuleList(resnets)
        self.motion_modules = (
            nn.ModuleList(
                [
                    get_motion_module(channels, spec.motion_module_type, spec.motion_module_kwargs)
                    for _ in range(num_layers)
                ]
            )
            if with_motion
            else None
        )
        self.gradient_checkpointing = False

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            # Set by `UNet3DConditionModel.enable_gradient_checkpointing`.
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def layer(
        self, index: int, hidden_states: torch.Tensor, temb: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """resnet -> transformer -> motion module of layer ``index``; ``(b, c, f, h, w)`` -> ``(b, c', f, h, w)``."""
        hidden_states = self._run(self.resnets[index], hidden_states, temb)
        if self.attentions is not None:
            hidden_states = self._run(self.attentions[index], hidden_states, encoder_hidden_states)
        if self.motion_modules is not None:
            hidden_states = self._run(self.motion_modules[index], hidden_states)
        return hidden_states


class DownBlock3D(UNetBlock3D):
    """``num_layers`` layers, then an optional stride-2 conv. Every layer output and the downsampled output are skips.

    ``(b, in_channels, f, h, w)`` -> ``(b, out_channels, f, h / 2, w / 2)`` (``h, w`` unchanged without downsampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        spec: LayerSpec,
        with_attention: bool,
        with_motion: bool,
        add_downsample: bool,
        downsample_padding: int = 1,
    ):
        resnets = [
            ResnetBlock3D(
                in_channels if index == 0 else out_channels,
                out_channels,
                spec.temb_channels,
                groups=spec.norm_num_groups,
                eps=spec.norm_eps,
            )
            for index in range(num_layers)
        ]
        super().__init__(resnets, num_layers, out_channels, spec, with_attention, with_motion)
        self.downsamplers = (
            nn.ModuleList([Downsample3D(out_channels, padding=downsample_padding)]) if add_downsample else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        num_skips: int | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """hidden_states ``(b, c_in, f, h, w)``, temb ``(b, temb_channels)``, encoder_hidden_states ``(b * f, n, d)``
        -> (hidden states, skips): every layer's output, then the downsampled output, each ``(b, c_out, f, ., .)``;
        the hidden states are the last skip. With ``num_skips`` only the layers that produce the first
        ``num_skips`` skips run."""
        skips = tuple(islice(self._skips(hidden_states, temb, encoder_hidden_states), num_skips))
        return skips[-1], skips

    def _skips(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> Iterator[torch.Tensor]:
        for index in range(len(self.resnets)):
            hidden_states = self.layer(index, hidden_states, temb, encoder_hidden_states)
            yield hidden_states
        if self.downsamplers is not None:
            yield self.downsamplers[0](hidden_states)


class UpBlock3D(UNetBlock3D):
    """``num_layers`` layers, each on ``cat([hidden, skip])`` (skips consumed last first), then optional upsampling.

    Args:
        in_channels: channels of the deepest skip this block consumes last (the previous block's input width).
        out_channels: channels of this block.
        prev_output_channel: channels of the hidden states coming from below.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        num_layers: int,
        spec: LayerSpec,
        with_attention: bool,
        with_motion: bool,
        add_upsample: bool,
    ):
        resnets = []
        for index in range(num_layers):
            skip_channels = in_channels if index == num_layers - 1 else out_channels
            hidden_channels = prev_output_channel if index == 0 else out_channels
            resnets.append(
                ResnetBlock3D(
                    hidden_channels + skip_channels,
                    out_channels,
                    spec.temb_channels,
                    groups=spec.norm_num_groups,
                    eps=spec.norm_eps,
                )
            )
        super().__init__(resnets, num_layers, out_channels, spec, with_attention, with_motion)
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels)]) if add_upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
        layers: range | None = None,
    ) -> torch.Tensor:
        """Run ``layers`` (all by default), layer ``layers[i]`` on ``cat([hidden_states, skips[-1 - i]])``, then
        upsample if the block's last layer ran.

        hidden_states ``(b, c_prev, f, h, w)``, one skip ``(b, c_skip, f, h, w)`` per layer run
        -> ``(b, c_out, f, H, W)`` with ``(H, W) = upsample_size`` when the block upsamples, else ``(h, w)``.
        """
        layers = range(len(self.resnets)) if layers is None else layers
        for position, index in enumerate(layers):
            hidden_states = torch.cat([hidden_states, skips[-1 - position]], dim=1)
            hidden_states = self.layer(index, hidden_states, temb, encoder_hidden_states)
        if self.upsamplers is not None and len(self.resnets) - 1 in layers:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


class UNetMidBlock3DCrossAttn(UNetBlock3D):
    """resnet -> transformer -> (motion module) -> resnet, all at ``channels``: ``(b, c, f, h, w)`` -> same shape."""

    def __init__(self, channels: int, spec: LayerSpec, with_motion: bool, output_scale_factor: float = 1.0):
        resnets = [
            ResnetBlock3D(
                channels,
                channels,
                spec.temb_channels,
                groups=spec.norm_num_groups,
                eps=spec.norm_eps,
                output_scale_factor=output_scale_factor,
            )
            for _ in range(2)
        ]
        super().__init__(resnets, 1, channels, spec, with_attention=True, with_motion=with_motion)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """hidden_states ``(b, c, f, h, w)``, temb ``(b, temb_channels)``, encoder_hidden_states ``(b * f, n, d)``."""
        hidden_states = self.layer(0, hidden_states, temb, encoder_hidden_states)
        return self._run(self.resnets[1], hidden_states, temb)


def block_has_attention(block_type: str, known: dict[str, bool]) -> bool:
    """Whether a YAML block type has spatial transformers; ConfigError for unknown types."""
    if block_type not in known:
        raise ConfigError(f"Unknown block type {block_type!r}; expected one of {', '.join(known)}.")
    return known[block_type]
