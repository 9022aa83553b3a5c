"""The optional pixel-space losses (LPIPS, temporal / TREPA): strict loading of user weights, values, gradients."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from latentsync.errors import CheckpointError
from train.perceptual import LPIPS, VIDEOMAE_CONFIGS, TemporalLoss, VideoMAEv2Encoder, load_lpips, load_videomae


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    model = LPIPS()
    vgg = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's file has a classifier; it is not used
    save_file(vgg, str(folder / "vgg16.safetensors"))
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(heads, folder / "vgg.pth")
    return folder / "vgg16.safetensors", folder / "vgg.pth"


def test_lpips_loads_strictly_and_is_a_distance(lpips_files):
    model = load_lpips(*map(str, lpips_files))
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    y = (torch.rand(2, 3, 32, 64) * 2 - 1).requires_grad_(True)
    assert model(x, x).abs().max() < 1e-6
    distance = model(x, y)
    assert distance.shape == (2, 1, 1, 1) and (distance > 0).all()
    distance.mean().backward()
    assert y.grad.abs().sum() > 0


def test_lpips_refuses_other_files(lpips_files, tmp_path):
    save_file({"encoder.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="no features"):
        load_lpips(str(tmp_path / "other.safetensors"), str(lpips_files[1]))


def test_temporal_loss(tmp_path):
    torch.manual_seed(0)
    encoder = VideoMAEv2Encoder(**VIDEOMAE_CONFIGS["tiny"])
    state_dict = encoder.state_dict()
    assert "pos_embed" not in state_dict and "head.weight" in state_dict  # as the official checkpoint
    torch.save({"module": state_dict}, tmp_path / "videomae.pth")
    loss = TemporalLoss(load_videomae(str(tmp_path / "videomae.pth"), "tiny"))
    real = torch.rand(1, 3, 5, 32, 32) * 2 - 1  # 5 frames: the position table is stretched in time
    fake = real.clone().requires_grad_(True)
    assert loss(fake, real).item() < 1e-10
    value = loss(fake + 0.5 * torch.randn_like(fake), real)
    assert value > 0
    value.backward()
    assert fake.grad.abs().sum() > 0
