"""StableSyncNet: LatentSync's audio-visual synchronisation discriminator.

Two convolutional encoders map a window of mouth frames and the mel spectrogram of the same 0.64 s to
unit vectors whose cosine similarity says whether lips and speech are in sync. UNet training uses it as a
loss (`cosine_loss` with label 1), scoring uses the similarity (> `SYNC_THRESHOLD` means "in sync").

Inputs of the official `syncnet_16_pixel_attn` model:

* visual ``(b, 48, 128, 256)``: 16 RGB frames of a 256x256 aligned face in ``[-1, 1]``, stacked on the
  channel axis frame by frame (channel ``3 * frame + rgb``, i.e. ``b f c h w -> b (f c) h w``), keeping
  rows ``128:`` (the lower half). `pack_frames` builds it from ``(b, f, c, h, w)``.
* audio ``(b, 1, 80, 52)``: 80 mel bins x ``ceil(16 / 5 * 16) = 52`` mel frames starting at the first
  video frame (80 mel frames per second).

State-dict keys and numerics follow the official `latentsync/models/stable_syncnet.py`, so official
checkpoints load strictly and give the same embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .attention import Attention, FeedForward
from .syncnet_configs import DEFAULT_SYNCNET_CONFIG, get_syncnet_config

NORM_NUM_GROUPS = 32
NORM_EPS = 1e-6
ATTENTION_HEADS = 8
# eval/eval_syncnet_acc.py predicts "in sync" when the cosine similarity exceeds this.
SYNC_THRESHOLD = 0.5

ENCODER_NAMES = ("audio_encoder", "visual_encoder")

DownsampleFactor = Union[int, tuple[int, int]]


# ----------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class SyncNetEncoderConfig:
    """One encoder of the YAML ``model:`` section.

    Attributes:
        in_channels: input channels (1 for the mel; ``num_frames * 3`` for pixel frames).
        block_out_channels: output channels of each ResNet block, multiples of 32 (GroupNorm groups).
        downsample_factors: per block, 1 (none), an int stride, or an ``(h, w)`` stride pair.
        attn_blocks: per block, 1 to follow it with a self-attention block, else 0.
        dropout: dropout probability in ResNet, attention and feed-forward layers.
    """

    in_channels: int
    block_out_channels: tuple[int, ...]
    downsample_factors: tuple[DownsampleFactor, ...]
    attn_blocks: tuple[int, ...]
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, config: Mapping, name: str = "encoder") -> "SyncNetEncoderConfig":
        """Validate a YAML-style dict. ``attn_blocks`` may be left out (no attention), as in
        `syncnet_25_pixel.yaml`; ``dropout`` defaults to 0.

        Raises:
            ConfigError: unknown or missing keys, mismatched lengths, bad channel counts or factors.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"SyncNet {name} config must be a mapping, got {type(config).__name__}.")
        required = {"in_channels", "block_out_channels", "downsample_factors"}
        allowed = required | {"attn_blocks", "dropout"}
        if missing := required - set(config):
            raise ConfigError(f"SyncNet {name} config lacks {sorted(missing)}.")
        if unknown := set(config) - allowed:
            raise ConfigError(f"SyncNet {name} config has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}.")

        block_out_channels = tuple(int(c) for c in config["block_out_channels"])
        num_blocks = len(block_out_channels)
        factors = tuple(_parse_factor(f, name) for f in config["downsample_factors"])
        attn_blocks = tuple(int(a) for a in config.get("attn_blocks", [0] * num_blocks))
        if num_blocks == 0 or len(factors) != num_blocks or len(attn_blocks) != num_blocks:
            raise ConfigError(
                f"SyncNet {name}: block_out_channels, downsample_factors and attn_blocks need one entry per "
                f"block, got {num_blocks}, {len(factors)} and {len(attn_blocks)}."
            )
        if any(c <= 0 or c % NORM_NUM_GROUPS for c in block_out_channels):
            raise ConfigError(
                f"SyncNet {name}: every block_out_channels entry must be a positive multiple of "
                f"{NORM_NUM_GROUPS} (GroupNorm groups), got {list(block_out_channels)}."
            )
        if any(a not in (0, 1) for a in attn_blocks):
            raise ConfigError(f"SyncNet {name}: attn_blocks entries must be 0 or 1, got {list(attn_blocks)}.")
        in_channels = int(config["in_channels"])
        dropout = float(config.get("dropout", 0.0))
        if in_channels <= 0 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                f"SyncNet {name}: need in_channels > 0 and 0 <= dropout < 1, got {in_channels} and {dropout}."
            )
        return cls(in_channels, block_out_channels, factors, attn_blocks, dropout)

    def to_dict(self) -> dict:
        """The YAML form: lists, ``[h, w]`` pairs, plain ints."""
        return {
            "in_channels": self.in_channels,
            "block_out_channels": list(self.block_out_channels),
            "downsample_factors": [list(f) if isinstance(f, tuple) else f for f in self.downsample_factors],
            "attn_blocks": list(self.attn_blocks),
            "dropout": self.dropout,
        }


