"""`latentsync.models.lora`: the LoRA file format, merging with a strength, and exact undo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsync.errors import CheckpointError
from latentsync.models.lora import LoRA, apply_lora, load_lora_into, lora_from_peft_state, read_lora, save_lora


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
    path = save_lora(lora, tmp_path / "adapter.safetensors")
    again = read_lora(path)
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
    path = save_lora(_lora(), tmp_path / "a.safetensors")
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
    with pytest.raises(CheckpointError, match="not a LatentSync LoRA file"):
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
