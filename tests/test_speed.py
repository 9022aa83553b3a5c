"""Speed switches: each one against the exact path, within its documented tolerance."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from latentsync.errors import ConfigError
from latentsync.models.unet import UNet3DConditionModel
from latentsync.models.unet_configs import get_unet_config
from latentsync.models.vae import TINY_VAE_CONFIG, DiffusersVAE, decode_in_batches, encode_in_batches
from latentsync.pipeline.ddim import create_scheduler, sample_ddim
from latentsync.pipeline.deepcache import DeepCacheUNet
from latentsync.pipeline.denoiser import wrap_unet
from latentsync.pipeline.speed import (
    EXACT,
    OFFICIAL,
    SpeedSettings,
    parse_switches,
)
from latentsync.pipeline.threads import background_calls, prefetch
from latentsync.pipeline.windows import WindowInputs, sample_windows
from latentsync.tiny import randomize_parameters

NUM_FRAMES, LATENT_SIZE = 4, 8
# DeepCache on random weights (deep features do not change slowly there): largest |latent difference| after 9 steps
# at interval 3, relative to the spread of the exact latents. Measured 0.66 (branch 0) and 0.06 (deepest branch)
# for the layers_per_block=2 tiny UNet; asserted with margin.
DEEPCACHE_RANDOM_WEIGHTS_RTOL = {"shallowest": 0.9, "deepest": 0.15}
# Batching windows changes only the blocking of matrix products.
WINDOW_BATCH_ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_unet(layers_per_block: int = 2, seed: int = 0) -> UNet3DConditionModel:
    config = {**get_unet_config("tiny"), "layers_per_block": layers_per_block}
    return randomize_parameters(UNet3DConditionModel(**config), torch.Generator().manual_seed(seed)).eval()


@pytest.fixture(scope="module")
def unet() -> UNet3DConditionModel:
    return random_unet()


def window_inputs(seed: int = 1, num_frames: int = NUM_FRAMES) -> WindowInputs:
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 4, num_frames, LATENT_SIZE, LATENT_SIZE)
    return WindowInputs(
        latents=torch.randn(shape, generator=generator),
        mask_latents=(torch.rand(1, 1, num_frames, LATENT_SIZE, LATENT_SIZE, generator=generator) > 0.5).float(),
        masked_image_latents=torch.randn(shape, generator=generator),
        ref_latents=torch.randn(shape, generator=generator),
        audio_embeds=torch.randn(1, num_frames, 50, 24, generator=generator),
    )


def sample(unet_fn, window: WindowInputs, steps: int = 9) -> torch.Tensor:
    return sample_ddim(unet_fn, **vars(window), num_inference_steps=steps)


# ----------------------------------------------------------------------------------------------------------
# DeepCache


def test_interval_one_is_the_exact_path_bit_for_bit(unet):
    window = window_inputs()
    assert torch.equal(sample(DeepCacheUNet(unet, interval=1), window), sample(unet, window))


@pytest.mark.parametrize("branch", [0, 4, 11])
def test_full_steps_are_the_unet_bit_for_bit(unet, branch):
    window = window_inputs()
    sample_input = torch.cat([window.latents, window.mask_latents, window.masked_image_latents, window.ref_latents], 1)
    cached = DeepCacheUNet(unet, interval=3, branch=branch)
    with torch.no_grad():
        assert torch.equal(cached(sample_input, 981, window.audio_embeds), unet(sample_input, 981, window.audio_embeds))


class ModuleCache:
    """DeepCache as the ``DeepCache`` package applies it to the official pipeline, written independently: every
    resnet, transformer, sampler and block of the UNet is memoised by (kind, block id, layer id) and returns its
    last output on the cached steps, under the package's rules for ``cache_branch_id`` (SD numbering: block
    ``id // 3``, layer ``id % 3``; decoder ids mirrored). Motion modules are not wrapped (as in the package)."""

    def __init__(self, unet, scheduler, interval: int, branch: int):
        self.unet, self.scheduler, self.interval = unet, scheduler, interval
        self.block, self.layer = branch // 3, branch % 3
        self.outputs, self.originals, self.step = {}, [], 0

    def skipped(self, block: int, layer: int, kind: str) -> bool:
        if self.step % self.interval == 0:
            return False
        if kind == "mid" or block > self.block:
            return True
        if block < self.block:
            return False
        return layer >= self.layer if kind == "down" else layer > self.layer

    def wrap(self, module, kind: str, block: int, layer: int, name: str) -> None:
        forward = module.forward
        key = (kind, name, block, layer)

        def memoised(*args, **kwargs):
            if self.skipped(block, layer, kind):
                return self.outputs[key]
            self.outputs[key] = forward(*args, **kwargs)
            return self.outputs[key]

        module.forward = memoised
        self.originals.append((module, forward))

    def __enter__(self):
        unet = self.unet
        for index, block in enumerate(unet.down_blocks):
            for layer, module in enumerate(block.attentions or []):
                self.wrap(module, "down", index, layer, "attention")
            for layer, module in enumerate(block.resnets):
                self.wrap(module, "down", index, layer, "resnet")
            for module in block.downsamplers or []:
                self.wrap(module, "down", index, len(block.resnets), "downsampler")
            self.wrap(block, "down", index, 0, "block")
        self.wrap(unet.mid_block, "mid", 0, 0, "mid")
        num_blocks = len(unet.up_blocks)
        for index, block in enumerate(unet.up_blocks):
            mirrored, num_layers = num_blocks - 1 - index, len(block.resnets)
            for layer, module in enumerate(block.attentions or []):
                self.wrap(module, "up", mirrored, num_layers - 1 - layer, "attention")
            for layer, module in enumerate(block.resnets):
                self.wrap(module, "up", mirrored, num_layers - 1 - layer, "resnet")
            for module in block.upsamplers or []:
                self.wrap(module, "up", mirrored, 0, "upsampler")
            self.wrap(block, "up", mirrored, 0, "block")
        unet_forward = unet.forward

        def counted(sample, timestep, audio):
            self.step = list(self.scheduler.timesteps).index(timestep.item())
            return unet_forward(sample, timestep, audio)

        unet.forward = counted
        self.originals.append((unet, unet_forward))
        return self

    def __exit__(self, *exc_info):
        for module, forward in reversed(self.originals):
            module.forward = forward


