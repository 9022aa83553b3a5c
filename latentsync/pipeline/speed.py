"""Speed switches of a lip-sync run, each measured against the exact path (numbers in ``docs/benchmarks.md``).

`SpeedSettings` holds them; its defaults are the exact path (every switch off, or on where it cannot change the
output). The model precision is not here: it is ``LipSyncSettings.dtype`` (one table per value). Where each switch
is applied::

    deepcache_interval, deepcache_branch, compile   latentsync.pipeline.denoiser.wrap_unet
    cfg_batch, vae_batch, window_batch              latentsync.pipeline.windows.WindowGenerator
    detect_size                                     latentsync.face.detectors.resized.resized_detection
    io_overlap                                      latentsync.pipeline.threads (prefetch, background_calls)

``python -m latentsync bench --compare "deepcache_interval=3"`` measures any of them on random weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .deepcache import OFFICIAL_CACHE_BRANCH
from .settings import SettingSpec, check_settings, setting_field, setting_specs

@dataclass(frozen=True)
class SpeedSettings:
    """Speed switches; the defaults give the exact path.

    Attributes:
        deepcache_interval: run the whole UNet every this many denoising steps and only its shallow layers in
            between (`DeepCacheUNet`); 1 = off (exact). 3 is what the official ``inference.sh`` uses. Measured on
            the CPU at interval 3, branch 0: 20 steps of UNet work 1.9x (tiny UNet) to 2.45x (a fifth of the
            official channels) faster, a whole tiny-model run 2.0x. An approximation: on random weights the
            denoised latents move by about 30% of their spread; trained weights were not measured here.
        deepcache_branch: the skip connection the cached steps start the decoder from (0 = shallowest, fastest;
            higher = closer to exact, slower: branch 3 gave 1.6x). Official: 0.
        compile: ``torch.compile`` each resnet, transformer and motion module of the UNet (regional compilation,
            so DeepCache can still skip layers), in place. Output within 1e-5 of eager (float32). On the CPU: about
            a minute of compiling, then 1.1x (1.3x on top of DeepCache); meant for CUDA GPUs.
        cfg_batch: run the conditional and the unconditional (zero-audio) UNet passes of classifier-free
            guidance as one doubled batch (the reference's way) instead of two calls. Same math, output within
            float rounding. Two calls were 1.06x faster on the CPU (smaller batches stay in cache) and need
            less memory; GPUs want the doubled batch. Cannot be combined with DeepCache.
        vae_batch: images per VAE encode/decode call (`latentsync.models.vae.encode_in_batches`); None = 1 on
            the CPU (fastest there: 8 ran the VAE stages 0.76x as fast with 45% more memory) and 8 on GPUs. Exact
            at any value (the VAE works per image; the posterior samples are drawn in the same order).
        window_batch: denoise this many windows of ``num_frames`` frames in one UNet batch
            (`latentsync.pipeline.windows.sample_windows`).
            Same math, output within float rounding (< 1e-4); a throughput lever on GPUs whose 16-frame batch does
            not fill the device; no gain on the CPU (1.00x). Output frames wait for their mouth until the batch
            is full, so memory grows with it.
        detect_size: run face detection on a copy of each frame whose longer side is at most this many pixels
            (`resized_detection`; tracking and landmark smoothing keep following the face); None = full size (exact).
            No gain with MediaPipe (1.03x), which already works on small copies; meant for InsightFace.
        io_overlap: decode the next frames and encode finished ones in background threads (`prefetch`,
            `background_calls`), so the models do not wait for video IO. Exact (same frames, same order), so on
            by default. On the CPU, 20 steps: the waits for decode and encode fell from 5.4 to 0.2 ms per frame.
    """

    deepcache_interval: int = setting_field(
        1, "DeepCache: full UNet every N steps, shallow layers in between (1 = off, exact; official 3)",
        minimum=1, maximum=10, step=1,
    )  # fmt: skip
    deepcache_branch: int = setting_field(
        OFFICIAL_CACHE_BRANCH, "DeepCache skip branch the cached steps recompute from (0 = fastest)",
        minimum=0, maximum=11, step=1,
    )  # fmt: skip
    compile: bool = setting_field(False, "torch.compile the UNet layers (slow first window; for CUDA GPUs)")
    cfg_batch: bool = setting_field(True, "guidance: conditional and zero-audio passes in one UNet batch (exact)")
    vae_batch: int | None = setting_field(
        None, "images per VAE call (exact at any value; None = 1 on the CPU, 8 on GPUs)",
        int, minimum=1, maximum=64, step=1, optional=True, none_word="none",
    )  # fmt: skip
    window_batch: int = setting_field(
        1, "windows denoised together in one UNet batch (GPU throughput)", minimum=1, maximum=16, step=1
    )
    detect_size: int | None = setting_field(
        None, "detect faces on frames shrunk to this longer side (None = full size)",
        int, minimum=64, maximum=4096, step=1, optional=True, none_word="none",
    )  # fmt: skip
    io_overlap: bool = setting_field(True, "decode and encode video in background threads (exact)")

    def __post_init__(self):
        check_settings(self)
        if not self.cfg_batch and self.deepcache_interval > 1:
            raise ConfigError(
                "cfg_batch=false cannot be combined with DeepCache: DeepCache counts one UNet call per denoising "
                "step. Keep cfg_batch=true (the default) or set deepcache_interval=1."
            )

    def replace(self, **changes) -> SpeedSettings:
        """A copy with some switches changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def vae_batch_on(self, device: torch.device) -> int:
        """``vae_batch``, or what None means on ``device``: 1 on the CPU, 8 on accelerators."""
        if self.vae_batch is not None:
            return self.vae_batch
        return 1 if device.type == "cpu" else 8

    @property
    def exact(self) -> bool:
        """Whether these switches keep the output of the exact path (up to float rounding)."""
        return self.deepcache_interval == 1 and self.detect_size is None


SPEED_SPECS: dict[str, SettingSpec] = setting_specs(SpeedSettings)
EXACT = SpeedSettings()
# The switches of the official `inference.sh`: DeepCache interval 3, branch 0.
OFFICIAL = SpeedSettings(deepcache_interval=3)


def parse_switches(text: str) -> dict:
    """``"deepcache_interval=3,compile=true"`` -> ``{"deepcache_interval": 3, "compile": True}`` (for the CLI).

    Raises:
        ConfigError: an unknown name or a value of the wrong kind.
    """
    switches = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, value = item.partition("=")
        name = name.strip()
        if not separator or name not in SPEED_SPECS:
            raise ConfigError(
                f"unknown speed switch {item!r}; use NAME=VALUE with NAME one of {', '.join(SPEED_SPECS)}"
            )
        switches[name] = SPEED_SPECS[name].parse(name, value)
    return switches
