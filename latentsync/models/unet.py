"""The LatentSync denoiser: a 3-D (video) UNet conditioned on audio embeddings.

It is Stable Diffusion 1.5's UNet applied frame by frame, with three changes: 13 input channels (noisy latents,
mouth mask, masked-frame latents, reference-frame latents), cross-attention to the Whisper embeddings of each
frame instead of text, and optional temporal (motion) modules that attend across frames. State-dict keys equal
those of the official `latentsync/models/unet.py`, so official checkpoints load strictly (see `unet_loading`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .attention import Attention, AttentionProcessor
from .resnet import FrameConv2d
from .unet_blocks import (
    DOWN_BLOCK_TYPES,
    MID_BLOCK_TYPE,
    UP_BLOCK_TYPES,
    DownBlock3D,
    LayerSpec,
    UNetBlock3D,
    UNetMidBlock3DCrossAttn,
    UpBlock3D,
    block_has_attention,
)
from .unet_configs import STAGE2, check_unet_config_keys

MAX_PERIOD = 10000
_ACTIVATIONS = ("silu", "swish")  # the same function


class Timesteps(nn.Module):
    """Sinusoidal timestep features, computed in float32: ``(b,)`` -> ``(b, num_channels)``.

    Frequencies ``exp(-ln(10000) * i / (num_channels / 2 - freq_shift))`` for ``i < num_channels / 2``; the
    features are ``[sin, cos]`` of ``timestep * frequency``, swapped to ``[cos, sin]`` when ``flip_sin_to_cos``.
    """

    def __init__(self, num_channels: int, flip_sin_to_cos: bool = True, freq_shift: float = 0):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        frequencies = torch.exp(exponent / (half - self.freq_shift))
        angles = timesteps[:, None].float() * frequencies[None, :]
        if self.flip_sin_to_cos:
            return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear: ``(b, in_channels)`` -> ``(b, time_embed_dim)``."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


def _checkpoint_without_reentrancy(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    return checkpoint(module, *args, use_reentrant=False)


class UNet3DConditionModel(ModelMixin, ConfigMixin):
    r"""Audio-conditioned video UNet predicting the noise of SD-VAE latents.

    Configured by exactly the keys of the ``model:`` section of ``configs/unet/*.yaml`` (see `unet_configs`);
    `from_config` refuses other keys with a `ConfigError`. ``sample_size`` has no effect (kept for the YAML).

    Call: ``unet(sample, timestep, encoder_hidden_states)`` -> noise prediction ``(b, out_channels, f, h, w)``.

    Layout: ``conv_in`` -> ``len(block_out_channels)`` down blocks (each halving ``h, w`` except the last) -> mid
    block -> as many up blocks -> GroupNorm/SiLU/``conv_out``. Down block ``i`` and up block ``n - 1 - i`` work
    at resolution ``2**i`` (the ``motion_module_resolutions`` unit); motion modules go into the blocks whose
    resolution is listed (only up blocks when ``motion_module_decoder_only``; the mid block when
    ``motion_module_mid_block``). (The reference numbers up block ``i`` as ``2**(3 - i)``, the same for its four
    blocks.) ``attention_head_dim`` is the number of heads of the spatial transformers (an int, or one per down
    block), as in the reference; missing ``motion_module_kwargs`` take the official values.

    Stages: `forward` is `embed` -> `down_path` (the skips) -> ``mid_block`` -> `up_path` -> `post_process`;
    `latentsync.pipeline.deepcache.DeepCacheUNet` composes the same stages and skips some of them.

    Attributes:
        global_step: training step of the checkpoint the weights came from; set by `load_unet`, 0 otherwise.
    """

    _supports_gradient_checkpointing = True
    global_step: int = 0

    @register_to_config
    def __init__(
        self,
        act_fn: str = "silu",
        add_audio_layer: bool = True,
        attention_head_dim: int | Sequence[int] = 8,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        center_input_sample: bool = False,
        cross_attention_dim: int = 384,
        down_block_types: Sequence[str] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        mid_block_type: str = MID_BLOCK_TYPE,
        up_block_types: Sequence[str] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        downsample_padding: int = 1,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        in_channels: int = 13,
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        norm_eps: float = 1e-5,
        norm_num_groups: int = 32,
        out_channels: int = 4,
        sample_size: int = 64,
        resnet_time_scale_shift: str = "default",
        use_motion_module: bool = True,
        motion_module_resolutions: Sequence[int] = (1, 2, 4, 8),
        motion_module_mid_block: bool = False,
        motion_module_decoder_only: bool = False,
        motion_module_type: str = "Vanilla",
        motion_module_kwargs: dict | None = None,
    ):
        super().__init__()
        num_blocks = len(block_out_channels)
        heads = [attention_head_dim] * num_blocks if isinstance(attention_head_dim, int) else list(attention_head_dim)
        check_unet_config_keys({"motion_module_kwargs": motion_module_kwargs})  # top-level names: from_config
        motion_module_kwargs = {**STAGE2["motion_module_kwargs"], **(motion_module_kwargs or {})}
        _check_architecture(
            block_out_channels=block_out_channels,
            heads=heads,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            mid_block_type=mid_block_type,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            resnet_time_scale_shift=resnet_time_scale_shift,
        )
        # The motion modules' position table limits how many frames one call may hold.
        self.max_num_frames: int | None = (
            motion_module_kwargs["temporal_position_encoding_max_len"]
            if use_motion_module and motion_module_kwargs["temporal_position_encoding"]
            else None
        )

        time_embed_dim = block_out_channels[0] * 4
        spec = partial(
            LayerSpec,
            temb_channels=time_embed_dim,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim if add_audio_layer else None,
            motion_module_type=motion_module_type,
            motion_module_kwargs=motion_module_kwargs,
        )

        # input and time embedding
        self.conv_in = FrameConv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)

        # down
        self.down_blocks = nn.ModuleList()
        for index, block_type in enumerate(down_block_types):
            self.down_blocks.append(
                DownBlock3D(
                    block_out_channels[max(index - 1, 0)],
                    block_out_channels[index],
                    layers_per_block,
                    spec(heads=heads[index]),
                    with_attention=block_has_attention(block_type, DOWN_BLOCK_TYPES),
                    with_motion=use_motion_module
                    and not motion_module_decoder_only
                    and 2**index in motion_module_resolutions,
                    add_downsample=index < num_blocks - 1,
                    downsample_padding=downsample_padding,
                )
            )

        # Registered before mid_block, as in the reference, so state dicts list keys in the same order.
        self.up_blocks = nn.ModuleList()

        # mid
        self.mid_block = UNetMidBlock3DCrossAttn(
            block_out_channels[-1],
            spec(heads=heads[-1]),
            with_motion=use_motion_module and motion_module_mid_block,
            output_scale_factor=mid_block_scale_factor,
        )

        # up: block i mirrors down block n - 1 - i
        reversed_channels = list(reversed(block_out_channels))
        for index, block_type in enumerate(up_block_types):
            resolution = 2 ** (num_blocks - 1 - index)
            self.up_blocks.append(
                UpBlock3D(
                    in_channels=reversed_channels[min(index + 1, num_blocks - 1)],
                    out_channels=reversed_channels[index],
                    prev_output_channel=reversed_channels[max(index - 1, 0)],
                    num_layers=layers_per_block + 1,
                    spec=spec(heads=heads[num_blocks - 1 - index]),
                    with_attention=block_has_attention(block_type, UP_BLOCK_TYPES),
                    with_motion=use_motion_module and resolution in motion_module_resolutions,
                    add_upsample=index < num_blocks - 1,
                )
            )

        # output
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = FrameConv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

        # The reference starts both convolutions at zero (conv_in is replaced when SD weights do not fit it).
        for conv in (self.conv_in, self.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Build from a YAML ``model:`` dict; unknown keys raise `ConfigError` instead of being ignored."""
        check_unet_config_keys({**(config or {}), **kwargs})
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Callable | None = None) -> None:
        """Recompute each resnet, transformer and motion module in the backward pass instead of storing activations.

        Args:
            gradient_checkpointing_func: ``f(module, *inputs)``; defaults to non-reentrant `torch.utils.checkpoint`.
        """
        for module in self.modules():
            if isinstance(module, UNetBlock3D):
                module.gradient_checkpointing = True
                module._gradient_checkpointing_func = gradient_checkpointing_func or _checkpoint_without_reentrancy

    def disable_gradient_checkpointing(self) -> None:
        """Keep activations again (the default)."""
        for module in self.modules():
            if isinstance(module, UNetBlock3D):
                module.gradient_checkpointing = False

    def set_attn_processor(self, processor: AttentionProcessor) -> None:
        """Use ``processor`` for every spatial and temporal attention (weights are unchanged)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.set_processor(processor)

    # -- stages: `forward` runs them in order; `latentsync.pipeline.deepcache` skips some ----------------------

    def embed(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check the inputs, embed the timestep, flatten the audio per frame and run ``conv_in``.

        Args: as `forward`.

        Returns:
            ``(hidden_states, temb, encoder_hidden_states)``: the ``conv_in`` output ``(b, c_0, f, h, w)`` (the first
            skip), the time embedding ``(b, 4 c_0)`` and the audio tokens per frame ``(b * f, n, d)``.
        """
        # 0. check inputs
        self._check_inputs(sample, encoder_hidden_states)
        batch, num_frames = sample.shape[0], sample.shape[2]

        # 1. time: sinusoid features in float32, then the embedding MLP in the model dtype
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if timesteps.numel() == 1:
            timesteps = timesteps.expand(batch)
        elif timesteps.shape != (batch,):
            raise ValueError(f"timestep must hold 1 or {batch} values, got shape {tuple(timesteps.shape)}.")
        temb = self.time_proj(timesteps).to(self.time_embedding.linear_1.weight.dtype)
        temb = self.time_embedding(temb)

        # 2. audio tokens per frame: (b, f, n, d) -> (b * f, n, d)
        encoder_hidden_states = encoder_hidden_states.reshape(batch * num_frames, *encoder_hidden_states.shape[2:])

        # 3. pre-process
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        return self.conv_in(sample), temb, encoder_hidden_states

    def down_path(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        num_skips: int | None = None,
    ) -> list[torch.Tensor]:
        """The skips in order: ``hidden_states`` (the ``conv_in`` output), then every down layer's output and every
        downsampled output, block by block; the last one enters the mid block. With ``num_skips`` only the layers
        that produce the first ``num_skips`` skips run (`num_skips` in all).

        Args:
            hidden_states, temb, encoder_hidden_states: from `embed`.
        """
        skips = [hidden_states]
        for block in self.down_blocks:
            remaining = None if num_skips is None else num_skips - len(skips)
            if remaining is not None and remaining <= 0:
                break
            hidden_states, block_skips = block(hidden_states, temb, encoder_hidden_states, remaining)
            skips.extend(block_skips)
        return skips

    def up_path(
        self,
        hidden_states: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Run the up layers ``start .. stop - 1`` (numbered in execution order over all up blocks, `num_skips` in
        all; a block's upsampler runs after its last layer), each on ``cat([hidden_states, skips.pop()])``.

        Args:
            hidden_states: what enters layer ``start``: the mid block's output for ``start = 0``.
            skips: the skips not consumed yet, in `down_path` order; popped from the end.
            start, stop: the layers to run; ``stop=None`` runs to the end.

        Returns:
            what enters layer ``stop``, or the last up block's output ``(b, c_0, f, h, w)``.
        """
        stop = self.num_skips if stop is None else stop
        first = 0  # the block's first layer, in up-path numbering
        for block in self.up_blocks:
            layers = range(max(start - first, 0), min(stop - first, len(block.resnets)))
            first += len(block.resnets)
            if not layers:
                continue
            block_skips = tuple(skips[-len(layers) :])
            del skips[-len(layers) :]
            upsample_size = skips[-1].shape[-2:] if skips else None
            hidden_states = block(hidden_states, block_skips, temb, encoder_hidden_states, upsample_size, layers)
        return hidden_states

    def post_process(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """GroupNorm, SiLU, ``conv_out``: ``(b, c_0, f, h, w)`` -> noise prediction ``(b, out_channels, f, h, w)``."""
        return self.conv_out(self.conv_act(self.conv_norm_out(hidden_states)))

    @property
    def num_skips(self) -> int:
        """Skip connections (and up layers): ``conv_in`` plus one per down layer and per downsampler (12 for the
        official configs)."""
        return 1 + sum(len(block.resnets) + (block.downsamplers is not None) for block in self.down_blocks)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the noise.

        Args:
            sample: ``(b, in_channels, f, h, w)``; channels 0-3 noisy latents, 4 mask (1 = keep), 5-8 masked-frame
                latents, 9-12 reference-frame latents.
            timestep: a number, a 0-d or 1-element tensor (used for the whole batch), or one per sample ``(b,)``.
            encoder_hidden_states: audio embeddings ``(b, f, n, cross_attention_dim)`` (``n = 50`` Whisper tokens per
                frame); frame ``j`` of sample ``i`` cross-attends only to ``encoder_hidden_states[i, j]``.

        Returns:
            The noise prediction ``(b, out_channels, f, h, w)``, dtype of the model.
        """
        # 1. check inputs, time and audio embeddings, conv_in
        hidden_states, temb, encoder_hidden_states = self.embed(sample, timestep, encoder_hidden_states)

        # 2. down: keep every layer output as a skip, conv_in output first
        skips = self.down_path(hidden_states, temb, encoder_hidden_states)

        # 3. mid
        hidden_states = self.mid_block(skips[-1], temb, encoder_hidden_states)

        # 4. up: consume skips last-in-first-out; upsample to the size of the next skip
        hidden_states = self.up_path(hidden_states, skips, temb, encoder_hidden_states)

        # 5. post-process
        return self.post_process(hidden_states)

    def _check_inputs(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        config = self.config
        if sample.ndim != 5 or sample.shape[1] != config.in_channels:
            raise ValueError(
                f"sample must be (batch, {config.in_channels}, frames, height, width), got {tuple(sample.shape)}."
            )
        batch, _, num_frames = sample.shape[:3]
        audio_shape = tuple(encoder_hidden_states.shape)
        if (
            len(audio_shape) != 4
            or audio_shape[:2] != (batch, num_frames)
            or (config.add_audio_layer and audio_shape[3] != config.cross_attention_dim)
        ):
            raise ValueError(
                f"encoder_hidden_states must be (batch={batch}, frames={num_frames}, tokens, "
                f"{config.cross_attention_dim}), got {audio_shape}."
            )
        if self.max_num_frames is not None and num_frames > self.max_num_frames:
            raise ConfigError(
                f"{num_frames} frames per call exceed the {self.max_num_frames} frame positions of the motion "
                f"modules; use at most {self.max_num_frames} frames per inference window."
            )


def _check_architecture(
    block_out_channels: Sequence[int],
    heads: Sequence[int],
    down_block_types: Sequence[str],
    up_block_types: Sequence[str],
    mid_block_type: str,
    norm_num_groups: int,
    act_fn: str,
    resnet_time_scale_shift: str,
) -> None:
    """ConfigError for values the model cannot be built from."""
    num_blocks = len(block_out_channels)
    for name, values in (
        ("down_block_types", down_block_types),
        ("up_block_types", up_block_types),
        ("attention_head_dim", heads),
    ):
        if len(values) != num_blocks:
            raise ConfigError(
                f"{name} must have one entry per block: got {len(values)} and {num_blocks} block_out_channels."
            )
    if mid_block_type != MID_BLOCK_TYPE:
        raise ConfigError(f"mid_block_type must be {MID_BLOCK_TYPE!r}, got {mid_block_type!r}.")
    if act_fn not in _ACTIVATIONS:
        raise ConfigError(f"act_fn must be 'silu', got {act_fn!r}.")
    if resnet_time_scale_shift != "default":
        raise ConfigError(
            f"resnet_time_scale_shift {resnet_time_scale_shift!r} is not supported; every official config uses "
            "'default' (the time embedding is added after the first convolution)."
        )
    for channels, block_heads in zip(block_out_channels, heads):
        if channels % norm_num_groups or channels % block_heads:
            raise ConfigError(
                f"block_out_channels {channels} must be divisible by norm_num_groups {norm_num_groups} and by the "
                f"{block_heads} attention heads."
            )
