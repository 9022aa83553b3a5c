"""The node pack's schemas and its loader nodes, run without ComfyUI (stand-in ``comfy`` modules, `helpers.comfy`)
on the tiny models placed in ComfyUI's model folders: what each loader validates, that it loads the file through
the library, and what it outputs."""

from __future__ import annotations

import asyncio

import pytest
import torch
from helpers.pack import pack_module

errors = pack_module("latentsync.errors")
data = pack_module("nodes.data")
detectors = pack_module("latentsync.face.detectors")
lora_module = pack_module("latentsync.models.lora")
syncnet_module = pack_module("latentsync.models.syncnet")
unet_module = pack_module("latentsync.models.unet")
whisper_module = pack_module("latentsync.audio.whisper")
settings_module = pack_module("latentsync.pipeline.settings")

NODE_IDS = {
    "LatentSyncModelLoader", "LatentSyncLoRA", "LatentSyncVAELoader", "LatentSyncAudioEncoderLoader",
    "LatentSyncAudioEncode", "LatentSyncFaceDetectorLoader", "LatentSyncFacePrepare", "LatentSyncSampler",
    "LatentSyncVideoSampler", "LatentSyncLipSync", "LatentSyncSpeed", "LatentSyncCreateVideo",
    "LatentSyncSyncNetLoader", "LatentSyncSyncScore", "LatentSyncFaceTracks", "LatentSyncSpeakerMap",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def schemas(comfy_nodes) -> dict:
    nodes = asyncio.run(comfy_nodes.extension.LatentSyncExtension().get_node_list())
    return {node.define_schema().node_id: (node, node.define_schema()) for node in nodes}


@pytest.fixture(scope="module")
def model(comfy_nodes):
    return comfy_nodes.loaders.LatentSyncModelLoader.execute("latentsync_unet.pt", "auto", "auto", "auto")[0]


# ----------------------------------------------------------------------------------------------------------
# Schemas


def test_extension_registers_every_node_once(schemas):
    assert set(schemas) == NODE_IDS


def test_every_input_and_output_is_documented_and_bounded(schemas):
    for node_id, (_, schema) in schemas.items():
        assert schema.category == "LatentSync" and schema.display_name.startswith("LatentSync") and schema.description
        ids = [item.id for item in schema.inputs]
        assert len(ids) == len(set(ids)), node_id
        for item in schema.inputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
            if hasattr(item, "min"):  # Int and Float inputs
                assert item.min is not None and item.max is not None, f"{node_id}.{item.id} is unbounded"
                assert item.min <= item.default <= item.max, f"{node_id}.{item.id}"
            if hasattr(item, "options") and item.options:
                assert item.default in item.options, f"{node_id}.{item.id}"
        assert schema.outputs and all(output.tooltip and output.display_name for output in schema.outputs), node_id


def test_sampler_inputs_carry_the_settings_tables_bounds(schemas):
    specs, defaults = settings_module.SETTING_SPECS, settings_module.DEFAULT_SETTINGS
    inputs = {item.id: item for item in schemas["LatentSyncSampler"][1].inputs}
    steps = inputs[data.setting_input_name("num_inference_steps")]
    assert (steps.default, steps.min, steps.max) == (
        defaults.num_inference_steps, specs["num_inference_steps"].minimum, specs["num_inference_steps"].maximum
    )
    long_audio = inputs[data.setting_input_name("long_audio")]
    assert inputs[data.setting_input_name("seed")].control_after_generate
    assert long_audio.options == list(specs["long_audio"].choices)
    assert inputs["speed"].optional and {t.io_type for t in inputs["vae"].types} == {"VAE", "LATENTSYNC_VAE"}


def test_model_file_choices_come_from_the_model_folders(schemas):
    def options(node_id: str) -> dict:
        inputs = schemas[node_id][1].inputs
        return {item.id: (item.options, item.default) for item in inputs if hasattr(item, "options")}

    # each loader offers the files of its kind only
    assert options("LatentSyncModelLoader")["unet_name"] == (["latentsync_unet.pt"], "latentsync_unet.pt")
    assert options("LatentSyncAudioEncoderLoader")["whisper_name"] == (["whisper/tiny.pt"], "whisper/tiny.pt")
    assert options("LatentSyncSyncNetLoader")["syncnet_name"] == (["stable_syncnet.pt"], "stable_syncnet.pt")
    assert options("LatentSyncVAELoader")["vae_name"] == (["sd-vae-ft-mse"], "sd-vae-ft-mse")
    all_in_one = options("LatentSyncLipSync")
    assert all_in_one["unet_name"][1] == "latentsync_unet.pt" and all_in_one["vae_name"][1] == "sd-vae-ft-mse"


def test_model_folders_are_registered_without_dropping_others(comfy_nodes):
    folder_paths = comfy_nodes.stubs.modules["folder_paths"]
    paths, extensions = folder_paths.folder_names_and_paths["latentsync"]
    assert paths == [str(comfy_nodes.stubs.models_dir / "latentsync")]
    assert extensions == {".safetensors", ".pt", ".pth"}
    assert folder_paths.get_folder_paths("insightface") == [str(comfy_nodes.stubs.models_dir / "insightface")]


# ----------------------------------------------------------------------------------------------------------
# Model files


def test_model_loader_loads_the_unet_into_a_model_patcher(comfy_nodes, model):
    assert isinstance(model, data.LatentSyncModel)
    assert isinstance(model.patcher, comfy_nodes.stubs.modules["comfy.model_patcher"].ModelPatcher)
    assert isinstance(model.unet, unet_module.UNet3DConditionModel) and model.unet.dtype == torch.float32
    assert model.patcher.model.module is model.unet  # state-dict keys are "module.<unet key>"
    assert (model.resolution, model.path.name, model.loras) == (256, "latentsync_unet.pt", ())
    assert "names a version, so 256 px (LatentSync 1.5) is assumed" in model.resolution_reason
    again = comfy_nodes.loaders.LatentSyncModelLoader.execute("latentsync_unet.pt", "512", "auto", "cpu")[0]
    assert again.resolution == 512 and again.resolution_reason == "chosen in LatentSync Model Loader"
    bf16 = comfy_nodes.loaders.LatentSyncModelLoader.execute("latentsync_unet.pt", "auto", "bfloat16", "cpu")[0]
    assert bf16.unet.dtype == torch.bfloat16


def test_every_dropdown_is_checked_against_its_options_when_queued(schemas):
    """ComfyUI refuses a value outside an input's type when that type is a list of options; a V3 combo's own type,
    "COMBO", lets any value through to ``execute``."""
    for node_id, (_, schema) in schemas.items():
        for item in schema.inputs:
            if getattr(item, "io_type", None) == "COMBO":
                assert item.get_io_type() == item.options, f"{node_id}.{item.id}"


def test_model_loader_refuses_a_file_of_another_model(comfy_nodes):
    with pytest.raises(errors.CheckpointError, match="SyncNet"):
        comfy_nodes.loaders.LatentSyncModelLoader.execute("stable_syncnet.pt", "auto", "auto", "cpu")


def test_vae_audio_encoder_and_syncnet_loaders_load_their_models(comfy_nodes, tiny_models):
    loaders = comfy_nodes.loaders
    vae = loaders.LatentSyncVAELoader.execute("sd-vae-ft-mse", "auto", "auto")[0]
    assert type(vae.model.module).__name__ == "AutoencoderKL"
    expected = tiny_models.vae.vae.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in vae.model.module.state_dict().items())

    whisper = loaders.LatentSyncAudioEncoderLoader.execute("whisper/tiny.pt", "auto")[0]
    assert isinstance(whisper.model.module, whisper_module.WhisperFeatureExtractor)
    assert whisper.model.module.hidden_size == 24  # the tiny UNet's audio width

    syncnet = loaders.LatentSyncSyncNetLoader.execute("stable_syncnet.pt", "cpu")[0]
    assert isinstance(syncnet.model.module, syncnet_module.StableSyncNet) and not syncnet.model.module.training
    with pytest.raises(errors.CheckpointError, match="LatentSync UNet"):
        loaders.LatentSyncSyncNetLoader.execute("latentsync_unet.pt", "cpu")


