"""Temporal ("motion") modules of the LatentSync UNet, after AnimateDiff's `Vanilla` motion module.

A motion module lets every spatial position attend over the frames of its clip. It follows each spatial layer
of the blocks listed in ``motion_module_resolutions`` (stage-2 configs) and starts as an identity, because its
output projection is zero-initialised.

All token-wise layers (Linear, LayerNorm, feed-forward) do not care how tokens are grouped, so the module
arranges them once as ``(b * h * w, f, c)`` sequences over frames and keeps that layout throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .attention import TRANSFORMER_NORM_EPS, Attention, FeedForward
from .resnet import frames_to_batch

# The reference builds the motion-module GroupNorm with its default of 32 groups, whatever `norm_num_groups` says.
MOTION_MODULE_NORM_GROUPS = 32
TEMPORAL_SELF_ATTENTION = "Temporal_Self"


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed frame-position table ``pe`` ``(1, max_len, dim)``: ``pe[p, 2i] = sin(p * w_i)``,
    ``pe[p, 2i + 1] = cos(p * w_i)``, ``w_i = exp(-2i * ln(10000) / dim)``.

    ``pe`` is a persistent buffer: official checkpoints store it and strict loading expects it.
    """

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        frequencies = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        table = torch.zeros(1, max_len, dim)
        table[0, :, 0::2] = torch.sin(position * frequencies)
        table[0, :, 1::2] = torch.cos(position * frequencies)
        self.register_buffer("pe", table)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(n, f, dim)`` -> ``(n, f, dim)`` with the first ``f`` table rows added."""
        return hidden_states + self.pe[:, : hidden_states.shape[1]]


class TemporalSelfAttention(Attention):
    """Self-attention over the frames of each spatial position, with the position table added to its input.

    The table is added only to what feeds q/k/v; the caller's residual stays without it.
    """

    def __init__(self, dim: int, heads: int, position_encoding_max_len: int | None):
        super().__init__(dim, heads)
        self.pos_encoder = (
            SinusoidalPositionalEncoding(dim, position_encoding_max_len) if position_encoding_max_len else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(b * h * w, f, dim)`` -> ``(b * h * w, f, dim)``."""
        if self.pos_encoder is not None:
            hidden_states = self.pos_encoder(hidden_states)
        return self.processor(self, hidden_states)


class TemporalTransformerBlock(nn.Module):
    """For each temporal attention: [LayerNorm -> attention] + x; then [LayerNorm -> GEGLU FF] + x."""

    def __init__(self, dim: int, heads: int, num_attentions: int, position_encoding_max_len: int | None):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalSelfAttention(dim, heads, position_encoding_max_len) for _ in range(num_attentions)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attentions)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(b * h * w, f, dim)`` -> ``(b * h * w, f, dim)``."""
        for attention, norm in zip(self.attention_blocks, self.norms):
            hidden_states = attention(norm(hidden_states)) + hidden_states
        return self.ff(self.ff_norm(hidden_states)) + hidden_states


class TemporalTransformer3DModel(nn.Module):
    """GroupNorm per frame -> Linear in -> temporal transformer blocks -> Linear out -> + input.

    ``(b, c, f, h, w)`` -> ``(b, c, f, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        heads: int,
        inner_dim: int,
        num_layers: int,
        num_attentions: int,
        position_encoding_max_len: int | None,
    ):
        super().__init__()
        self.norm = nn.GroupNorm(MOTION_MODULE_NORM_GROUPS, in_channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                TemporalTransformerBlock(inner_dim, heads, num_attentions, position_encoding_max_len)
                for _ in range(num_layers)
            ]
        )
        self.proj_out = nn.Linear(inner_dim, in_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, num_frames, height, width = hidden_states.shape

        # 1. normalise each frame, then sequences over frames per position: (b * h * w, f, c)
        normed = self.norm(frames_to_batch(hidden_states)).reshape(batch, num_frames, channels, height * width)
        tokens = self.proj_in(normed.permute(0, 3, 1, 2).reshape(batch * height * width, num_frames, channels))

        # 2. temporal transformer blocks
        for block in self.transformer_blocks:
            tokens = block(tokens)

        # 3. project out, back to (b, c, f, h, w), add the input
        tokens = self.proj_out(tokens).reshape(batch, height, width, num_frames, channels)
        return tokens.permute(0, 4, 3, 1, 2) + hidden_states


class VanillaTemporalModule(nn.Module):
    """AnimateDiff's `Vanilla` motion module: ``(b, c, f, h, w)`` -> ``(b, c, f, h, w)``.

    Args (the ``motion_module_kwargs`` of the YAML config):
        in_channels: channels of the block it follows.
        num_attention_heads: heads of the temporal attentions.
        num_transformer_block: temporal transformer blocks.
        attention_block_types: one ``"Temporal_Self"`` per attention in a block.
        temporal_position_encoding: add the sinusoid frame-position table before each attention.
        temporal_position_encoding_max_len: rows of that table, i.e. the most frames a clip may have.
        temporal_attention_dim_div: the temporal transformer works on ``in_channels // div`` channels.
        zero_initialize: zero the output projection, so a new module is an identity.
    """

    def __init__(
        self,
        in_channels: int,
        num_attention_heads: int = 8,
        num_transformer_block: int = 1,
        attention_block_types: Sequence[str] = (TEMPORAL_SELF_ATTENTION, TEMPORAL_SELF_ATTENTION),
        temporal_position_encoding: bool = True,
        temporal_position_encoding_max_len: int = 24,
        temporal_attention_dim_div: int = 1,
        zero_initialize: bool = True,
    ):
        super().__init__()
        unsupported = [name for name in attention_block_types if name != TEMPORAL_SELF_ATTENTION]
        if unsupported:
            raise ConfigError(
                f"attention_block_types {unsupported} are not supported; every official config uses "
                f"{TEMPORAL_SELF_ATTENTION!r} only."
            )
        head_size = in_channels // num_attention_heads // temporal_attention_dim_div
        self.temporal_transformer = TemporalTransformer3DModel(
            in_channels,
            heads=num_attention_heads,
            inner_dim=num_attention_heads * head_size,
            num_layers=num_transformer_block,
            num_attentions=len(attention_block_types),
            position_encoding_max_len=temporal_position_encoding_max_len if temporal_position_encoding else None,
        )
        if zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(b, c, f, h, w)`` -> ``(b, c, f, h, w)``."""
        return self.temporal_transformer(hidden_states)


def get_motion_module(in_channels: int, motion_module_type: str, motion_module_kwargs: dict) -> VanillaTemporalModule:
    if motion_module_type != "Vanilla":
        raise ConfigError(f"motion_module_type {motion_module_type!r} is not supported; use 'Vanilla'.")
    return VanillaTemporalModule(in_channels, **motion_module_kwargs)
