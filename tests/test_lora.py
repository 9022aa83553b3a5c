"""`latentsync.models.lora`: the LoRA file format (peft's adapter layout; files of earlier versions still load),
merging with a strength, exact undo, and ``python -m latentsync lipsync --lora FILE[:STRENGTH]``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from latentsync.errors import CheckpointError, ConfigError
from latentsync.models.lora import (
    LoRA,
    apply_lora,
    load_lora_into,
    lora_from_peft_state,
    parse_lora_argument,
    read_lora,
    save_lora,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 8)
        self.block = nn.Module()
        self.block.second = nn.Linear(8, 3)

    def forward(self, x):
        return self.block.second(torch.relu(self.first(x)))


def _lora(rank: int = 2, alpha: float = 4.0, seed: int = 0) -> LoRA:
    generator = torch.Generator().manual_seed(seed)
    layers = {
        "first": (torch.randn(rank, 6, generator=generator), torch.randn(8, rank, generator=generator)),
        "block.second": (torch.randn(rank, 8, generator=generator), torch.randn(3, rank, generator=generator)),
    }
    return LoRA(layers, rank, alpha, {"preset": "audio", "base_checkpoint_sha256": "abc"})


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    lora = _lora()
    folder = save_lora(lora, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    again = read_lora(folder)
    assert (again.rank, again.alpha) == (2, 4.0)
    assert again.metadata["preset"] == "audio" and again.metadata["base_checkpoint_sha256"] == "abc"
    assert again.metadata["targets"] == '["block.second", "first"]'
    for name, (down, up) in lora.layers.items():
        assert torch.equal(again.layers[name][0], down) and torch.equal(again.layers[name][1], up)


def test_apply_adds_scaled_low_rank_update_and_undo_is_exact(tmp_path):
    torch.manual_seed(0)
    model, lora = TwoLayers(), _lora()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    handle = apply_lora(model, lora, strength=0.5)
    down, up = lora.layers["first"]
    torch.testing.assert_close(model.first.weight, original["first.weight"] + 0.5 * (4.0 / 2) * up @ down)
    assert torch.equal(model.first.bias, original["first.bias"])
    handle.undo()
    assert all(torch.equal(model.state_dict()[k], original[k]) for k in original)
    handle.undo()  # a second undo does nothing
    assert not handle.active


def test_strength_zero_changes_nothing_and_file_loader(tmp_path):
    model = TwoLayers()
    x = torch.randn(4, 6)
    before = model(x)
    path = save_lora(_lora(), tmp_path / "a") / "adapter_model.safetensors"  # the file alone is enough too
    handle = load_lora_into(model, path, strength=0.0)
    assert torch.equal(model(x), before)
    handle.undo()
    handle = load_lora_into(model, path, strength=1.0)
    assert not torch.allclose(model(x), before)
    handle.undo()
    assert torch.equal(model(x), before)


def test_a_lora_that_does_not_fit_changes_nothing():
    model = TwoLayers()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    lora = _lora()
    lora.layers["missing.layer"] = lora.layers["first"]
    with pytest.raises(CheckpointError, match="missing.layer: no such module"):
        apply_lora(model, lora)
    wrong = _lora()
    wrong.layers["first"] = (torch.zeros(2, 5), torch.zeros(8, 2))
    with pytest.raises(CheckpointError, match=r"first: weight \(8, 6\) vs LoRA \(8, 5\)"):
        apply_lora(model, wrong)
    assert all(torch.equal(model.state_dict()[k], original[k]) for k in original)


def test_other_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"first.weight": torch.zeros(8, 6)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not a LatentSync LoRA"):
        read_lora(tmp_path / "model.safetensors")


def test_peft_injected_model_round_trip():
    peft = pytest.importorskip("peft")
    model = TwoLayers()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["first", "block.second"])
    peft.inject_adapter_in_model(config, model)
    with torch.no_grad():
        for module in (model.first, model.block.second):
            module.lora_B["default"].weight.normal_()
    x = torch.randn(3, 6)
    expected = model(x)
    lora = lora_from_peft_state(model.state_dict(), rank=2, alpha=4)
    plain = TwoLayers()
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k})
    apply_lora(plain, lora)
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)


def test_peft_loads_the_saved_folder(tmp_path):
    """``PeftModel.from_pretrained`` reads the folder and computes what the merged weights compute."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    plain, lora = TwoLayers(), _lora()
    folder = save_lora(lora, tmp_path / "adapter")
    x = torch.randn(4, 6)
    wrapped = peft.PeftModel.from_pretrained(TwoLayers(), str(folder))
    wrapped.base_model.model.load_state_dict(
        {f"{k.rsplit('.', 1)[0]}.base_layer.{k.rsplit('.', 1)[1]}": v for k, v in plain.state_dict().items()},
        strict=False,
    )
    apply_lora(plain, lora)
    torch.testing.assert_close(wrapped(x), plain(x), atol=1e-5, rtol=1e-5)


