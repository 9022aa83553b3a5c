"""The UNet as the sampler calls it under the speed switches: layers compiled in place, DeepCache around it."""

from __future__ import annotations

import torch
from torch import nn

from ..models.unet_blocks import UNetBlock3D
from .deepcache import DeepCacheUNet
from .speed import EXACT, SpeedSettings


def compile_layers(unet: nn.Module, **compile_options) -> nn.Module:
    """``torch.compile`` every resnet, spatial transformer and motion module of ``unet``, in place.

    Compiling the repeated layers instead of the whole model ("regional compilation") compiles each distinct
    layer shape once and keeps the Python control flow around them, so `DeepCacheUNet` can still choose which
    layers to run. ``compile_options`` go to `torch.nn.Module.compile` (e.g. ``mode="max-autotune"``).

    Layers of one class share their ``forward`` code, and dynamo keeps a limited number of compiled versions per
    code object (8 by default); the limit is raised to the number of layers, or the later ones would run eagerly.
    """
    layers = [
        layer
        for module in unet.modules()
        if isinstance(module, UNetBlock3D)
        for group in (module.resnets, module.attentions, module.motion_modules)
        if group is not None
        for layer in group
    ]
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(layers))
    for layer in layers:
        layer.compile(**compile_options)
    return unet


def wrap_unet(unet: nn.Module, speed: SpeedSettings = EXACT) -> nn.Module:
    """The UNet as the sampler should call it under ``speed``: compiled layers (in place) and/or DeepCache.

    Returns ``unet`` itself when neither switch is on.
    """
    if speed.compile:
        compile_layers(unet)
    if speed.deepcache_interval > 1:
        return DeepCacheUNet(unet, speed.deepcache_interval, speed.deepcache_branch)
    return unet
