"""Loader nodes: the UNet, the Whisper audio encoder, the face detector, the SyncNet, and LoRAs.

Models are wrapped in ComfyUI ``ModelPatcher``s: ComfyUI moves them to the GPU when a node needs them
(``load_models_gpu``), offloads them to the CPU when another model needs the memory, and applies LoRAs as weight
patches it can undo. The pack keeps no model itself: a loaded model lives in ComfyUI's cache of node outputs
(and in its model memory), so ComfyUI releases it when the graph no longer uses it or the user frees memory.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import folder_paths
import torch
from comfy import model_management
from comfy.model_patcher import ModelPatcher
from comfy.weight_adapter.lora import LoRAAdapter
from comfy_api.latest import io

from ..latentsync.audio.whisper import load_whisper
from ..latentsync.errors import CheckpointError
from ..latentsync.face.detectors import FaceDetector, create_face_detector
from ..latentsync.face.detectors.insightface import DETECTION_MODEL_FILE, LANDMARK_MODEL_FILE
from ..latentsync.models.lora import PEFT_WEIGHTS, check_lora_fits, read_lora
from ..latentsync.models.syncnet_loading import load_syncnet
from ..latentsync.models.vae import load_vae
from ..latentsync.pipeline.models import infer_resolution
from ..latentsync.pipeline.settings import AUTO, DTYPES, SETTING_SPECS
from .common import (
    AUDIO_ENCODER,
    CATEGORY,
    DEFAULT_INSIGHTFACE_MODEL,
    FACE_DETECTOR,
    INSIGHTFACE_FOLDER,
    LORA_FOLDER,
    MODEL,
    MODEL_FOLDER,
    SYNCNET,
    VAE,
    Choice,
    full_path,
    latentsync_files,
    setting_input,
    vae_choices,
)
from .data import LatentSyncModel, ManagedModule

logger = logging.getLogger(__name__)

DEVICES = (AUTO, "cpu")
RESOLUTIONS = (AUTO, *(str(r) for r in SETTING_SPECS["resolution"].choices))

DEVICE_TOOLTIP = (
    "auto: ComfyUI's device (the GPU), offloaded to the CPU when other models need the memory; cpu: always on the "
    "CPU (slow, frees the GPU)."
)


def model_devices(device: str) -> tuple[torch.device, torch.device]:
    """``(load device, offload device)`` for a device choice."""
    if device == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    return model_management.get_torch_device(), model_management.unet_offload_device()


def model_dtype(dtype: str, load_device: torch.device) -> torch.dtype:
    """The UNet dtype of a dtype choice; ``auto`` is ComfyUI's pick for diffusion models on ``load_device``."""
    if dtype != AUTO:
        return DTYPES[dtype]
    return model_management.unet_dtype(load_device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])


def managed(module: torch.nn.Module, device: str) -> ModelPatcher:
    """``module`` (on the offload device) in a ModelPatcher for a device choice."""
    load_device, offload_device = model_devices(device)
    return ModelPatcher(ManagedModule(module), load_device=load_device, offload_device=offload_device)


def load_model(unet_name: str, resolution: str = AUTO, dtype: str = AUTO, device: str = AUTO) -> LatentSyncModel:
    """The UNet ``unet_name`` of ``models/latentsync`` as a `LatentSyncModel`."""
    from ..latentsync.models.unet_loading import load_unet  # diffusers: imported when a UNet loads

    path = full_path(MODEL_FOLDER, unet_name)
    load_device, offload_device = model_devices(device)
    torch_dtype = model_dtype(dtype, load_device)
    patcher = managed(load_unet(path, device=offload_device, dtype=torch_dtype), device)
    if resolution == AUTO:
        size, reason = infer_resolution(path)
    else:
        size, reason = int(resolution), "chosen in LatentSync Model Loader"
    logger.info("LatentSync UNet %s (%s), face resolution %d: %s", path.name, torch_dtype, size, reason)
    return LatentSyncModel(patcher, size, reason, path)


def load_audio_encoder(whisper_name: str, device: str = AUTO) -> ModelPatcher:
    """The Whisper checkpoint ``whisper_name`` of ``models/latentsync`` in a ModelPatcher (float32)."""
    path = full_path(MODEL_FOLDER, whisper_name)
    return managed(load_whisper(path, device=model_devices(device)[1]), device)


def vae_path(name: str) -> Path:
    """The diffusers folder or file ``name`` of `vae_choices`."""
    for root in folder_paths.get_folder_paths("vae"):
        if (Path(root, name) / "config.json").is_file():
            return Path(root, name)
    return full_path("vae", name)


def load_managed_vae(vae_name: str, dtype: str = AUTO, device: str = AUTO) -> ModelPatcher:
    """A VAE of ``models/vae`` as the diffusers ``AutoencoderKL`` LatentSync uses, in a ModelPatcher."""
    path = vae_path(vae_name)
    load_device, offload_device = model_devices(device)
    if dtype == AUTO:
        torch_dtype = model_management.vae_dtype(load_device, [torch.float16, torch.bfloat16, torch.float32])
    else:
        torch_dtype = DTYPES[dtype]
    return managed(load_vae(path, device=offload_device, dtype=torch_dtype), device)