@pytest.mark.parametrize("branch", [0, 1, 2, 3, 7, 11])
def test_deepcache_reuses_what_the_deepcache_package_reuses(unet, branch):
    window = window_inputs()
    scheduler = create_scheduler()
    with ModuleCache(unet, scheduler, interval=3, branch=branch):
        expected = sample_ddim(unet, **vars(window), num_inference_steps=9, scheduler=scheduler)
    torch.testing.assert_close(sample(DeepCacheUNet(unet, 3, branch), window), expected, atol=1e-5, rtol=1e-5)


def test_deepcache_difference_is_within_its_documented_bound_on_random_weights(unet):
    window = window_inputs()
    exact = sample(unet, window)
    spread = exact.std()
    for name, branch in (("shallowest", 0), ("deepest", unet.num_skips - 1)):
        approximate = sample(DeepCacheUNet(unet, 3, branch), window)
        relative = ((approximate - exact).abs().max() / spread).item()
        assert 0 < relative < DEEPCACHE_RANDOM_WEIGHTS_RTOL[name], (name, relative)


def test_deepcache_counts_steps_per_trajectory():
    unet = random_unet(layers_per_block=1)
    cached = DeepCacheUNet(unet, interval=3, branch=0)
    for window in (window_inputs(1), window_inputs(2), window_inputs(3, num_frames=2)):
        sample(cached, window, steps=20)
    # 20 steps: full at 0, 3, ..., 18 -> 7 full and 13 cached, for each of the three windows (the third one is
    # shorter: its shape starts a trajectory too).
    assert (cached.num_full_steps, cached.num_cached_steps) == (21, 39)


def test_deepcache_refuses_bad_settings(unet):
    with pytest.raises(ConfigError, match="interval"):
        DeepCacheUNet(unet, interval=0)
    with pytest.raises(ConfigError, match="between 0 and 11"):
        DeepCacheUNet(unet, branch=12)
    assert random_unet(layers_per_block=1).num_skips == 8


