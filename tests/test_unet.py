"""UNet3DConditionModel: architecture against the official manifests, numerics against the tiny-UNet fixture."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.files import load_json, load_tensors

from latentsync.errors import ConfigError
from latentsync.models.attention import Transformer3DModel
from latentsync.models.unet import UNet3DConditionModel
from latentsync.models.unet_configs import TINY, UNET_CONFIG_KEYS, UNET_CONFIGS, get_unet_config
from latentsync.models.unet_loading import load_unet

FULL_SIZE = ("stage1", "stage2", "stage2_efficient")
# Modules whose outputs the fixture recorded during case a (first tuple element for down blocks).
INTERMEDIATES = (
    "time_proj",
    "time_embedding",
    "conv_in",
    *(f"down_blocks.{i}" for i in range(4)),
    "mid_block",
    *(f"up_blocks.{i}" for i in range(4)),
    "conv_norm_out",
    "conv_out",
)
# Largest |low precision - float32| on the first 4 frames of case a (outputs up to 2.0 in magnitude),
# measured on CPU: float16 6.7e-3, bfloat16 6.2e-2. Asserted with a 4x margin.
LOW_PRECISION_ATOL = {torch.float16: 3e-2, torch.bfloat16: 2.5e-1}


def build_on_meta(config: dict) -> UNet3DConditionModel:
    with torch.device("meta"):
        return UNet3DConditionModel.from_config(config)


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    return load_tensors(fixtures_dir / "unet_tiny" / "cases.safetensors")


def small_inputs(batch: int = 1, frames: int = 4, size: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, TINY["in_channels"], frames, size, size, generator=generator)
    audio = torch.randn(batch, frames, 50, TINY["cross_attention_dim"], generator=generator)
    return sample, audio


# ----------------------------------------------------------------------------------------------------------
# Configs and architecture


def test_named_configs_hold_exactly_the_yaml_keys():
    for name, config in UNET_CONFIGS.items():
        assert tuple(config) == UNET_CONFIG_KEYS, name
    assert get_unet_config("stage2_512") == get_unet_config("stage2")
    assert get_unet_config("stage1_512") == get_unet_config("stage1")
    edited = get_unet_config("tiny")
    edited["motion_module_kwargs"]["num_attention_heads"] = 1
    assert TINY["motion_module_kwargs"]["num_attention_heads"] == 8  # a deep copy
    with pytest.raises(ConfigError, match="stage2_efficient"):
        get_unet_config("stage3")


def test_tiny_config_matches_the_fixture(fixtures_dir):
    assert get_unet_config("tiny") == load_json(fixtures_dir / "unet_tiny" / "config.json")


@pytest.mark.parametrize("name", FULL_SIZE)
def test_state_dict_equals_the_official_manifest(fixtures_dir, name):
    manifest = load_json(fixtures_dir / f"unet_manifest_{name}.json")
    assert manifest["model"] == get_unet_config(name)

    unet = build_on_meta(manifest["model"])
    state_dict = unet.state_dict()
    assert [(k, list(v.shape)) for k, v in state_dict.items()] == [
        (entry["key"], entry["shape"]) for entry in manifest["state_dict"]
    ]
    buffers = {name for name, _ in unet.named_buffers()}
    assert {e["key"] for e in manifest["state_dict"] if e["kind"] == "buffer"} == buffers
    assert sum(v.numel() for v in state_dict.values()) == manifest["total_state_dict_elements"]

    rule = manifest["trainable_in_training_config"]
    if rule["rule_substrings"]:
        trainable = [
            v for k, v in state_dict.items() if any(s in k for s in rule["rule_substrings"]) and k not in buffers
        ]
        assert (len(trainable), sum(v.numel() for v in trainable)) == (rule["num_tensors"], rule["num_elements"])


def test_unknown_and_invalid_config_values_raise_config_error():
    with pytest.raises(ConfigError, match="bogus"):
        UNet3DConditionModel.from_config({**TINY, "bogus": 1})
    with pytest.raises(ConfigError, match="bogus"):
        UNet3DConditionModel.from_config({**TINY, "motion_module_kwargs": {**TINY["motion_module_kwargs"], "bogus": 1}})
    with pytest.raises(ConfigError, match="block type"):
        build_on_meta({**TINY, "down_block_types": ["CrossAttnDownBlock2D"] * 4})
    with pytest.raises(ConfigError, match="one entry per block"):
        build_on_meta({**TINY, "up_block_types": ["UpBlock3D"] * 3})
    with pytest.raises(ConfigError, match="divisible"):
        build_on_meta({**TINY, "block_out_channels": [32, 64, 64, 48]})
    with pytest.raises(ConfigError, match="scale_shift"):
        build_on_meta({**TINY, "resnet_time_scale_shift": "scale_shift"})
    with pytest.raises(ConfigError, match="Temporal_Cross"):
        build_on_meta({**TINY, "motion_module_kwargs": {"attention_block_types": ["Temporal_Cross"]}})
    # diffusers-style private keys of a saved config.json are tolerated
    assert build_on_meta({**TINY, "_class_name": "UNet3DConditionModel"}).config.in_channels == 13


def test_construction_init_matches_the_reference():
    unet = UNet3DConditionModel.from_config(get_unet_config("tiny"))
    for name in ("conv_in", "conv_out"):
        assert not getattr(unet, name).weight.any() and not getattr(unet, name).bias.any()
    state_dict = unet.state_dict()
    proj_outs = [k for k in state_dict if "motion_modules." in k and "temporal_transformer.proj_out." in k]
    assert proj_outs and not any(state_dict[k].any() for k in proj_outs)
    assert state_dict["down_blocks.0.resnets.0.conv1.weight"].any()

    table = state_dict[
        "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    ]
    position, index, channels = 5, 3, table.shape[-1]
    frequency = math.exp(-2 * index * math.log(10000.0) / channels)
    assert table.shape == (1, 24, 64)
    assert table[0, position, 2 * index].item() == pytest.approx(math.sin(position * frequency), abs=1e-6)
    assert table[0, position, 2 * index + 1].item() == pytest.approx(math.cos(position * frequency), abs=1e-6)

    no_motion = UNet3DConditionModel.from_config({**TINY, "use_motion_module": False})
    assert not any("motion_modules" in k for k in no_motion.state_dict())


# ----------------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("case", "abcd")
def test_matches_the_reference_on_fixture_cases(fixture_unet, cases, case):
    recorded = {}
    modules = dict(fixture_unet.named_modules())
    hooks = [
        modules[name].register_forward_hook(
            lambda module, args, output, name=name: recorded.__setitem__(
                name, output[0] if isinstance(output, tuple) else output
            )
        )
        for name in INTERMEDIATES
    ]
    try:
        with torch.no_grad():
            out = fixture_unet(
                cases[f"{case}.sample"], cases[f"{case}.timestep"], cases[f"{case}.encoder_hidden_states"]
            )
    finally:
        for hook in hooks:
            hook.remove()

    assert isinstance(out, torch.Tensor) and out.shape == cases[f"{case}.out"].shape
    torch.testing.assert_close(out, cases[f"{case}.out"], atol=1e-4, rtol=1e-4)
    if case == "a":
        for name in INTERMEDIATES:
            torch.testing.assert_close(recorded[name], cases[f"a.intermediate.{name}"], atol=1e-4, rtol=1e-4, msg=name)


def test_timestep_forms_agree(fixture_unet):
    sample, audio = small_inputs(batch=2, frames=1, size=8)
    with torch.no_grad():
        reference = fixture_unet(sample, torch.tensor([500, 500]), audio)
        for timestep in (500, 500.0, torch.tensor(500), torch.tensor([500])):
            torch.testing.assert_close(fixture_unet(sample, timestep, audio), reference, atol=0, rtol=0)
        mixed = fixture_unet(sample, torch.tensor([999, 1]), audio)
    assert not torch.allclose(mixed, reference)
    with pytest.raises(ValueError, match="timestep"):
        fixture_unet(sample, torch.tensor([1, 2, 3]), audio)


def test_each_frame_cross_attends_only_to_its_own_audio():
    torch.manual_seed(0)
    transformer = Transformer3DModel(in_channels=32, heads=8, cross_attention_dim=24).eval()
    hidden = torch.randn(2, 32, 3, 4, 4)
    audio = torch.randn(2 * 3, 50, 24)  # (b * f, n, d)
    changed = audio.clone()
    changed[1] += 1.0  # frame 1 of sample 0
    with torch.no_grad():
        before, after = transformer(hidden, audio), transformer(hidden, changed)
    differs = (before - after).abs().amax(dim=(1, 3, 4))  # (b, f)
    assert differs[0, 1] > 1e-3
    assert differs[0, 0] == 0 and differs[0, 2] == 0 and not differs[1].any()


def test_input_checks(fixture_unet):
    sample, audio = small_inputs(frames=2, size=8)
    with pytest.raises(ValueError, match="sample"):
        fixture_unet(sample[:, :4], 1, audio)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        fixture_unet(sample, 1, audio[..., :16])
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        fixture_unet(sample, 1, audio.flatten(0, 1))
    long_sample, long_audio = small_inputs(frames=25, size=8)
    with pytest.raises(ConfigError, match="at most 24 frames"):
        fixture_unet(long_sample, 1, long_audio)


class NaiveSoftmaxProcessor:
    """softmax(q k^T / sqrt(d)) v written out, to check the SDPA processor and processor swapping."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = (
            attn.split_heads(p(x)) for p, x in ((attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context))
        )
        weights = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]), dim=-1)
        return attn.to_out[0](attn.merge_heads(weights @ value))


