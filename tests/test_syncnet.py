"""StableSyncNet: architecture vs the official manifest, tiny-checkpoint parity, config inference, loading, saving."""

from __future__ import annotations

import pytest
import torch
from helpers.files import load_json, load_tensors

from latentsync.errors import CheckpointError, ConfigError
from latentsync.models.syncnet import StableSyncNet, cosine_loss, pack_frames, sync_distance, sync_similarity
from latentsync.models.syncnet_loading import infer_syncnet_config, load_syncnet, save_syncnet
from latentsync.models.syncnet_configs import SYNCNET_CONFIGS, get_syncnet_config

ATOL = 1e-5  # fixture README §0: SyncNet embeddings and loss


@pytest.fixture(scope="module")
def syncnet_dir(fixtures_dir):
    return fixtures_dir / "syncnet"


def _meta_model(config) -> StableSyncNet:
    with torch.device("meta"):
        return StableSyncNet.from_config(config)


# ---------------------------------------------------------------------------------------------------------
# Architecture


def test_state_dict_matches_official_manifest(syncnet_dir):
    manifest = load_json(syncnet_dir / "syncnet_manifest_16_pixel_attn.json")
    official = SYNCNET_CONFIGS["syncnet_16_pixel_attn"]
    assert official["model"] == manifest["model"]
    assert official["data"] == {key: manifest["data"][key] for key in official["data"]}

    model = _meta_model("syncnet_16_pixel_attn")
    entries = [
        {"key": key, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        for key, tensor in model.state_dict().items()
    ]
    assert entries == manifest["state_dict"]  # same keys, order, shapes and dtypes
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["total_state_dict_elements"]


def test_tiny_config_matches_fixture(syncnet_dir):
    assert SYNCNET_CONFIGS["syncnet_tiny"]["model"] == load_json(syncnet_dir / "config_tiny.json")


@pytest.mark.parametrize("name", sorted(SYNCNET_CONFIGS))
def test_documented_input_sizes_reduce_to_one_pixel(name):
    """The input sizes each config's ``data`` section implies give (b, C, 1, 1), by arithmetic and on meta."""
    config = get_syncnet_config(name)
    data = config["data"]
    mel_frames = -(-data["num_frames"] * 16 // 5)  # ceil(num_frames / 5 * 16)
    side = data["resolution"] // 8 if data["latent_space"] else data["resolution"]
    height = side - side // 2 if data["lower_half"] else side
    model = _meta_model(config)
    assert model.visual_encoder.config.in_channels == data["num_frames"] * (4 if data["latent_space"] else 3)

    for encoder, size in ((model.audio_encoder, (80, mel_frames)), (model.visual_encoder, (height, side))):
        assert encoder.output_size(*size) == (1, 1)
        out = encoder(torch.empty(2, encoder.config.in_channels, *size, device="meta"))
        assert tuple(out.shape) == (2, encoder.config.block_out_channels[-1], 1, 1)
    # For other sizes output_size predicts the real conv output shape too.
    larger = torch.empty(1, model.visual_encoder.config.in_channels, 3 * height, 3 * side, device="meta")
    out = model.visual_encoder(larger)
    assert tuple(out.shape[-2:]) == model.visual_encoder.output_size(3 * height, 3 * side) == (3, 3)


# ---------------------------------------------------------------------------------------------------------
# Numerics


def test_tiny_case_parity(syncnet_dir):
    case = load_tensors(syncnet_dir / "syncnet_tiny_case.safetensors")
    inputs = {"frames_uint8", "mel", "y"}
    outputs = {"vision_embeds", "audio_embeds", "cosine_similarity", "loss_per_sample", "loss_mean"}
    assert set(case) == inputs | outputs  # a new fixture tensor must get a check here

    model = load_syncnet(syncnet_dir / "stable_syncnet_tiny.pt")
    assert not model.training
    frames = case["frames_uint8"].to(torch.float32) / 127.5 - 1.0
    with torch.no_grad():
        vision_embeds, audio_embeds = model(frames, case["mel"])
    loss_per_sample = cosine_loss(vision_embeds, audio_embeds, case["y"])
    got = {
        "vision_embeds": vision_embeds,
        "audio_embeds": audio_embeds,
        "cosine_similarity": sync_similarity(vision_embeds, audio_embeds),
        "loss_per_sample": loss_per_sample,
        "loss_mean": loss_per_sample.mean(),
    }
    for name in outputs:
        assert got[name].shape == case[name].shape, name
        torch.testing.assert_close(got[name], case[name], atol=ATOL, rtol=0, msg=name)
    distance = sync_distance(vision_embeds, audio_embeds)
    torch.testing.assert_close(distance, 1 - case["cosine_similarity"], atol=ATOL, rtol=0)


def test_cosine_loss_is_bce_of_similarity_with_label_one_for_in_sync():
    vision = torch.tensor([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    audio = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    similarity = sync_similarity(vision, audio)
    torch.testing.assert_close(similarity, torch.tensor([0.6, 1.0, 0.0]))
    loss = cosine_loss(vision, audio, torch.tensor([[1.0], [1.0], [0.0]]))
    torch.testing.assert_close(loss, torch.tensor([-torch.log(torch.tensor(0.6)).item(), 0.0, 0.0]))
    # Log clamped at -100 as BCELoss: an orthogonal pair labelled in sync costs 100, not inf.
    assert cosine_loss(vision[2:], audio[2:], torch.ones(1)).item() == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------------------
# Inputs


def test_pack_frames_layout():
    batch, num_frames, channels, height, width = 2, 16, 3, 6, 4
    frame_index = torch.arange(num_frames).view(1, -1, 1, 1, 1)
    channel_index = torch.arange(channels).view(1, 1, -1, 1, 1)
    row_index = torch.arange(height).view(1, 1, 1, -1, 1)
    frames = (frame_index * 1000 + channel_index * 100 + row_index).expand(batch, -1, -1, -1, width)

    packed = pack_frames(frames)
    assert packed.shape == (batch, num_frames * channels, height // 2, width)
    for frame in (0, 7, 15):
        for channel in range(channels):
            expected = frame * 1000 + channel * 100 + torch.arange(height // 2, height).view(-1, 1)
            assert torch.equal(packed[1, 3 * frame + channel], expected.expand(-1, width))
    assert pack_frames(frames, lower_half=False).shape == (batch, num_frames * channels, height, width)
    with pytest.raises(ConfigError):
        pack_frames(frames[0])


@pytest.mark.parametrize(
    "frames_shape, mel_shape, message",
    [
        ((1, 48, 256, 256), (1, 1, 80, 52), "does not reduce to 1x1"),  # whole face instead of lower half
        ((1, 75, 128, 256), (1, 1, 80, 52), r"\(b, 48, h, w\)"),  # 25 frames into a 16-frame model
        ((2, 48, 128, 256), (1, 1, 80, 52), "as many frame windows"),
        ((1, 48, 128, 256), (1, 80, 52), r"\(b, 1, h, w\)"),
    ],
)
def test_forward_rejects_mismatched_inputs(tiny_syncnet, frames_shape, mel_shape, message):
    with pytest.raises(ConfigError, match=message):
        tiny_syncnet(torch.zeros(frames_shape), torch.zeros(mel_shape))


# ---------------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["audio_encoder"].update(block_out_channels=[48] * 7), "multiple of 32"),
        (lambda c: c["audio_encoder"].update(attn_blocks=[0] * 6), "one entry per block"),
        (lambda c: c["visual_encoder"].update(downsample_factors=[[1, 1]] + [2] * 7), r"\[1, 1\] as 1"),
        (lambda c: c["visual_encoder"].update(downsample_factors=[0] + [2] * 7), "int >= 1"),
        (lambda c: c["visual_encoder"].update(kernel_size=3), "unknown keys"),
        (lambda c: c["visual_encoder"].update(block_out_channels=[32] * 8), "same size"),
        (lambda c: c.pop("audio_encoder"), "exactly the keys"),
    ],
)
def test_invalid_configs_raise(change, message):
    config = get_syncnet_config("syncnet_tiny")["model"]
    change(config)
    with pytest.raises(ConfigError, match=message):
        _meta_model(config)


def test_attn_blocks_may_be_omitted_as_in_syncnet_25_pixel_yaml():
    config = get_syncnet_config("syncnet_25_pixel")
    for encoder in config["model"].values():
        del encoder["attn_blocks"]
    assert _meta_model(config).config == SYNCNET_CONFIGS["syncnet_25_pixel"]["model"]


def test_from_config_accepts_name_yaml_dict_and_model_section():
    whole = get_syncnet_config("syncnet_tiny")
    for config in ("syncnet_tiny", whole, whole["model"]):
        assert _meta_model(config).config == whole["model"]
    with pytest.raises(ConfigError, match="Unknown SyncNet config"):
        StableSyncNet.from_config("syncnet_99")


# ---------------------------------------------------------------------------------------------------------
# Config inference


@pytest.mark.parametrize("name", sorted(SYNCNET_CONFIGS))
def test_infer_config_reproduces_every_config(name):
    """Official configs and the pack's own (syncnet_tiny_trained down-samples in blocks no official config does)."""
    assert infer_syncnet_config(_meta_model(name).state_dict()) == SYNCNET_CONFIGS[name]["model"]


def test_infer_config_from_tiny_checkpoint_and_full_manifest(syncnet_dir):
    tiny = torch.load(syncnet_dir / "stable_syncnet_tiny.pt", weights_only=True)
    assert infer_syncnet_config(tiny["state_dict"]) == load_json(syncnet_dir / "config_tiny.json")

    manifest = load_json(syncnet_dir / "syncnet_manifest_16_pixel_attn.json")
    shapes_only = {e["key"]: torch.empty(e["shape"], device="meta") for e in manifest["state_dict"]}
    assert infer_syncnet_config(shapes_only) == manifest["model"]


def _ambiguous_config() -> dict:
    """Audio encoder whose six down-sampling blocks fit both syncnet_25_pixel ([2]*6) and syncnet_16_latent."""
    config = get_syncnet_config("syncnet_tiny")["model"]
    config["audio_encoder"].update(
        block_out_channels=[32] * 5 + [64], downsample_factors=[2] * 6, attn_blocks=[0] * 6
    )
    return config


def test_ambiguous_or_unknown_downsample_factors_ask_for_a_config():
    with pytest.raises(ConfigError, match="differ in them. Pass config="):
        infer_syncnet_config(_meta_model(_ambiguous_config()).state_dict())
    unknown = get_syncnet_config("syncnet_tiny")["model"]
    unknown["audio_encoder"].update(block_out_channels=[32, 32, 64], downsample_factors=[2, 1, 2], attn_blocks=[0] * 3)
    with pytest.raises(ConfigError, match="no known SyncNet config has 3 blocks down-sampling at \\[0, 2\\]"):
        infer_syncnet_config(_meta_model(unknown).state_dict())


# ---------------------------------------------------------------------------------------------------------
# Loading and saving


def test_load_rejects_a_unet(fixtures_dir):
    unet_path = fixtures_dir / "unet_tiny" / "latentsync_unet_tiny.pt"
    with pytest.raises(CheckpointError, match="LatentSync UNet"):
        load_syncnet(unet_path)
    with pytest.raises(CheckpointError, match="LatentSync UNet.*Missing"):
        load_syncnet(unet_path, config="syncnet_16_pixel_attn")


def test_load_rejects_empty_and_mismatched_files(tmp_path, tiny_syncnet):
    empty = tmp_path / "stable_syncnet.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_syncnet(empty)

    tiny_path = save_syncnet(tiny_syncnet, tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match="Wrong shape"):
        load_syncnet(tiny_path, config="syncnet_16_pixel_attn")

    wrapped = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_syncnet.state_dict().items()}}, wrapped)
    with pytest.raises(CheckpointError, match="module."):
        load_syncnet(wrapped)


def test_save_keeps_training_history_and_safetensors_carries_uninferable_configs(tmp_path):
    history = {"train_step_list": [1, 2], "train_loss_list": [0.7, 0.6], "val_step_list": [2], "val_loss_list": [0.65]}
    model = StableSyncNet.from_config(_ambiguous_config())
    container = torch.load(save_syncnet(model, tmp_path / "s.pt", 2, history=history), weights_only=True)
    assert {key: container[key] for key in history} == history

    # Its down-sampling factors cannot be inferred from the .pt, but the .safetensors metadata carries them.
    with pytest.raises(ConfigError):
        load_syncnet(tmp_path / "s.pt")
    assert load_syncnet(tmp_path / "s.pt", config=_ambiguous_config()).config == model.config
    assert load_syncnet(save_syncnet(model, tmp_path / "s.safetensors")).config == model.config

    with pytest.raises(ConfigError, match="history keys"):
        save_syncnet(model, tmp_path / "x.pt", history={"losses": []})
    with pytest.raises(CheckpointError, match="use a .pt or .safetensors"):
        save_syncnet(model, tmp_path / "x.bin")
