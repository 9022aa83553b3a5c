"""The pack's use of ComfyUI's own objects, checked in ComfyUI's interpreter (one subprocess, which imports
``comfy``) against the library:

* `ComfyVAECodec` over a core VAE encodes and decodes as the library's `DiffusersVAE`: the same posterior samples
  from the same generator, scaled by 0.18215 (a randomly initialised SD VAE, the architecture Load VAE builds, at
  32x32 pixels);
* LatentSync LoRA's weight patches give the weights of the library's `apply_lora`, and loading the unpatched
  model again restores them bit for bit (ComfyUI's ModelPatcher around the tiny UNet);
* the pack keeps no model of its own: what ComfyUI frees ("free memory") is released.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .comfy_server import REPO_ROOT

# ComfyUI on the path (CPU only) with its core modules imported, as the server has them before it loads packs,
# then this pack loaded as the package "pack"; every script below starts so.
_LOAD_PACK = """
import asyncio, importlib, importlib.util, json, sys, tempfile
comfyui, repo = sys.argv[1:3]
sys.path.insert(0, comfyui)
from comfy.cli_args import args
args.cpu = True
import comfy.sd, folder_paths, nodes
from comfy import model_management
spec = importlib.util.spec_from_file_location("pack", f"{repo}/__init__.py", submodule_search_locations=[repo])
sys.modules["pack"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["pack"])
"""

_SCRIPT = _LOAD_PACK + """
from pathlib import Path
import torch
codecs = importlib.import_module("pack.nodes.vae_codecs")
loaders = importlib.import_module("pack.nodes.loaders")
library_vae = importlib.import_module("pack.latentsync.models.vae")
library_lora = importlib.import_module("pack.latentsync.models.lora")
tiny = importlib.import_module("pack.latentsync.tiny")
from diffusers import AutoencoderKL
results = {}

# 1. VAE
torch.manual_seed(0)
diffusers_vae = AutoencoderKL(**library_vae.SD_VAE_FT_MSE_CONFIG).eval()
reference = library_vae.DiffusersVAE(diffusers_vae)
ours = codecs.ComfyVAECodec(comfy.sd.VAE(sd=diffusers_vae.state_dict()))
pixels = torch.rand(9, 3, 32, 32) * 2 - 1  # 9 images: two slices (8 + 1), as DiffusersVAE draws its noise
generators = [torch.Generator().manual_seed(7) for _ in range(2)]
expected, got = reference.encode(pixels, generators[0]), ours.encode(pixels, generators[1])
mean = ours.vae.encode((pixels.movedim(1, -1) + 1) / 2) * codecs.VAE_SCALING_FACTOR
results["vae"] = {
    "shape": list(got.shape),
    "encode": (expected - got).abs().max().item(),
    "sample_vs_mean": (got - mean).abs().max().item(),
    "generator_after": [torch.randn(1, generator=g).item() for g in generators],
    "decode": (reference.decode(expected[:2]).clamp(-1, 1) - ours.decode(expected[:2])).abs().max().item(),
}

# 2. LoRA
folder = Path(tempfile.mkdtemp())
unet_path = tiny.make_tiny_models(folder / "models")["unet"]
folder_paths.folder_names_and_paths["latentsync"] = ([str(folder / "models")], {".pt"})
folder_paths.folder_names_and_paths["loras"] = ([str(folder)], {".safetensors"})
model = loaders.load_model("latentsync_unet.pt", device="cpu")
names = [n for n, m in model.unet.named_modules() if n.endswith("attn2.to_q") and isinstance(m, torch.nn.Linear)]
generator = torch.Generator().manual_seed(1)
layers = {}
for name in names:
    layer = model.unet.get_submodule(name)
    layers[name] = (torch.randn(4, layer.in_features, generator=generator), torch.randn(layer.out_features, 4, generator=generator))
