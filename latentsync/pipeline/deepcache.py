"""DeepCache for the LatentSync UNet: reuse the deep features of the last full step on the steps in between.

Ma et al., "DeepCache: Accelerating Diffusion Models for Free" (CVPR 2024). The deep (low-resolution) features of a
UNet change slowly from one denoising step to the next, while the shallow ones carry the detail. Every
``interval``-th step of a trajectory runs the whole UNet and keeps the hidden state that enters the decoder layer
fed by skip connection ``branch``; the steps in between run only the shallow part (``conv_in``, the encoder layers
that produce skips ``0 .. branch``, the decoder layers from that one on, ``conv_out``) and start the decoder from
the kept hidden state.

The steps are compositions of the UNet's stages (`UNet3DConditionModel.embed`, ``down_path``, ``mid_block``,
``up_path``, ``post_process``). Skips are numbered in the order the encoder produces them: 0 is the ``conv_in``
output, then every encoder layer's output and every downsampled output, block by block (the UNet's decoder consumes
them last first). With two layers per block this is the numbering of the ``DeepCache`` package's ``cache_branch_id``
for SD-1.5 (block ``id // 3``, layer ``id % 3``); the official ``inference.sh`` runs LatentSync with
``cache_interval=3, cache_branch_id=0``, where a cached step computes ``conv_in``, the last layer of the last
decoder block (resnet, transformer, motion module) and ``conv_out``, and reuses everything else. The package
memoises sub-modules and leaves the motion modules unwrapped, so they recompute the same values from cached inputs;
reusing the hidden state instead gives the same outputs (checked bit for bit, every branch, with
``DeepCacheSDHelper`` patched onto this UNet).

Steps are counted per trajectory: a call whose timestep is not below the previous one, or whose input shape
differs, starts a new trajectory with a full step (the DDIM timesteps fall strictly within one), so one wrapper
serves every window of a video. With CFG the doubled batch is one call per step, as in the reference.

Measured on CPU (``docs/benchmarks.md``): interval 3 / branch 0 makes 20 steps of UNet work 1.9x (tiny UNet) to
2.4x (a fifth of the official channels) faster, and a whole tiny-model run 2.0x. It is an approximation: on random
weights, whose deep features do not change slowly, the denoised latents move by about 30% of their spread. With
trained weights the error should be far smaller (DeepCache's premise; the official ``inference.sh`` turns it on),
but it was not measured here. The exact path stays the default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError

if TYPE_CHECKING:  # annotations only: the UNet module imports diffusers
    from ..models.unet import UNet3DConditionModel

# The DeepCache setting of the official `inference.sh` (`--enable_deepcache`).
OFFICIAL_CACHE_INTERVAL = 3
OFFICIAL_CACHE_BRANCH = 0


class DeepCacheUNet(nn.Module):
    """Wraps a `UNet3DConditionModel` and is called like it: ``(sample, timestep, encoder_hidden_states) -> noise``.

    Args:
        unet: the model (its weights are shared, not copied; the wrapper's ``parameters()`` are the UNet's).
        interval: run the whole UNet every ``interval`` steps of a trajectory (1 = every step: the UNet's output,
            bit for bit).
        branch: skip connection whose decoder layer starts the cached steps (0 = shallowest, fastest; larger
            values recompute more and stay closer to the exact path).

    Raises:
        ConfigError: ``interval < 1`` or a branch the UNet does not have.
    """

    def __init__(
        self, unet: UNet3DConditionModel, interval: int = OFFICIAL_CACHE_INTERVAL, branch: int = OFFICIAL_CACHE_BRANCH
    ):
        super().__init__()
        num_branches = unet.num_skips
        if interval < 1:
            raise ConfigError(f"DeepCache interval must be >= 1 (1 = off), got {interval}")
        if not 0 <= branch < num_branches:
            raise ConfigError(f"DeepCache branch must be between 0 and {num_branches - 1} for this UNet, got {branch}")
        self.unet = unet
        self.interval = interval
        self.branch = branch
        # Decoder layers are numbered in execution order; the one at `cache_position` consumes skip `branch`.
        self.cache_position = num_branches - 1 - branch
        self.reset()

    @property
    def config(self):
        return self.unet.config

    def reset(self) -> None:
        """Forget the cached features; the next call is a full step."""
        self.cached_hidden_states: torch.Tensor | None = None
        self.cached_shape: torch.Size | None = None
        self.last_timestep: float | None = None
        self.step_index = 0
        self.num_full_steps = 0
        self.num_cached_steps = 0

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """Predict the noise; same arguments and result as `UNet3DConditionModel.forward`."""
        if self.interval == 1:
            return self.unet(sample, timestep, encoder_hidden_states)
        unet = self.unet

        # 0. full or cached step
        latest = float(torch.as_tensor(timestep).max())
        if self.last_timestep is None or latest >= self.last_timestep or sample.shape != self.cached_shape:
            self.step_index = 0  # a new trajectory
        full_step = self.step_index % self.interval == 0
        self.step_index += 1
        self.last_timestep = latest

        # 1. time, audio and conv_in
        hidden_states, temb, encoder_hidden_states = unet.embed(sample, timestep, encoder_hidden_states)

        # 2. a full step runs every stage and keeps what enters up layer `cache_position`; a cached step computes
        #    skips 0 .. branch only and starts the up path there from the kept hidden state
        if full_step:
            skips = unet.down_path(hidden_states, temb, encoder_hidden_states)
            hidden_states = unet.mid_block(skips[-1], temb, encoder_hidden_states)
            hidden_states = unet.up_path(hidden_states, skips, temb, encoder_hidden_states, stop=self.cache_position)
            self.cached_hidden_states, self.cached_shape = hidden_states, sample.shape
            self.num_full_steps += 1
        else:
            skips = unet.down_path(hidden_states, temb, encoder_hidden_states, num_skips=self.branch + 1)
            hidden_states = self.cached_hidden_states
            self.num_cached_steps += 1

        # 3. the rest of the up path, post-process
        hidden_states = unet.up_path(hidden_states, skips, temb, encoder_hidden_states, start=self.cache_position)
        return unet.post_process(hidden_states)
