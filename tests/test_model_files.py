"""The contract every model file type keeps (UNet, SyncNet, Whisper, VAE): what is saved loads back with the same
weights and nothing else left beside it, a loader given another model's file refuses it with a `CheckpointError`
that says what the file is, and the models training runs backward through checkpoint their gradients alike."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from latentsync.audio.whisper import load_whisper, random_tiny_whisper_state, save_whisper_checkpoint
from latentsync.errors import CheckpointError
from latentsync.models.syncnet import StableSyncNet
from latentsync.models.syncnet_loading import HISTORY_KEYS, load_syncnet, save_syncnet
from latentsync.models.unet import UNet3DConditionModel
from latentsync.models.unet_configs import get_unet_config
from latentsync.models.unet_loading import load_unet, save_unet
from latentsync.models.vae import TINY_VAE_CONFIG, load_vae

WHISPER_DIMS = {
    "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 24, "n_audio_head": 4, "n_audio_layer": 4,
    "n_vocab": 64, "n_text_ctx": 16, "n_text_state": 24, "n_text_head": 4, "n_text_layer": 1,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class ModelFile:
    """How one model type is made, saved, loaded and compared.

    Attributes:
        make: a tiny random model (what `save` takes).
        save: writes the model to a path and returns the path written.
        load: the library's loader.
        weights: the state dict to compare, of a made or of a loaded model.
        suffixes: the file types `save` writes ("" for a folder).
        looks_like: what a loader of another type says this file is.
        loss: a scalar from a small fixed input, for the gradient-checkpointing check; None for a model no
            training runs backward through (Whisper).
    """

    make: Callable[[], object]
    save: Callable[[object, Path], Path]
    load: Callable[[Path], object]
    weights: Callable[[object], dict]
    suffixes: tuple[str, ...]
    looks_like: str
    loss: Callable[[object], torch.Tensor] | None = None


def _save_whisper(state: dict, path: Path) -> Path:
    save_whisper_checkpoint(path, WHISPER_DIMS, state)
    return path


def _whisper_weights(model) -> dict:
    if isinstance(model, dict):  # a made state: the encoder part, as the loader keeps it
        return {key.removeprefix("encoder."): value for key, value in model.items() if key.startswith("encoder.")}
    return model.encoder.state_dict()


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**TINY_VAE_CONFIG)


def _fixed(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _unet_loss(unet) -> torch.Tensor:
    config = unet.config
    sample = _fixed(1, config.in_channels, 2, 8, 8)
    return unet(sample, torch.tensor([700]), _fixed(1, 2, 50, config.cross_attention_dim)).square().mean()


def _syncnet_loss(syncnet) -> torch.Tensor:
    vision, audio = syncnet(_fixed(1, 48, 128, 256), _fixed(1, 1, 80, 52))
    return (vision * audio).sum()


def _save_vae_folder(model, path: Path) -> Path:
    """A diffusers VAE folder, as diffusers itself writes it."""
    model.save_pretrained(path)
    return path


MODEL_FILES = {
    "unet": ModelFile(
        make=lambda: UNet3DConditionModel.from_config(get_unet_config("tiny")),
        save=lambda model, path: save_unet(model, path, global_step=77),
        load=load_unet,
        weights=lambda model: model.state_dict(),
        suffixes=(".pt", ".safetensors"),
        looks_like="UNet",
        loss=_unet_loss,
    ),
    "syncnet": ModelFile(
        make=lambda: StableSyncNet.from_config("syncnet_tiny").eval(),
        save=lambda model, path: save_syncnet(model, path, global_step=7),
        load=load_syncnet,
        weights=lambda model: model.state_dict(),
        suffixes=(".pt", ".safetensors"),
        looks_like="SyncNet",
        loss=_syncnet_loss,
    ),
    "whisper": ModelFile(
        make=lambda: random_tiny_whisper_state(WHISPER_DIMS, seed=11),
        save=_save_whisper,
        load=load_whisper,
        weights=_whisper_weights,
        suffixes=(".pt",),
        looks_like="Whisper",
    ),
    "vae": ModelFile(
        make=_tiny_vae,
        save=_save_vae_folder,
        load=load_vae,
        weights=lambda model: model.state_dict(),
        suffixes=("",),
        looks_like="VAE",
        loss=lambda vae: vae(_fixed(1, 3, 32, 32)).sample.square().mean(),
    ),
}
# (loader, file type) pairs whose error names what the file is; the other loaders only say it does not fit.
NAMED = {("unet", "syncnet"), ("unet", "whisper"), ("unet", "vae"), ("syncnet", "unet")}
ROUND_TRIPS = [(kind, suffix) for kind, spec in MODEL_FILES.items() for suffix in spec.suffixes]
FOREIGN = [(loader, kind) for loader in MODEL_FILES for kind in MODEL_FILES if loader != kind]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """One file of every model type, each in its own folder; the VAE as a single ``.safetensors`` (a file, as the
    other loaders read)."""
    folder = tmp_path_factory.mktemp("model_files")
    paths = {kind: MODEL_FILES[kind].save(MODEL_FILES[kind].make(), folder / kind / f"{kind}.pt")
             for kind in ("unet", "syncnet", "whisper")}  # fmt: skip
    paths["vae"] = folder / "vae" / "vae.safetensors"
    paths["vae"].parent.mkdir()
    save_file(_tiny_vae().state_dict(), str(paths["vae"]))
    return paths


@pytest.mark.parametrize("kind, suffix", ROUND_TRIPS)
def test_saved_model_loads_back_with_the_same_weights(tmp_path, kind, suffix):
    spec = MODEL_FILES[kind]
    torch.manual_seed(0)
    model = spec.make()
    path = spec.save(model, tmp_path / "out" / f"{kind}{suffix}")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    loaded = spec.load(path)
    expected, got = spec.weights(model), spec.weights(loaded)
    assert list(got) == list(expected) if kind != "whisper" else set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    assert not getattr(loaded, "training", False)  # loaders give eval-mode models


@pytest.mark.parametrize("kind", [kind for kind, spec in MODEL_FILES.items() if spec.loss is not None])
def test_gradient_checkpointing_keeps_the_gradients_and_stores_less(kind):
    """``enable_gradient_checkpointing()`` / ``disable_gradient_checkpointing()`` on every model training runs
    backward through: the same gradients, with fewer tensors kept for the backward pass (so it is really on)."""
    spec = MODEL_FILES[kind]
    torch.manual_seed(0)
    model = spec.make().train()

    def backward() -> tuple[dict, int]:
        saved = []
        model.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(1) or tensor, lambda tensor: tensor):
            loss = spec.loss(model)
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, len(saved)

    plain, plain_saved = backward()
    model.enable_gradient_checkpointing()
    checkpointed, checkpointed_saved = backward()
    assert checkpointed_saved < plain_saved / 2, (checkpointed_saved, plain_saved)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    model.disable_gradient_checkpointing()
    assert backward()[1] == plain_saved


@pytest.mark.parametrize("loader, kind", FOREIGN)
def test_a_file_of_another_model_is_refused(saved, loader, kind):
    with pytest.raises(CheckpointError) as error:
        MODEL_FILES[loader].load(saved[kind])
    if (loader, kind) in NAMED:
        assert MODEL_FILES[kind].looks_like in str(error.value)


# ----------------------------------------------------------------------------------------------------------
# What each file type stores besides the weights


def test_unet_files_keep_the_step_and_the_exact_config(tmp_path):
    unet = MODEL_FILES["unet"].make()
    container = torch.load(save_unet(unet, tmp_path / "unet.pt", global_step=77), weights_only=True)
    assert sorted(container) == ["global_step", "state_dict"] and container["global_step"] == 77
    assert load_unet(tmp_path / "unet.pt").global_step == 77
    reloaded = load_unet(save_unet(unet, tmp_path / "unet.safetensors", global_step=77))
    assert reloaded.global_step == 77 and reloaded.config.sample_size == unet.config.sample_size  # from the metadata


def test_syncnet_files_have_the_official_container_and_config_metadata(tmp_path):
    model = MODEL_FILES["syncnet"].make()
    container = torch.load(save_syncnet(model, tmp_path / "s.pt", global_step=7), weights_only=True)
    assert set(container) == {"state_dict", "global_step", *HISTORY_KEYS} and container["global_step"] == 7
    with safe_open(str(save_syncnet(model, tmp_path / "s.safetensors", global_step=7)), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["syncnet_config"]) == model.config and metadata["global_step"] == "7"
    assert load_syncnet(tmp_path / "s.pt").config == load_syncnet(tmp_path / "s.safetensors").config == model.config


def test_whisper_files_are_openai_checkpoints(tmp_path):
    path = _save_whisper(MODEL_FILES["whisper"].make(), tmp_path / "tiny_random.pt")
    stored = torch.load(path, weights_only=True)
    assert set(stored) == {"dims", "model_state_dict"} and stored["dims"] == WHISPER_DIMS
    assert zipfile.ZipFile(path).namelist()[0].startswith("tiny_random/")  # archive named like the file
    extractor = load_whisper(path)
    assert extractor.hidden_size == 24 and extractor.num_hidden_states == 5
    assert extractor.encode(torch.zeros(16000).numpy()).shape == (50, 5, 24)