def _parse_factor(factor: object, name: str) -> DownsampleFactor:
    if isinstance(factor, int) and factor >= 1:
        return factor
    if isinstance(factor, Sequence) and len(factor) == 2 and all(isinstance(f, int) and f >= 1 for f in factor):
        if tuple(factor) == (1, 1):
            raise ConfigError(f"SyncNet {name}: write the downsample factor [1, 1] as 1 (no down-sampling).")
        return (int(factor[0]), int(factor[1]))
    raise ConfigError(f"SyncNet {name}: a downsample factor is an int >= 1 or an [h, w] pair, got {factor!r}.")


def _model_section(config: Mapping) -> Mapping:
    """Accept a whole YAML dict (``{"model": ..., "data": ...}``) or its ``model`` section."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"A SyncNet config must be a mapping, got {type(config).__name__}.")
    section = config.get("model", config)
    if set(section) != set(ENCODER_NAMES):
        raise ConfigError(
            f"A SyncNet model config has exactly the keys {list(ENCODER_NAMES)}, got {sorted(section)}."
        )
    return section


# ----------------------------------------------------------------------------------------------------------
# Layers


class ResnetDownBlock2D(nn.Module):
    """Pre-activation ResNet block without time input, then an optional strided down-sampling conv.

    ``(b, in_channels, h, w) -> (b, out_channels, h', w')``; ``h', w'`` are given by `output_size`.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample_factor: DownsampleFactor, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_NUM_GROUPS, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(NORM_NUM_GROUPS, out_channels, eps=NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.act = nn.SiLU()
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

        if downsample_factor == 1:
            self.downsample_conv = None
            self.stride = (1, 1)
            self.pad = (0, 0, 0, 0)
        else:
            self.stride = downsample_factor if isinstance(downsample_factor, tuple) else (downsample_factor,) * 2
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=self.stride)
            # Zero padding (left, right, top, bottom) before the unpadded strided conv: an axis that is not
            # down-sampled gets one pixel on both sides so the conv keeps its size.
            if self.stride[0] == 1:
                self.pad = (0, 1, 1, 1)
            elif self.stride[1] == 1:
                self.pad = (1, 1, 0, 1)
            else:
                self.pad = (0, 1, 0, 1)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.downsample_conv is None:
            return height, width
        left, right, top, bottom = self.pad
        height = max((height + top + bottom - 3) // self.stride[0] + 1, 0)
        width = max((width + left + right - 3) // self.stride[1] + 1, 0)
        return height, width

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv1(self.act(self.norm1(input_tensor)))
        hidden_states = self.conv2(self.dropout(self.act(self.norm2(hidden_states))))
        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        hidden_states = hidden_states + shortcut

        if self.downsample_conv is not None:
            hidden_states = self.downsample_conv(F.pad(hidden_states, self.pad))
        return hidden_states


class AttentionBlock2D(nn.Module):
    """Self-attention over the pixels of a feature map. ``(b, c, h, w) -> (b, c, h, w)``.

    GroupNorm -> 1x1 conv -> tokens ``(b, h*w, c)`` -> [LayerNorm -> attention] + x -> [LayerNorm -> GEGLU
    feed-forward] + x -> 1x1 conv -> + input.
    """

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        # Registration order fixes the state-dict order of the official checkpoint.
        self.norm1 = nn.GroupNorm(NORM_NUM_GROUPS, channels, eps=NORM_EPS)
        self.norm2 = nn.LayerNorm(channels)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, dropout)
        self.conv_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.conv_out = nn.Conv2d(channels, channels, kernel_size=1)
        self.attn = Attention(channels, ATTENTION_HEADS, bias=True, dropout=dropout)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = input_tensor.shape
        hidden_states = self.conv_in(self.norm1(input_tensor))
        hidden_states = hidden_states.flatten(2).transpose(1, 2)  # (b, h*w, c)

        hidden_states = self.attn(self.norm2(hidden_states)) + hidden_states
        hidden_states = self.ff(self.norm3(hidden_states)) + hidden_states

        # Contiguous NCHW as the reference: a channels-last view would take another conv kernel (other rounding).
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, channels, height, width).contiguous()
        return self.conv_out(hidden_states) + input_tensor