# ----------------------------------------------------------------------------------------------------------
# Other switches


def test_speed_settings_default_to_the_exact_path():
    assert EXACT.exact and not OFFICIAL.exact
    assert wrap_unet(torch.nn.Identity(), EXACT).__class__ is torch.nn.Identity
    assert parse_switches("deepcache_interval=3, compile=true,detect_size=none") == {
        "deepcache_interval": 3,
        "compile": True,
        "detect_size": None,
    }
    with pytest.raises(ConfigError, match="unknown speed switch"):
        parse_switches("deep_cache=3")
    with pytest.raises(ConfigError, match="between 1 and 16"):
        SpeedSettings(window_batch=0)
    with pytest.raises(ConfigError, match="true or false"):
        SpeedSettings(io_overlap="yes")


def test_batched_windows_equal_one_window_at_a_time(unet):
    windows = [window_inputs(1), window_inputs(2), window_inputs(3), window_inputs(4, num_frames=2)]
    one_by_one = sample_windows(unet, windows, window_batch=1, num_inference_steps=3)
    batched = sample_windows(unet, windows, window_batch=3, num_inference_steps=3)
    assert [tuple(result.shape) for result in batched] == [(1, 4, n, 8, 8) for n in (4, 4, 4, 2)]
    for alone, together in zip(one_by_one, batched):
        torch.testing.assert_close(together, alone, atol=WINDOW_BATCH_ATOL, rtol=WINDOW_BATCH_ATOL)


def test_vae_batch_size_does_not_change_the_output():
    from diffusers import AutoencoderKL

    codec = DiffusersVAE(randomize_parameters(AutoencoderKL(**TINY_VAE_CONFIG), torch.Generator().manual_seed(0)))
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # Posterior samples: drawn in the same order whatever the batch size
    encoded = [encode_in_batches(codec, pixels, torch.Generator().manual_seed(2), size) for size in (1, 2, 5)]
    for latents in encoded[1:]:
        torch.testing.assert_close(latents, encoded[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(encoded[0], encode_in_batches(codec, pixels, torch.Generator().manual_seed(3), 5))
    decoded = [decode_in_batches(codec, encoded[0], size) for size in (1, 3, 8)]
    for pixels_back in decoded[1:]:
        torch.testing.assert_close(pixels_back, decoded[0], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not os.environ.get("LATENTSYNC_SLOW_TESTS"), reason="compiling takes minutes on a CPU")
def test_compiled_layers_match_eager():
    unet = random_unet(layers_per_block=1)
    window = window_inputs()
    expected = sample(unet, window, steps=2)
    torch.testing.assert_close(
        sample(wrap_unet(unet, SpeedSettings(compile=True)), window, 2), expected, atol=1e-4, rtol=1e-4
    )


# ----------------------------------------------------------------------------------------------------------
# IO overlap


def test_prefetch_keeps_order_and_runs_ahead_in_a_thread():
    threads = []

    def produce():
        for index in range(50):
            threads.append(threading.current_thread())
            yield index

    assert list(prefetch(produce(), depth=4)) == list(range(50))
    assert threads and all(thread is not threading.current_thread() for thread in threads)


def test_prefetch_raises_the_producers_error_in_order():
    def produce():
        yield 1
        yield 2
        raise ValueError("broken frame")

    items = prefetch(produce(), depth=8)
    assert (next(items), next(items)) == (1, 2)
    with pytest.raises(ValueError, match="broken frame"):
        next(items)


def test_prefetch_stops_and_closes_the_source_when_left_early():
    closed = threading.Event()

    def produce():
        try:
            index = 0
            while True:
                yield index
                index += 1
        finally:
            closed.set()

    frames = prefetch(produce(), depth=2)
    assert [next(frames) for _ in range(3)] == [0, 1, 2]
    frames.close()
    assert closed.wait(5)


def test_background_calls_run_in_order_and_report_errors():
    written = []
    with background_calls(written.append, depth=2) as submit:
        for index in range(20):
            submit(index)
    assert written == list(range(20))

    def fail(item):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), background_calls(fail) as submit:
        submit(1)