def insightface_models() -> list[str]:
    """Folders ``models/insightface/models/<name>`` that hold InsightFace's detection and landmark models."""
    names = set()
    for root in folder_paths.get_folder_paths(INSIGHTFACE_FOLDER):
        for folder in Path(root, "models").glob("*"):
            if (folder / DETECTION_MODEL_FILE).is_file() and (folder / LANDMARK_MODEL_FILE).is_file():
                names.add(folder.name)
    return sorted(names)


def insightface_dir(name: str) -> Path:
    """The folder of InsightFace model ``name``, one of `insightface_models` (a name, never a path); raises
    `CheckpointError` saying where to put it."""
    roots = folder_paths.get_folder_paths(INSIGHTFACE_FOLDER)
    if name in insightface_models():
        for root in roots:
            folder = Path(root, "models", name)
            if (folder / DETECTION_MODEL_FILE).is_file() and (folder / LANDMARK_MODEL_FILE).is_file():
                return folder
    places = " or ".join(str(Path(root, "models", DEFAULT_INSIGHTFACE_MODEL)) for root in roots)
    raise CheckpointError(
        f"InsightFace model {name!r} not found: put {DETECTION_MODEL_FILE} and {LANDMARK_MODEL_FILE} of InsightFace's "
        f"buffalo_l in {places} and refresh, or choose the mediapipe detector."
    )


def load_face_detector(detector: str, insightface_model: str = DEFAULT_INSIGHTFACE_MODEL) -> FaceDetector:
    """A face detector by name; InsightFace reads its models from ``models/insightface/models``."""
    if detector == "insightface":
        return create_face_detector(detector, model_dir=insightface_dir(insightface_model))
    return create_face_detector(detector)


class LatentSyncModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files, default = latentsync_files("unet")
        return io.Schema(
            node_id="LatentSyncModelLoader",
            display_name="LatentSync Model Loader",
            category=CATEGORY,
            description="Loads a LatentSync 1.5 / 1.6 UNet (latentsync_unet.pt) from models/latentsync.",
            inputs=[
                Choice(
                    "unet_name",
                    options=files,
                    default=default,
                    tooltip="The UNet checkpoint in models/latentsync (latentsync_unet.pt of ByteDance/LatentSync-1.5 "
                    "or -1.6, or a fine-tune of it).",
                ),
                Choice(
                    "resolution",
                    options=list(RESOLUTIONS),
                    default=AUTO,
                    tooltip="Face resolution the UNet was trained at: 256 for LatentSync 1.5, 512 for 1.6. auto reads "
                    "a sidecar latentsync_unet.json or a version in the file or folder name, else assumes 256.",
                ),
                Choice(
                    "dtype",
                    options=list(SETTING_SPECS["dtype"].choices),
                    default=AUTO,
                    tooltip="Precision of the UNet. auto: what ComfyUI uses for diffusion models on the device "
                    "(float16 on most GPUs, float32 on the CPU).",
                ),
                Choice("device", options=list(DEVICES), default=AUTO, tooltip=DEVICE_TOOLTIP),
            ],
            outputs=[MODEL.Output(display_name="model", tooltip="The UNet, managed by ComfyUI's model memory.")],
        )

    @classmethod
    def execute(cls, unet_name, resolution, dtype, device) -> io.NodeOutput:
        return io.NodeOutput(load_model(unet_name, resolution, dtype, device))


class LatentSyncVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = vae_choices()
        default = next((name for name in choices if "mse" in name.lower()), choices[0] if choices else None)
        return io.Schema(
            node_id="LatentSyncVAELoader",
            display_name="LatentSync VAE Loader",
            category=CATEGORY,
            description="Loads the SD 1.5 VAE as LatentSync's reference code runs it (diffusers AutoencoderKL): "
            "a single file from models/vae or a diffusers folder there (config.json + weights). Load VAE works "
            "too; this one also reads diffusers folders of any size.",
            inputs=[
                Choice(
                    "vae_name",
                    options=choices,
                    default=default,
                    tooltip="vae-ft-mse-840000-ema-pruned.safetensors, or the sd-vae-ft-mse diffusers folder, in "
                    "models/vae.",
                ),
                Choice(
                    "dtype",
                    options=list(SETTING_SPECS["dtype"].choices),
                    default=AUTO,
                    tooltip="Precision of the VAE. auto: what ComfyUI uses for VAEs on the device.",
                ),
                Choice("device", options=list(DEVICES), default=AUTO, tooltip=DEVICE_TOOLTIP),
            ],
            outputs=[VAE.Output(display_name="vae", tooltip="The VAE, for the LatentSync samplers.")],
        )

    @classmethod
    def execute(cls, vae_name, dtype, device) -> io.NodeOutput:
        return io.NodeOutput(load_managed_vae(vae_name, dtype, device))


class LatentSyncAudioEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files, default = latentsync_files("whisper")
        return io.Schema(
            node_id="LatentSyncAudioEncoderLoader",
            display_name="LatentSync Audio Encoder Loader",
            category=CATEGORY,
            description="Loads the Whisper encoder (whisper/tiny.pt) whose features drive the UNet.",
            inputs=[
                Choice(
                    "whisper_name",
                    options=files,
                    default=default,
                    tooltip="OpenAI Whisper checkpoint in models/latentsync: whisper/tiny.pt of ByteDance/LatentSync "
                    "(whisper/small.pt for a 768-wide UNet).",
                ),
                Choice("device", options=list(DEVICES), default=AUTO, tooltip=DEVICE_TOOLTIP),
            ],
            outputs=[AUDIO_ENCODER.Output(display_name="audio_encoder", tooltip="The Whisper audio encoder.")],
        )

    @classmethod
    def execute(cls, whisper_name, device) -> io.NodeOutput:
        return io.NodeOutput(load_audio_encoder(whisper_name, device))


class LatentSyncFaceDetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        insightface = insightface_models() or [DEFAULT_INSIGHTFACE_MODEL]
        default = DEFAULT_INSIGHTFACE_MODEL if DEFAULT_INSIGHTFACE_MODEL in insightface else insightface[0]
        return io.Schema(
            node_id="LatentSyncFaceDetectorLoader",
            display_name="LatentSync Face Detector Loader",
            category=CATEGORY,
            description="Chooses the face detector that finds and tracks the face to lip-sync.",
            inputs=[
                setting_input(
                    "face_detector",
                    tooltip="mediapipe: offline, nothing to download (default). insightface: the reference's detector "
                    "(needs onnxruntime and InsightFace's buffalo_l models in models/insightface/models).",
                ),
                Choice(
                    "insightface_model",
                    options=insightface,
                    default=default,
                    tooltip="For the insightface detector: the folder in models/insightface/models holding "
                    f"{DETECTION_MODEL_FILE} and {LANDMARK_MODEL_FILE}. Ignored by mediapipe.",
                ),
            ],
            outputs=[FACE_DETECTOR.Output(display_name="face_detector", tooltip="The face detector.")],
        )

    @classmethod
    def execute(cls, face_detector, insightface_model) -> io.NodeOutput:
        return io.NodeOutput(load_face_detector(face_detector, insightface_model))


class LatentSyncSyncNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files, default = latentsync_files("syncnet")
        return io.Schema(
            node_id="LatentSyncSyncNetLoader",
            display_name="LatentSync SyncNet Loader",
            category=CATEGORY,
            description="Loads StableSyncNet (stable_syncnet.pt), the lip-sync judge used by LatentSync Sync Score.",
            inputs=[
                Choice(
                    "syncnet_name",
                    options=files,
                    default=default,
                    tooltip="stable_syncnet.pt of ByteDance/LatentSync, in models/latentsync.",
                ),
                Choice("device", options=list(DEVICES), default=AUTO, tooltip=DEVICE_TOOLTIP),
            ],
            outputs=[SYNCNET.Output(display_name="syncnet", tooltip="The SyncNet.")],
        )

    @classmethod
    def execute(cls, syncnet_name, device) -> io.NodeOutput:
        path = full_path(MODEL_FOLDER, syncnet_name)
        return io.NodeOutput(managed(load_syncnet(path, device=model_devices(device)[1]), device))


class LatentSyncLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list(LORA_FOLDER)
        default = next((name for name in files if "latentsync" in name.lower()), files[0] if files else None)
        return io.Schema(
            node_id="LatentSyncLoRA",
            display_name="LatentSync LoRA",
            category=CATEGORY,
            description="Applies a LatentSync LoRA (trained with `python -m train lora`) to the UNet. The loaded "
            "UNet is not changed: the LoRA is a weight patch of a copy, undone when another copy runs.",
            inputs=[
                MODEL.Input("model", tooltip="The UNet to adapt."),
                Choice(
                    "lora_name",
                    options=files,
                    default=default,
                    tooltip="A LatentSync LoRA .safetensors in models/loras (LoRAs for Stable Diffusion do not fit).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-2.0,
                    max=2.0,
                    step=0.05,
                    tooltip="Scale of the LoRA's update: 0 = off, 1 = as trained.",
                ),
            ],
            outputs=[MODEL.Output(display_name="model", tooltip="The UNet with the LoRA applied.")],
        )

    @classmethod
    def execute(cls, model: LatentSyncModel, lora_name, strength) -> io.NodeOutput:
        path = full_path(LORA_FOLDER, lora_name)
        lora = read_lora(path)
        label = path.parent.name if path.name == PEFT_WEIGHTS else path.name  # a peft folder goes by its name
        check_lora_fits(model.unet, lora)
        patches = {
            f"module.{name}.weight": LoRAAdapter(set(), (up, down, lora.alpha, None, None, None))
            for name, (down, up) in lora.layers.items()
        }
        patcher = model.patcher.clone()
        patcher.add_patches(patches, strength)
        applied = dataclasses.replace(model, patcher=patcher, loras=(*model.loras, f"{label}@{strength:g}"))
        return io.NodeOutput(applied)
