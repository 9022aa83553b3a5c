"""Optional pixel-space losses of stage 2, with user-supplied weights and no torchvision:

* `LPIPS`: the perceptual distance of Zhang et al. 2018 ("lpips" package, ``net="vgg"``, version 0.1) over the
  five ReLU stages of VGG-16. Weights: torchvision's ``vgg16`` ImageNet file (``features.*``; its ``classifier.*``
  is not used) and the package's ``weights/v0.1/vgg.pth`` (``lin0..lin4``).
* `TemporalLoss`: the reference's TREPA loss, the distance between L2-normalised VideoMAE-v2 features of the
  generated and the real window. Weights: ``vit_g_hybrid_pt_1200e_ssv2_ft.pth``.

Both are frozen; gradients flow to the input only.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentsync.checkpoint import load_state_dict_strict, read_checkpoint
from latentsync.errors import CheckpointError

# ----------------------------------------------------------------------------------------------------------
# LPIPS

# VGG-16 `features`: channel counts of the convolutions, "M" = max pool (torchvision's layout and indices).
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# `features` indices after which LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_LPIPS_TAPS = (4, 9, 16, 23, 30)
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# lpips.ScalingLayer: inputs in [-1, 1] are shifted and scaled to ImageNet statistics.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_EPS = 1e-10


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for entry in _VGG16_LAYOUT:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = entry
    return nn.Sequential(*layers)


class _LinearHead(nn.Module):
    """lpips.NetLinLayer: dropout (off at eval) then a 1x1 convolution to one channel; key ``model.1.weight``."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS-VGG distance: ``(n, 3, h, w), (n, 3, h, w)`` in ``[-1, 1]`` -> ``(n, 1, 1, 1)``."""

    def __init__(self):
        super().__init__()
        self.features = _vgg16_features()
        for index, channels in enumerate(_LPIPS_CHANNELS):
            self.add_module(f"lin{index}", _LinearHead(channels))
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE)[None, :, None, None], persistent=False)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs, start = [], 0
        for stop in _LPIPS_TAPS:
            x = self.features[start:stop](x)
            outputs.append(x)
            start = stop
        return outputs

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction = (prediction - self.shift.to(prediction.dtype)) / self.scale.to(prediction.dtype)
        target = (target - self.shift.to(target.dtype)) / self.scale.to(target.dtype)
        distance = 0
        for index, (first, second) in enumerate(zip(self._stages(prediction), self._stages(target), strict=True)):
            first = first / (first.pow(2).sum(dim=1, keepdim=True).sqrt() + _LPIPS_EPS)
            second = second / (second.pow(2).sum(dim=1, keepdim=True).sqrt() + _LPIPS_EPS)
            head = getattr(self, f"lin{index}")
            distance = distance + head((first - second).pow(2)).mean(dim=(2, 3), keepdim=True)
        return distance


