"""Convolutional pieces of the LatentSync UNet: frame-wise 2-D convolutions, ResNet blocks, down/up-sampling.

Video tensors are ``(b, c, f, h, w)``. Every convolution is a 2-D convolution applied to each frame on its own
(the weights are those of SD-1.5, so its keys and shapes are the 2-D ones). GroupNorm, on the other hand, is
applied to the 5-D tensor as it is, so its statistics are taken over all frames of a clip together, exactly
as in the reference model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def frames_to_batch(hidden_states: torch.Tensor) -> torch.Tensor:
    """``(b, c, f, h, w)`` -> ``(b * f, c, h, w)``, frames of one sample contiguous in the batch."""
    batch, channels, num_frames, height, width = hidden_states.shape
    return hidden_states.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, channels, height, width)


def batch_to_frames(hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(b * f, c, h, w)`` -> ``(b, c, f, h, w)``; the inverse of `frames_to_batch`."""
    batch_frames, channels, height, width = hidden_states.shape
    return hidden_states.reshape(batch_frames // num_frames, num_frames, channels, height, width).permute(0, 2, 1, 3, 4)


class FrameConv2d(nn.Conv2d):
    """A `nn.Conv2d` applied to every frame: ``(b, c_in, f, h, w)`` -> ``(b, c_out, f, h', w')``."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        num_frames = hidden_states.shape[2]
        return batch_to_frames(super().forward(frames_to_batch(hidden_states)), num_frames)


class ResnetBlock3D(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv -> + time projection -> GroupNorm -> SiLU -> 3x3 conv, plus the shortcut.

    ``(b, in_channels, f, h, w)``, temb ``(b, temb_channels)`` -> ``(b, out_channels, f, h, w)``. The shortcut is a
    1x1 conv when the channel counts differ; the sum is divided by ``output_scale_factor``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int = 32,
        eps: float = 1e-5,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.output_scale_factor = output_scale_factor

        self.norm1 = nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=eps)
        self.conv1 = FrameConv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(num_groups=groups, num_channels=out_channels, eps=eps)
        self.conv2 = FrameConv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = (
            FrameConv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """input_tensor ``(b, c_in, f, h, w)``, temb ``(b, temb_channels)`` -> ``(b, c_out, f, h, w)``."""
        hidden_states = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        hidden_states = hidden_states + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None, None]
        hidden_states = self.conv2(self.nonlinearity(self.norm2(hidden_states)))

        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        return (shortcut + hidden_states) / self.output_scale_factor


class Downsample3D(nn.Module):
    """Stride-2 3x3 conv per frame: ``(b, c, f, h, w)`` -> ``(b, c, f, h', w')`` with ``h' = (h + 2p - 3) // 2 + 1``."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden_states)


class Upsample3D(nn.Module):
    """Nearest-neighbour resize of every frame to ``size`` (twice the input for even sizes), then a 3x3 conv.

    ``(b, c, f, h, w)`` -> ``(b, c, f, *size)``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        num_frames = hidden_states.shape[2]
        resized = F.interpolate(frames_to_batch(hidden_states), size=tuple(size), mode="nearest")
        return self.conv(batch_to_frames(resized, num_frames))