class SyncNetEncoder(nn.Module):
    """3x3 conv, ResNet blocks (each optionally followed by attention), GroupNorm, ReLU.

    ``(b, in_channels, h, w) -> (b, block_out_channels[-1], h', w')``; the configs are built so that
    ``h' = w' = 1`` for their input size.
    """

    def __init__(self, config: SyncNetEncoderConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        channels = config.block_out_channels
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)

        # Attention blocks sit in the same list as the ResNet blocks, so indices count both.
        self.down_blocks = nn.ModuleList()
        for in_channels, out_channels, factor, has_attention in zip(
            (channels[0],) + channels[:-1], channels, config.downsample_factors, config.attn_blocks
        ):
            self.down_blocks.append(ResnetDownBlock2D(in_channels, out_channels, factor, config.dropout))
            if has_attention:
                self.down_blocks.append(AttentionBlock2D(out_channels, config.dropout))

        self.norm_out = nn.GroupNorm(NORM_NUM_GROUPS, channels[-1], eps=NORM_EPS)
        self.act_out = nn.ReLU()

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an ``(h, w)`` input (0 means the input is too small)."""
        for block in self.down_blocks:
            height, width = block.output_size(height, width)
        return height, width

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(hidden_states)
        for block in self.down_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden_states = checkpoint(block, hidden_states, use_reentrant=False)
            else:
                hidden_states = block(hidden_states)
        return self.act_out(self.norm_out(hidden_states))


# ----------------------------------------------------------------------------------------------------------
# Model


class StableSyncNet(nn.Module):
    """LatentSync's SyncNet: a visual and an audio encoder producing unit-length embeddings.

    Args:
        audio_encoder: the YAML ``model.audio_encoder`` dict (or a `SyncNetEncoderConfig`).
        visual_encoder: the YAML ``model.visual_encoder`` dict (or a `SyncNetEncoderConfig`).

    Build from a whole YAML dict or a named config with `from_config`; load weights with `load_syncnet`.

    Attributes:
        data_config: the YAML ``data`` section (frames per window, face resolution, lower half) when the network
            was built from a whole config, else None; `latentsync.score` feeds the network what it says.
    """

    _supports_gradient_checkpointing = True

    def __init__(
        self,
        audio_encoder: Mapping | SyncNetEncoderConfig,
        visual_encoder: Mapping | SyncNetEncoderConfig,
    ):
        super().__init__()
        audio_config, visual_config = (
            c if isinstance(c, SyncNetEncoderConfig) else SyncNetEncoderConfig.from_dict(c, name)
            for c, name in ((audio_encoder, "audio_encoder"), (visual_encoder, "visual_encoder"))
        )
        if audio_config.block_out_channels[-1] != visual_config.block_out_channels[-1]:
            raise ConfigError(
                "SyncNet audio and visual embeddings must have the same size (last block_out_channels), got "
                f"{audio_config.block_out_channels[-1]} and {visual_config.block_out_channels[-1]}."
            )
        # Registration order (audio first) fixes the state-dict order of the official checkpoint.
        self.audio_encoder = SyncNetEncoder(audio_config)
        self.visual_encoder = SyncNetEncoder(visual_config)
        self.data_config: dict | None = None

    @classmethod
    def from_config(cls, config: Mapping | str = DEFAULT_SYNCNET_CONFIG) -> "StableSyncNet":
        """Build from a name in `SYNCNET_CONFIGS`, a whole YAML dict or its ``model`` section (a ``data`` section
        is kept as `data_config`)."""
        if isinstance(config, str):
            config = get_syncnet_config(config)
        model = cls(**_model_section(config))
        if isinstance(config.get("data"), Mapping):
            model.data_config = dict(config["data"])
        return model

    @property
    def config(self) -> dict:
        """The ``model`` section this network was built from (YAML form)."""
        return {name: getattr(self, name).config.to_dict() for name in ENCODER_NAMES}

    @property
    def embedding_dim(self) -> int:
        """Length ``C`` of both embeddings (the last ``block_out_channels``; 2048 for the official model)."""
        return self.audio_encoder.config.block_out_channels[-1]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each encoder block in the backward pass (UNet training runs a frozen SyncNet this way)."""
        for name in ENCODER_NAMES:
            getattr(self, name).gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        """Keep activations again (the default)."""
        for name in ENCODER_NAMES:
            getattr(self, name).gradient_checkpointing = False

    def forward(
        self, image_sequences: torch.Tensor, audio_sequences: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a frame window and its mel window.

        Args:
            image_sequences: ``(b, f * c, h, w)`` frames stacked on channels (channel ``frame * c + channel``),
                ``(b, 48, 128, 256)`` for `syncnet_16_pixel_attn`: 16 lower halves of 256x256 RGB faces in
                ``[-1, 1]``; see `pack_frames`.
            audio_sequences: ``(b, 1, 80, t)`` mel windows, ``(b, 1, 80, 52)`` for 16 frames.

        Returns:
            ``(vision_embeds, audio_embeds)``, each ``(b, embedding_dim)``, L2-normalised (eps 1e-12) and,
            being ReLU outputs, non-negative.

        Raises:
            ConfigError: inputs whose channels, batch or size do not fit this network's config.
        """
        # 1. check inputs
        self._check_input(image_sequences, "visual_encoder", "image_sequences")
        self._check_input(audio_sequences, "audio_encoder", "audio_sequences")
        if image_sequences.shape[0] != audio_sequences.shape[0]:
            raise ConfigError(
                f"SyncNet needs as many frame windows as mel windows, got {image_sequences.shape[0]} and "
                f"{audio_sequences.shape[0]}."
            )

        # 2. encode: (b, C, 1, 1)
        vision_embeds = self.visual_encoder(image_sequences)
        audio_embeds = self.audio_encoder(audio_sequences)

        # 3. unit vectors: (b, C)
        vision_embeds = F.normalize(vision_embeds.flatten(1), p=2, dim=1)
        audio_embeds = F.normalize(audio_embeds.flatten(1), p=2, dim=1)
        return vision_embeds, audio_embeds

    def _check_input(self, tensor: torch.Tensor, encoder_name: str, argument: str) -> None:
        encoder = getattr(self, encoder_name)
        in_channels = encoder.config.in_channels
        if tensor.ndim != 4 or tensor.shape[1] != in_channels:
            raise ConfigError(
                f"SyncNet {argument} must be (b, {in_channels}, h, w) for this config, got {tuple(tensor.shape)}."
            )
        height, width = tensor.shape[-2:]
        if encoder.output_size(height, width) != (1, 1):
            raise ConfigError(
                f"SyncNet {argument} of size {height}x{width} does not reduce to 1x1 in the {encoder_name} "
                f"(it gives {encoder.output_size(height, width)}); this config's downsample_factors "
                f"{encoder.config.to_dict()['downsample_factors']} expect another input size."
            )


# ----------------------------------------------------------------------------------------------------------
# Inputs, similarity and loss


def pack_frames(frames: torch.Tensor, lower_half: bool = True) -> torch.Tensor:
    """Stack a frame window on channels as SyncNet training does.

    Args:
        frames: ``(b, f, c, h, w)`` faces (pixels in ``[-1, 1]``, or VAE latents for a latent-space SyncNet).
        lower_half: keep rows ``h // 2 :`` (the mouth), as the pixel configs do (``data.lower_half``).

    Returns:
        ``(b, f * c, h - h // 2, w)`` (or ``(b, f * c, h, w)``), channel ``frame * c + channel``.
    """
    if frames.ndim != 5:
        raise ConfigError(f"pack_frames expects (b, f, c, h, w) frames, got shape {tuple(frames.shape)}.")
    batch, num_frames, channels, height, width = frames.shape
    packed = frames.reshape(batch, num_frames * channels, height, width)
    return packed[:, :, height // 2 :, :] if lower_half else packed


def sync_similarity(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(b, C), (b, C) -> (b,)`` (eps 1e-8) in float32; in ``[0, 1]`` for SyncNet embeddings.

    Above `SYNC_THRESHOLD` counts as in sync.
    """
    return F.cosine_similarity(vision_embeds.float(), audio_embeds.float(), dim=1, eps=1e-8)


def sync_distance(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor) -> torch.Tensor:
    """``1 - sync_similarity``: ``(b,)``, 0 for perfectly matching embeddings, lower is better."""
    return 1.0 - sync_similarity(vision_embeds, audio_embeds)


def cosine_loss(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample SyncNet loss of the official training: ``BCE(cos(v, a), y)``.

    ``loss_i = -(y_i * log(s_i) + (1 - y_i) * log(1 - s_i))`` with ``s = sync_similarity(v, a)`` and each log
    clamped at -100 (`torch.nn.functional.binary_cross_entropy`). ``y`` is 1 for in-sync pairs and 0 for
    shifted ones; UNet training uses ``y = 1`` and takes the mean. Computed in float32 with autocast off;
    ``s`` is clamped to ``[0, 1]``, which only rounding can leave.

    Args:
        vision_embeds: ``(b, C)`` from `StableSyncNet.forward`.
        audio_embeds: ``(b, C)``.
        y: ``(b,)`` or ``(b, 1)`` labels.

    Returns:
        ``(b,)`` losses; ``.mean()`` is the training loss.
    """
    with torch.autocast(device_type=vision_embeds.device.type, enabled=False):
        similarity = sync_similarity(vision_embeds, audio_embeds).clamp(0.0, 1.0)
        target = y.to(device=similarity.device, dtype=torch.float32).reshape(similarity.shape)
        return F.binary_cross_entropy(similarity, target, reduction="none")


def offset_contrastive_loss(
    vision_embeds: torch.Tensor, audio_embeds: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window loss of windows at ``k`` starts of one clip: each window's audio must pick its own frames
    among the clip's ``k`` windows, and each window's frames their own audio (symmetric InfoNCE over cosine
    similarities divided by ``temperature``). The other windows differ from a window only in time, so the loss
    rewards what tells sync from off-sync, not what tells clips apart. Computed in float32 with autocast off.

    Args:
        vision_embeds: ``(b, k, C)`` unit embeddings of ``b`` clips' ``k`` windows.
        audio_embeds: ``(b, k, C)``.
        temperature: divides the similarities (smaller is sharper).

    Returns:
        ``(b, k)`` losses (``.mean()`` is the training loss) and ``(b, k)`` bool: the window's audio is most
        similar to its own frames.
    """
    with torch.autocast(device_type=vision_embeds.device.type, enabled=False):
        similarity = vision_embeds.float() @ audio_embeds.float().transpose(1, 2)  # (b, k frames, k audio)
        logits = similarity / temperature
        own = torch.arange(logits.shape[-1], device=logits.device).expand(logits.shape[:2])
        audio_picks = F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), own.flatten(), reduction="none")
        frames_pick = F.cross_entropy(logits.flatten(0, 1), own.flatten(), reduction="none")
        losses = ((audio_picks + frames_pick) / 2).view(own.shape)
        return losses, similarity.argmax(dim=1) == own