def test_face_detector_loader_makes_the_detector_and_checks_insightface_models(comfy_nodes):
    loaders = comfy_nodes.loaders.LatentSyncFaceDetectorLoader
    detector = loaders.execute("mediapipe", "buffalo_l")[0]
    assert isinstance(detector, detectors.FaceDetector) and detector.name == "mediapipe"
    with pytest.raises(errors.CheckpointError, match="or choose the mediapipe detector"):
        loaders.execute("insightface", "buffalo_l")


# ----------------------------------------------------------------------------------------------------------
# LoRA


def tiny_lora(model, names: list[str], rank: int = 2, out_delta: int = 0):
    """A LoRA of the linear layers ``names`` of the model's UNet (``out_delta`` makes it misfit)."""
    generator = torch.Generator().manual_seed(0)
    modules = dict(model.unet.named_modules())
    layers = {}
    for name in names:
        out_features, in_features = modules[name].weight.shape
        layers[name] = (torch.randn(rank, in_features, generator=generator),
                        torch.randn(out_features + out_delta, rank, generator=generator))  # fmt: skip
    return lora_module.LoRA(layers, rank, 4.0, {"base_checkpoint": "tiny"})


def attention_layers(model) -> list[str]:
    return [name for name, module in model.unet.named_modules() if name.endswith(("attn1.to_q", "attn2.to_k"))][:4]


def test_lora_node_patches_a_copy_of_the_model(comfy_nodes, model):
    names = attention_layers(model)
    folder = lora_module.save_lora(tiny_lora(model, names), comfy_nodes.stubs.models_dir / "loras" / "latentsync_tiny")
    lora_name = f"latentsync_tiny/{lora_module.PEFT_WEIGHTS}"
    node = comfy_nodes.loaders.LatentSyncLoRA
    assert node.define_schema().inputs[1].default == lora_name

    adapted = node.execute(model, lora_name, 0.5)[0]
    assert len(adapted.loras) == 1 and adapted.loras[0].endswith("@0.5") and adapted.unet is model.unet
    assert model.patcher.patches == {}  # the loaded model is not changed
    assert set(adapted.patcher.patches) == {f"module.{name}.weight" for name in names}
    saved = lora_module.read_lora(folder)
    for name in names:
        ((strength, adapter, *_),) = adapted.patcher.patches[f"module.{name}.weight"]
        down, up = saved.layers[name]
        up_patch, down_patch, alpha = adapter.weights[:3]
        assert strength == 0.5 and alpha == 4.0 and torch.equal(up_patch, up) and torch.equal(down_patch, down)
    twice = node.execute(adapted, lora_name, 1.0)[0]
    assert len(twice.loras) == 2 and twice.loras[1].endswith("@1") and twice.patcher.patches != adapted.patcher.patches


def test_lora_node_refuses_a_lora_of_another_unet(comfy_nodes, model):
    misfit = tiny_lora(model, attention_layers(model), out_delta=8)
    lora_module.save_lora(misfit, comfy_nodes.stubs.models_dir / "loras" / "other")
    with pytest.raises(errors.CheckpointError, match="does not fit this UNet"):
        comfy_nodes.loaders.LatentSyncLoRA.execute(model, f"other/{lora_module.PEFT_WEIGHTS}", 1.0)