library_lora.save_lora(library_lora.LoRA(layers, 4, 2.0), folder / "test_lora")
original = {name: model.unet.get_submodule(name).weight.detach().clone() for name in names}
patched = loaders.LatentSyncLoRA.execute(model=model, lora_name="test_lora/adapter_model.safetensors", strength=0.5).args[0]
model_management.load_models_gpu([patched.patcher])
with_lora = {name: patched.unet.get_submodule(name).weight.detach().clone() for name in names}
model_management.load_models_gpu([model.patcher])
restored = {name: model.unet.get_submodule(name).weight.detach().clone() for name in names}
copy = importlib.import_module("pack.latentsync.models.unet_loading").load_unet(unet_path)
library_lora.apply_lora(copy, library_lora.read_lora(folder / "test_lora"), strength=0.5)
results["lora"] = {
    "layers": len(names),
    "patched_vs_library": max((with_lora[n] - copy.get_submodule(n).weight).abs().max().item() for n in names),
    "change": min((with_lora[n] - original[n]).abs().max().item() for n in names),
    "restored_exactly": all(torch.equal(restored[n], original[n]) for n in names),
    "loras": list(patched.loras),
}

# 3. Memory: the pack holds no model; once ComfyUI drops a loader's output and frees memory, the model is gone
import gc, weakref
kept = {
    "unet": loaders.LatentSyncModelLoader.execute("latentsync_unet.pt", "auto", "auto", "cpu").args[0].patcher,
    "whisper": loaders.LatentSyncAudioEncoderLoader.execute("whisper/tiny.pt", "cpu").args[0],
}
model_management.load_models_gpu(list(kept.values()))
modules = {kind: weakref.ref(patcher.model.module) for kind, patcher in kept.items()}
del kept
model_management.unload_all_models()
gc.collect()
results["memory"] = {kind: module() is None for kind, module in modules.items()}
print(json.dumps(results))
"""


def run_in_comfyui(script: str) -> dict:
    """The JSON ``script`` (which starts with `_LOAD_PACK`) prints last, run in ComfyUI's interpreter."""
    comfyui_path = os.environ.get("COMFYUI_PATH")
    if not comfyui_path:
        pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI checkout (and COMFYUI_PYTHON at its interpreter)")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # faster than two threads on a busy 2-core runner
    process = subprocess.run(
        [python, "-c", script, comfyui_path, str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict:
    return run_in_comfyui(_SCRIPT)


def test_comfy_vae_codec_matches_the_librarys_vae(results: dict) -> None:
    vae = results["vae"]
    assert vae["shape"] == [9, 4, 4, 4]
    assert vae["encode"] < 1e-4
    assert vae["sample_vs_mean"] > 1e-2  # a posterior sample, not ComfyUI's mean
    first, second = vae["generator_after"]
    assert first == second  # the generator advanced exactly as the library's VAE advances it
    assert vae["decode"] < 1e-4


def test_lora_patches_match_the_library_and_undo_exactly(results: dict) -> None:
    lora = results["lora"]
    assert lora["layers"] > 0 and lora["loras"] == ["test_lora@0.5"]
    assert lora["change"] > 1e-3  # every adapted layer changed
    assert lora["patched_vs_library"] < 1e-5
    assert lora["restored_exactly"]


def test_freed_models_are_released(results: dict) -> None:
    assert results["memory"] == {"unet": True, "whisper": True}


_IMPORT_SCRIPT = _LOAD_PACK + """
async def node_list():
    return await (await sys.modules["pack"].comfy_entrypoint()).get_node_list()
schemas = [node.GET_SCHEMA() for node in asyncio.run(node_list())]
heavy = ["diffusers", "pack.latentsync.models.unet", "pack.latentsync.pipeline.lipsync"]
print(json.dumps({"nodes": len(schemas), "imported": [name for name in heavy if name in sys.modules]}))
"""


def test_loading_the_pack_leaves_the_heavy_modules_for_the_nodes_that_run() -> None:
    # ComfyUI imports every pack at start-up; diffusers and the pipeline are imported when a node needs them.
    loaded = run_in_comfyui(_IMPORT_SCRIPT)
    assert loaded["nodes"] > 10 and loaded["imported"] == []