def test_attention_processor_can_be_swapped(fixtures_dir):
    unet = load_unet(fixtures_dir / "unet_tiny" / "latentsync_unet_tiny.pt")
    sample, audio = small_inputs(frames=2, size=8)
    with torch.no_grad():
        reference = unet(sample, 300, audio)
        unet.set_attn_processor(NaiveSoftmaxProcessor())
        naive = unet(sample, 300, audio)
    torch.testing.assert_close(naive, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_is_finite_and_close_to_float32(fixtures_dir, fixture_unet, cases, dtype):
    sample, timestep, audio = cases["a.sample"][:, :, :4], cases["a.timestep"], cases["a.encoder_hidden_states"][:, :4]
    unet = load_unet(fixtures_dir / "unet_tiny" / "latentsync_unet_tiny.pt", dtype=dtype)
    assert {p.dtype for p in unet.state_dict().values()} == {dtype}
    with torch.no_grad():
        reference = fixture_unet(sample, timestep, audio)
        out = unet(sample.to(dtype), timestep, audio.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=LOW_PRECISION_ATOL[dtype], rtol=0)


def test_gradient_checkpointing_recomputes_resnets_transformers_and_motion_modules(fixtures_dir):
    """Which blocks are checkpointed (the same gradients and the memory saved: tests/test_model_files.py)."""
    unet = load_unet(fixtures_dir / "unet_tiny" / "latentsync_unet_tiny.pt").train()
    sample, audio = small_inputs(frames=2, size=8)
    calls = []

    def counting_checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)

    unet.enable_gradient_checkpointing(counting_checkpoint)
    unet(sample, torch.tensor([700]), audio).square().mean().backward()
    assert {"ResnetBlock3D", "Transformer3DModel", "VanillaTemporalModule"} <= set(calls)
