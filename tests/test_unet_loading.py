"""Loading, recognising, saving UNet checkpoints, and SD-1.5 initialisation."""

from __future__ import annotations

import pytest
import torch
from helpers.files import load_json
from safetensors.torch import save_file

from latentsync.errors import CheckpointError
from latentsync.models.unet import UNet3DConditionModel
from latentsync.models.unet_configs import STAGE2, STAGE2_EFFICIENT, TINY, get_unet_config
from latentsync.models.identify import (
    LATENTSYNC_UNET,
    LATENTSYNC_UNET_V10,
    SD_UNET_DIFFUSERS,
    SD_UNET_ORIGINAL,
    SYNCNET,
    UNKNOWN,
    VAE,
    WHISPER,
    identify_checkpoint,
)
from latentsync.models.unet_loading import (
    convert_v10_state_dict,
    infer_unet_config,
    init_unet_from_sd15,
    load_unet,
    plan_sd15_init,
    save_unet,
)

TINY_STAGE1 = {**TINY, "use_motion_module": False}


def meta_state_dict(config: dict) -> dict:
    with torch.device("meta"):
        return UNet3DConditionModel.from_config(config).state_dict()


def tiny_sd_unet_state_dict(out_channels: int = 4, device: str = "cpu") -> dict:
    """A diffusers SD-style UNet (4 latent channels, 768-wide text cross-attention) with the tiny block widths."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(
            in_channels=4,
            out_channels=out_channels,
            block_out_channels=tuple(TINY["block_out_channels"]),
            layers_per_block=TINY["layers_per_block"],
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    return unet.state_dict()


def tiny_vae_state_dict() -> dict:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32,), layers_per_block=1, norm_num_groups=32).state_dict()


def v10_state_dict(state_dict: dict) -> dict:
    """The LatentSync 1.0 names of a motion-free state dict."""
    return {
        key.replace(".norm2.", ".audio_cross_attn.norm.").replace(".attn2.", ".audio_cross_attn.attn."): tensor
        for key, tensor in state_dict.items()
    }


@pytest.fixture(scope="module")
def tiny_path(fixtures_dir):
    return fixtures_dir / "unet_tiny" / "latentsync_unet_tiny.pt"


@pytest.fixture(scope="module")
def tiny_file_state_dict(tiny_path):
    return torch.load(tiny_path, map_location="cpu", weights_only=True)["state_dict"]


# ----------------------------------------------------------------------------------------------------------
# Loading and saving


def test_load_official_container_with_auto_config(tiny_path, tiny_file_state_dict):
    unet = load_unet(tiny_path)
    assert unet.global_step == 1234 and not unet.training
    assert {k: v for k, v in unet.config.items() if not k.startswith("_")} == {**TINY, "sample_size": 64}
    state_dict = unet.state_dict()
    assert state_dict.keys() == tiny_file_state_dict.keys()
    for key, tensor in tiny_file_state_dict.items():
        assert torch.equal(state_dict[key], tensor), key
    assert not any(t.is_meta for t in state_dict.values())

    named = load_unet(tiny_path, config="tiny", dtype=torch.bfloat16)
    assert named.config.sample_size == 16 and named.dtype == torch.bfloat16


def test_bare_state_dict_loads_with_step_zero(tmp_path, tiny_file_state_dict):
    path = tmp_path / "bare.pt"
    torch.save(tiny_file_state_dict, path)
    assert load_unet(path).global_step == 0
    with pytest.raises(CheckpointError, match=r"\.pt or \.safetensors"):
        save_unet(load_unet(path), tmp_path / "unet.bin")


# ----------------------------------------------------------------------------------------------------------
# Recognising files


def test_identify_checkpoint_kinds():
    tensor = torch.zeros(1)
    assert identify_checkpoint(meta_state_dict(STAGE2)) == LATENTSYNC_UNET
    assert identify_checkpoint(meta_state_dict(TINY_STAGE1)) == LATENTSYNC_UNET
    assert identify_checkpoint(v10_state_dict(meta_state_dict(TINY_STAGE1))) == LATENTSYNC_UNET_V10
    assert identify_checkpoint(tiny_sd_unet_state_dict(device="meta")) == SD_UNET_DIFFUSERS
    assert identify_checkpoint({"model.diffusion_model.input_blocks.0.0.weight": tensor}) == SD_UNET_ORIGINAL
    assert identify_checkpoint(tiny_vae_state_dict()) == VAE
    whisper = {"encoder.positional_embedding": tensor, "encoder.conv1.weight": tensor, "decoder.ln.weight": tensor}
    assert identify_checkpoint(whisper) == WHISPER
    assert (
        identify_checkpoint({"audio_encoder.conv_in.weight": tensor, "visual_encoder.conv_in.weight": tensor})
        == SYNCNET
    )
    assert identify_checkpoint({"linear.weight": tensor}) == UNKNOWN
    assert identify_checkpoint({}) == UNKNOWN


INFER_CASES = {
    "stage1": get_unet_config("stage1"),
    "stage2": get_unet_config("stage2"),
    "stage2_efficient": get_unet_config("stage2_efficient"),
    "tiny": get_unet_config("tiny"),
    "widths": {**TINY, "block_out_channels": [64, 128, 128, 256]},
    "cross768": {**STAGE2_EFFICIENT, "cross_attention_dim": 768},
    "layers1": {**STAGE2, "layers_per_block": 1},
    "blocks": {**TINY, "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"] * 2},
    "no_audio": {**TINY, "add_audio_layer": False, "cross_attention_dim": 384},
    "motion_variant": {
        **TINY,
        "motion_module_resolutions": [1, 2],
        "motion_module_mid_block": True,
        "motion_module_kwargs": {
            **TINY["motion_module_kwargs"],
            "num_transformer_block": 2,
            "attention_block_types": ["Temporal_Self"],
            "temporal_position_encoding_max_len": 16,
            "temporal_attention_dim_div": 2,
        },
    },
    "decoder_only_subset": {**TINY, "motion_module_decoder_only": True, "motion_module_resolutions": [4, 8]},
    "no_position_table": {
        **TINY,
        "motion_module_kwargs": {**TINY["motion_module_kwargs"], "temporal_position_encoding": False},
    },
}


@pytest.mark.parametrize("name", INFER_CASES)
def test_infer_config_reproduces_the_architecture(name):
    config = INFER_CASES[name]
    inferred = infer_unet_config(meta_state_dict(config))
    # sample_size has no effect on the model and cannot be read back; everything else must come back exactly.
    assert inferred == {**config, "sample_size": 64}


def test_infer_config_refuses_other_models():
    with pytest.raises(CheckpointError, match="VAE"):
        infer_unet_config(tiny_vae_state_dict())
    with pytest.raises(CheckpointError, match="1.0"):
        infer_unet_config(v10_state_dict(meta_state_dict(TINY_STAGE1)))


# ----------------------------------------------------------------------------------------------------------
# Strict-loading errors


def test_unreadable_files_are_refused(tmp_path, tiny_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_path.read_bytes()[: tiny_path.stat().st_size // 2])
    empty = tmp_path / "empty.pt"
    empty.touch()
    for path, message in ((truncated, "truncated"), (empty, "empty")):
        with pytest.raises(CheckpointError, match=message):
            load_unet(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_unet(tmp_path / "missing.pt")


@pytest.mark.parametrize("text", ["this is not a checkpoint\n", "hello"])
def test_text_file_is_refused(tmp_path, text):
    path = tmp_path / "notes.pt"
    path.write_text(text)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_unet(path)


class _WritesMarker:
    marker = ""

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker.txt"
    payload = _WritesMarker()
    payload.marker = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"conv_in.weight": torch.zeros(1)}, "global_step": payload}, path)
    with pytest.raises(CheckpointError, match=r"holds Python objects besides tensors \(a reference to exec\)") as error:
        load_unet(path)
    assert not marker.exists()
    # one line that names the refusal, without torch's page of advice (which ends in "weights_only=False")
    assert "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_other_models_are_named(tmp_path):
    vae = tmp_path / "vae.pt"
    torch.save(tiny_vae_state_dict(), vae)
    with pytest.raises(CheckpointError, match="VAE"):
        load_unet(vae, config="tiny")

    sd = tmp_path / "sd15_unet.safetensors"
    save_file(tiny_sd_unet_state_dict(), str(sd))
    with pytest.raises(CheckpointError, match="Stable Diffusion UNet.*init_unet_from_sd15"):
        load_unet(sd)
    with pytest.raises(CheckpointError, match=r"conv_in\.weight: file \(32, 4, 3, 3\)"):
        load_unet(sd, config="tiny")

    v10 = tmp_path / "latentsync_v10.pt"
    torch.save({"state_dict": v10_state_dict(meta_state_dict(TINY_STAGE1)), "global_step": 5}, v10)
    with pytest.raises(CheckpointError, match="LatentSync 1.0.*convert_v10_state_dict"):
        load_unet(v10, config=TINY_STAGE1)


def test_stage_mismatch_names_motion_modules(tmp_path, tiny_path):
    with pytest.raises(CheckpointError, match=r"Unexpected 336 keys: down_blocks\.0\.motion_modules\.0\.") as error:
        load_unet(tiny_path, config=TINY_STAGE1)
    assert "motion modules in encoder and decoder" in str(error.value)  # says what the file is

    stage1_file = tmp_path / "stage1.safetensors"
    save_unet(UNet3DConditionModel.from_config(TINY_STAGE1), stage1_file)
    with pytest.raises(CheckpointError, match=r"Missing 336 keys: down_blocks\.0\.motion_modules"):
        load_unet(stage1_file, config="tiny")
    assert not load_unet(stage1_file).config.use_motion_module  # auto handles stage-1 files


def test_v10_conversion_loads_strictly(tmp_path, tiny_file_state_dict):
    current = {k: v for k, v in tiny_file_state_dict.items() if "motion_modules." not in k}
    converted = convert_v10_state_dict(v10_state_dict(current))
    assert converted.keys() == current.keys()
    path = tmp_path / "converted.pt"
    torch.save({"state_dict": converted}, path)
    assert load_unet(path, config=TINY_STAGE1).state_dict().keys() == current.keys()


# ----------------------------------------------------------------------------------------------------------
# SD-1.5 initialisation


def test_init_from_sd15_drops_only_what_cannot_fit(tmp_path):
    sd = tiny_sd_unet_state_dict()
    path = tmp_path / "sd15.safetensors"
    save_file(sd, str(path))
    unet, report = init_unet_from_sd15(path, "tiny")

    cross_kv = [k for k in sd if ".attn2.to_k." in k or ".attn2.to_v." in k]
    assert len(cross_kv) == 20  # 10 transformers: 3 down, 6 up, 1 mid
    assert sorted(report.dropped) == sorted(["conv_in.weight", "conv_in.bias", *cross_kv])
    assert set(report.loaded) == set(sd) - set(report.dropped)
    state_dict = unet.state_dict()
    assert set(report.left_at_init) == set(state_dict) - set(report.loaded)
    assert all(k in report.dropped or "motion_modules." in k for k in report.left_at_init)
    for key in report.loaded:
        assert torch.equal(state_dict[key], sd[key]), key
    assert not unet.conv_in.weight.any() and unet.conv_out.weight.any()
    assert not any(v.any() for k, v in state_dict.items() if "temporal_transformer.proj_out" in k)
    assert state_dict[cross_kv[0]].shape == (32, 24)


def test_init_from_sd15_drops_conv_out_when_channels_differ():
    unet, report = init_unet_from_sd15(tiny_sd_unet_state_dict(out_channels=8), TINY_STAGE1)
    assert {"conv_out.weight", "conv_out.bias"} <= set(report.dropped)
    assert not unet.conv_out.weight.any()


def test_init_from_sd15_refuses_other_conflicts():
    sd = tiny_sd_unet_state_dict()
    with pytest.raises(CheckpointError, match="Unexpected 1 keys: add_embedding.linear_1.weight"):
        init_unet_from_sd15({**sd, "add_embedding.linear_1.weight": torch.zeros(4, 4)}, "tiny")
    with pytest.raises(CheckpointError, match=r"Wrong shape for 1 keys: conv_norm_out.weight"):
        init_unet_from_sd15({**sd, "conv_norm_out.weight": torch.zeros(64)}, "tiny")
    incomplete = {k: v for k, v in sd.items() if k != "mid_block.resnets.1.conv2.weight"}
    with pytest.raises(CheckpointError, match=r"Missing 1 keys: mid_block.resnets.1.conv2.weight"):
        init_unet_from_sd15(incomplete, "tiny")
    with pytest.raises(CheckpointError, match="VAE"):
        init_unet_from_sd15(tiny_vae_state_dict(), "tiny")


@pytest.mark.parametrize("name", ["stage1", "stage2", "stage2_efficient"])
def test_sd15_plan_matches_the_manifest_report(fixtures_dir, name):
    from diffusers import UNet2DConditionModel

    expected = load_json(fixtures_dir / f"unet_manifest_{name}.json")["sd15_loading_report"]
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).state_dict()
        unet = UNet3DConditionModel.from_config(get_unet_config(name))
    report = plan_sd15_init(sd15, unet)
    assert report.dropped == expected["dropped_before_loading"]
    assert len(report.loaded) == expected["num_loaded_from_sd15"] == 652
    left = expected["missing_keys_keep_their_init"]
    assert len(report.left_at_init) == left["count"]
    assert sum("motion_modules." in k for k in report.left_at_init) == left["count_in_motion_modules"]
    assert [k for k in report.left_at_init if "motion_modules." not in k] == left["not_in_motion_modules"]
    assert expected["unexpected_sd15_keys_ignored"] == [] and expected["remaining_shape_conflicts"] == []
