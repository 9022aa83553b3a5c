"""Attention and feed-forward layers shared by the models, and the UNet's per-frame spatial transformer.

As in diffusers, an `Attention` module owns the projection weights (``to_q``, ``to_k``, ``to_v``, ``to_out.0``)
and delegates the arithmetic to a processor object (`AttnProcessor` uses `multi_head_attention`), so the kernel
can be swapped without touching weights. Key names equal those of diffusers' ``Attention`` and ``FeedForward``
(``activation_fn="geglu"``): the UNet's match the SD-1.5 UNet (which is how stage-1 training starts from SD-1.5),
the SyncNet's the official StableSyncNet. Whisper keeps OpenAI's key names and shares `multi_head_attention`.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import batch_to_frames, frames_to_batch

TRANSFORMER_NORM_EPS = 1e-6
FEED_FORWARD_MULT = 4


class AttentionProcessor(Protocol):
    def __call__(
        self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def split_heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """``(n, l, heads * head_size)`` -> ``(n, heads, l, head_size)``."""
    batch, length, channels = tensor.shape
    return tensor.reshape(batch, length, heads, channels // heads).transpose(1, 2)


def merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    """``(n, heads, l, head_size)`` -> ``(n, l, heads * head_size)``."""
    batch, heads, length, head_size = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, length, heads * head_size)


def multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of projected tokens with `F.scaled_dot_product_attention` (softmax scale
    ``1 / sqrt(head_size)``, no mask): query ``(n, l, c)``, key and value ``(n, s, c)`` -> ``(n, l, c)``."""
    query, key, value = (split_heads(tensor, heads) for tensor in (query, key, value))
    # the output of sdp = (n, heads, l, head_size)
    return merge_heads(F.scaled_dot_product_attention(query, key, value))


class AttnProcessor:
    """`multi_head_attention` of the projections, then the output projection (and its dropout).

    hidden_states ``(n, l, query_dim)``, encoder_hidden_states ``(n, s, cross_attention_dim)`` or None for
    self-attention -> ``(n, l, query_dim)``.
    """

    def __call__(
        self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        hidden_states = multi_head_attention(query, key, value, attn.heads)
        for layer in attn.to_out:
            hidden_states = layer(hidden_states)
        return hidden_states


class Attention(nn.Module):
    """Weights of one multi-head attention: q/k/v projections (biased with ``bias``), output projection with bias
    and dropout (diffusers' ``to_out.0`` / ``to_out.1``).

    Args:
        query_dim: channels of the queries (and of the output).
        heads: number of heads; head size is ``query_dim // heads``.
        cross_attention_dim: channels of the keys/values source; None for self-attention.
        bias: q/k/v projections with bias (the SyncNet's; the UNet's have none).
        dropout: dropout after the output projection.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        cross_attention_dim: int | None = None,
        bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        context_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, query_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, query_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim), nn.Dropout(dropout)])
        self.processor: AttentionProcessor = AttnProcessor()

    def set_processor(self, processor: AttentionProcessor) -> None:
        self.processor = processor

    def split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(n, l, heads * head_size)`` -> ``(n, heads, l, head_size)`` (for processors)."""
        return split_heads(tensor, self.heads)

    merge_heads = staticmethod(merge_heads)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states ``(n, l, query_dim)``, encoder_hidden_states ``(n, s, cross_attention_dim)`` or None
        -> ``(n, l, query_dim)``."""
        return self.processor(self, hidden_states, encoder_hidden_states)


class GEGLU(nn.Module):
    """Linear ``dim -> 2 * inner_dim``, split into value and gate halves, ``value * gelu(gate)`` (exact erf GELU)."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim * 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU ``dim -> 4 * dim``, dropout, Linear ``4 * dim -> dim``: ``(..., dim)`` -> ``(..., dim)``; keys
    ``net.0.proj`` and ``net.2`` as diffusers' ``FeedForward(dim, activation_fn="geglu")``."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        inner_dim = dim * FEED_FORWARD_MULT
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            hidden_states = layer(hidden_states)
        return hidden_states


class BasicTransformerBlock(nn.Module):
    """[LayerNorm -> self-attention] + x -> [LayerNorm -> cross-attention to audio] + x -> [LayerNorm -> GEGLU FF] + x.

    Without ``cross_attention_dim`` the cross-attention (``norm2``/``attn2``) is left out.
    """

    def __init__(self, dim: int, heads: int, cross_attention_dim: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, cross_attention_dim=cross_attention_dim)
        else:
            self.norm2 = self.attn2 = None
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states ``(b * f, h * w, dim)``, encoder_hidden_states ``(b * f, n, d)`` -> ``(b * f, h * w, dim)``."""
        hidden_states = self.attn1(self.norm1(hidden_states)) + hidden_states
        if self.attn2 is not None:
            hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


class Transformer3DModel(nn.Module):
    """Per-frame spatial transformer: each frame's ``h * w`` tokens attend to each other and to that frame's audio.

    GroupNorm (eps 1e-6) -> 1x1 conv -> tokens -> transformer blocks -> 1x1 conv -> + input.

    Args:
        in_channels: channels of the feature map (and of the tokens).
        heads: attention heads (head size ``in_channels // heads``).
        cross_attention_dim: channels of the audio embeddings; None builds no cross-attention.
        norm_num_groups: GroupNorm groups.
        num_layers: transformer blocks.
    """

    def __init__(
        self,
        in_channels: int,
        heads: int,
        cross_attention_dim: int | None,
        norm_num_groups: int = 32,
        num_layers: int = 1,
    ):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(in_channels, heads, cross_attention_dim) for _ in range(num_layers)]
        )
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states ``(b, c, f, h, w)``, encoder_hidden_states ``(b * f, n, d)`` -> ``(b, c, f, h, w)``."""
        num_frames = hidden_states.shape[2]
        residual = frames_to_batch(hidden_states)
        batch_frames, channels, height, width = residual.shape

        # 1. project in and flatten each frame to tokens: (b * f, h * w, c)
        tokens = self.proj_in(self.norm(residual))
        tokens = tokens.permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)

        # 2. transformer blocks
        for block in self.transformer_blocks:
            tokens = block(tokens, encoder_hidden_states)

        # 3. back to a feature map, project out, add the input
        tokens = tokens.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)
        return batch_to_frames(self.proj_out(tokens) + residual, num_frames)