def test_files_of_earlier_versions_still_load(tmp_path):
    """Version 1: one .safetensors with ``NAME.lora_A.weight`` keys and the rank / alpha in its metadata."""
    from safetensors.torch import save_file

    lora = _lora()
    tensors = {}
    for name, (down, up) in lora.layers.items():
        tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = down, up
    metadata = {"format": "pt", "latentsync_lora": "1", "rank": "2", "alpha": "4.0", "preset": "audio"}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    old = read_lora(tmp_path / "old.safetensors")
    assert (old.rank, old.alpha, sorted(old.layers)) == (2, 4.0, ["block.second", "first"])
    for name in lora.layers:
        assert torch.equal(old.delta(name), lora.delta(name))


def test_lora_argument():
    assert parse_lora_argument("a/lora") == ("a/lora", 1.0)
    assert parse_lora_argument("a/lora:0.5") == ("a/lora", 0.5)
    assert parse_lora_argument(r"C:\loras\x") == (r"C:\loras\x", 1.0)
    with pytest.raises(ConfigError, match="finite"):
        parse_lora_argument("a:nan")


@pytest.mark.slow
def test_cli_lora_changes_the_output_and_strength_zero_does_not(assets_dir, tiny_models_dir, tmp_path):
    """A LoRA on the tiny UNet's audio cross-attention, through ``python -m latentsync lipsync`` on 0.4 s of demo1."""
    import argparse

    from helpers.pipeline import decode_frames, write_wav

    from latentsync._cli import lipsync as lipsync_cli
    from latentsync.media import load_audio
    from latentsync.models.unet_loading import load_unet
    from train.lora import LORA_PRESET_PATTERNS

    unet = load_unet(tiny_models_dir / "latentsync_unet.pt")
    generator = torch.Generator().manual_seed(1)
    layers = {
        name: (torch.randn(4, module.in_features, generator=generator), torch.randn(module.out_features, 4, generator=generator))
        for name, module in unet.named_modules()
        if isinstance(module, nn.Linear) and re.fullmatch(LORA_PRESET_PATTERNS["audio"], name)
    }
    folder = save_lora(LoRA(layers, 4, 4.0, {"preset": "audio"}), tmp_path / "lora")
    audio = write_wav(tmp_path / "speech.wav", load_audio(assets_dir / "demo1_audio.wav")[: 16000 * 2 // 5][None])

    def render(name: str, *lora: str) -> list:
        parser = argparse.ArgumentParser()
        lipsync_cli.add_parser(parser.add_subparsers())
        output = tmp_path / f"{name}.mp4"
        args = parser.parse_args(
            ["lipsync", "--video", str(assets_dir / "demo1_video.mp4"), "--audio", str(audio), "--output", str(output),
             "--models-dir", str(tiny_models_dir), "--steps", "1", "--guidance", "1", "--num-frames", "5", "--quiet",
             *[item for path in lora for item in ("--lora", path)]]
        )  # fmt: skip
        assert lipsync_cli.run(args) == 0
        return decode_frames(output)

    plain = render("plain")
    changed = render("lora", str(folder))
    unchanged = render("zero", f"{folder}:0", f"{folder / 'adapter_model.safetensors'}:0.0")
    assert len(plain) == len(changed) == len(unchanged) == 10
    assert all(np.array_equal(a, b) for a, b in zip(plain, unchanged))
    face = (slice(750, 850), slice(500, 700))  # the mouth of demo1's face
    assert np.abs(plain[0][face].astype(np.int16) - changed[0][face]).mean() > 1