def load_lpips(vgg16_path: str, lpips_path: str) -> LPIPS:
    """Build `LPIPS` from torchvision's ``vgg16`` weights and lpips' ``vgg.pth`` (both read with
    ``weights_only=True``), strictly; frozen, eval mode."""
    model = LPIPS()
    vgg = read_checkpoint(vgg16_path).state_dict
    features = {k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")}
    if not features:
        raise CheckpointError(
            f"{vgg16_path} has no features.* keys; give torchvision's vgg16 ImageNet weights (vgg16-397923af.pth)."
        )
    load_state_dict_strict(model.features, features, source=vgg16_path, hint="Expected torchvision vgg16 weights.")
    heads = read_checkpoint(lpips_path).state_dict
    head_model = nn.ModuleDict({f"lin{i}": getattr(model, f"lin{i}") for i in range(len(_LPIPS_CHANNELS))})
    load_state_dict_strict(head_model, heads, source=lpips_path, hint="Expected lpips weights/v0.1/vgg.pth.")
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------
# VideoMAE v2 (TREPA)

VIDEOMAE_CONFIGS: dict[str, dict] = {
    # videomaev2_finetune.vit_giant_patch14_224 as the reference builds it (ssv2 head, 174 classes).
    "vit_giant_patch14_224": {
        "img_size": 224, "patch_size": 14, "embed_dim": 1408, "depth": 40, "num_heads": 16,
        "mlp_ratio": 48 / 11, "num_frames": 16, "tubelet_size": 2, "num_classes": 174,
    },
    # Test model with the same structure.
    "tiny": {
        "img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 4,
        "mlp_ratio": 2.0, "num_frames": 16, "tubelet_size": 2, "num_classes": 4,
    },
}
_VIDEOMAE_LN_EPS = 1e-6


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed position table ``(1, positions, dim)``: sin on even, cos on odd channels."""
    exponents = 2 * (np.arange(dim) // 2) / dim
    angles = np.arange(positions)[:, None] / np.power(10000, exponents)[None, :]
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)[None]


class _VideoMAEAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (b, heads, tokens, head_dim)
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, dim))


class _VideoMAEBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_VIDEOMAE_LN_EPS)
        self.attn = _VideoMAEAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_VIDEOMAE_LN_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.norm2(x))))


class VideoMAEv2Encoder(nn.Module):
    """The VideoMAE-v2 fine-tuned ViT (mean pooling) up to ``forward_features``: ``(b, 3, f, S, S)`` in
    ``[0, 1]`` -> ``(b, embed_dim)``. State-dict keys equal the official checkpoint's (``head.*`` is kept so it
    loads strictly, but unused)."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, num_frames, tubelet_size,
                 num_classes):
        super().__init__()
        self.img_size, self.tubelet_size = img_size, tubelet_size
        self.grid = img_size // patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            3, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size), stride=(tubelet_size, patch_size, patch_size)
        )
        self.time_positions = num_frames // tubelet_size
        self.register_buffer(
            "pos_embed", sinusoid_table(self.time_positions * self.grid**2, embed_dim), persistent=False
        )
        self.blocks = nn.ModuleList(_VideoMAEBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(embed_dim, eps=_VIDEOMAE_LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        self.gradient_checkpointing = False

    def _positions(self, num_frames: int) -> torch.Tensor:
        """The table for ``num_frames`` input frames, stretched in time (trilinear) as the reference does."""
        time = num_frames // self.tubelet_size
        if time == self.time_positions:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        table = self.pos_embed.permute(0, 2, 1).reshape(1, dim, self.time_positions, self.grid, self.grid)
        table = F.interpolate(table, scale_factor=((time + 0.1) / self.time_positions, 1, 1), mode="trilinear")
        return table.reshape(1, dim, -1).permute(0, 2, 1)

    def forward_features(self, videos: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed.proj(videos).flatten(2).transpose(1, 2)
        tokens = tokens + self._positions(videos.shape[2]).to(tokens.dtype)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return self.fc_norm(tokens.mean(1))


def load_videomae(path: str, config: str | Mapping = "vit_giant_patch14_224") -> VideoMAEv2Encoder:
    """The VideoMAE-v2 checkpoint (``{"model": ...}``, ``{"module": ...}`` or flat), strictly; frozen, eval."""
    settings = VIDEOMAE_CONFIGS[config] if isinstance(config, str) else dict(config)
    model = VideoMAEv2Encoder(**settings)
    state_dict = read_checkpoint(path, container_keys=("model", "module")).state_dict
    load_state_dict_strict(model, state_dict, source=path, hint=f"Expected a VideoMAE-v2 checkpoint ({config}).")
    return model.eval().requires_grad_(False)


class TemporalLoss(nn.Module):
    """TREPA: ``mse(normalize(phi(fake)), normalize(phi(real)))`` with ``phi`` the VideoMAE-v2 features of the
    window resized to the model's size (bicubic) and mapped from ``[-1, 1]`` to ``[0, 1]``.

    Inputs: ``(b, 3, f, h, w)`` each. Returns a scalar.
    """

    def __init__(self, encoder: VideoMAEv2Encoder):
        super().__init__()
        self.encoder = encoder
        self.encoder.gradient_checkpointing = True

    def _features(self, videos: torch.Tensor) -> torch.Tensor:
        batch, channels, frames = videos.shape[:3]
        size = self.encoder.img_size
        flat = videos.transpose(1, 2).reshape(batch * frames, channels, *videos.shape[-2:])
        flat = F.interpolate(flat, size=(size, size), mode="bicubic")
        clips = flat.reshape(batch, frames, channels, size, size).transpose(1, 2)
        clips = (clips / 2 + 0.5).clamp(0, 1)
        return F.normalize(self.encoder.forward_features(clips), p=2, dim=1)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self._features(fake), self._features(real))

