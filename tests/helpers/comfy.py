"""Stand-ins for the ComfyUI modules the nodes import (``comfy``, ``comfy_api.latest``, ``comfy_execution``,
``folder_paths``), so every node runs in the tests without a ComfyUI checkout, installed with
``patch.dict("sys.modules", ...)`` as ComfyUI's own ``tests-unit`` do.

Each stand-in keeps the signatures of ComfyUI v0.3.64 for what the nodes use (an input option ComfyUI does not
accept is a ``TypeError`` here too) and the behaviour they rely on, and nothing more: ``folder_paths`` over a real
``models`` folder, a ``ModelPatcher`` that holds a module and collects weight patches as ComfyUI's does, the model
manager on the CPU recording what it was asked to load, a progress bar recording its updates. The node code and the
library under it run for real.

    with comfy_stubs(models_dir, temp_dir) as comfy:   # comfy.modules: the stand-in modules by name
        loaders = pack_module("nodes.loaders")
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as bytes_io
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from unittest.mock import patch

import torch

# ComfyUI's `folder_paths.supported_pt_extensions`.
SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


def _module(name: str, **attributes) -> ModuleType:
    module = ModuleType(name)
    module.__dict__.update(attributes)
    return module


# ----------------------------------------------------------------------------------------------------------
# folder_paths


def folder_paths_module(models_dir: Path, temp_dir: Path) -> ModuleType:
    """``folder_paths`` over ``models_dir`` with ComfyUI's ``vae`` and ``loras`` folders registered; the input and
    output folders are ``input`` and ``output`` beside ``temp_dir``."""
    folders = {
        name: ([str(models_dir / name)], set(SUPPORTED_PT_EXTENSIONS)) for name in ("vae", "loras", "checkpoints")
    }

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        paths, extensions = folders.setdefault(folder_name, ([], set()))
        if full_folder_path not in paths:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    def get_folder_paths(folder_name: str) -> list[str]:
        return folders[folder_name][0][:]

    def get_filename_list(folder_name: str) -> list[str]:
        """Files under the folder's paths (links followed), relative, filtered by the folder's extensions."""
        paths, extensions = folders[folder_name]
        names = set()
        for root in paths:
            for directory, _, files in os.walk(root, followlinks=True):
                for file in files:
                    if not extensions or os.path.splitext(file)[1].lower() in extensions:
                        names.add(os.path.relpath(os.path.join(directory, file), root))
        return sorted(names)

    def get_full_path(folder_name: str, filename: str) -> str | None:
        for root in folders[folder_name][0]:
            path = os.path.join(root, os.path.relpath(os.path.join("/", filename), "/"))
            if os.path.isfile(path):
                return path
        return None

    def get_full_path_or_raise(folder_name: str, filename: str) -> str:
        path = get_full_path(folder_name, filename)
        if path is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return path

    return _module(
        "folder_paths",
        models_dir=str(models_dir),
        folder_names_and_paths=folders,
        supported_pt_extensions=SUPPORTED_PT_EXTENSIONS,
        add_model_folder_path=add_model_folder_path,
        get_folder_paths=get_folder_paths,
        get_filename_list=get_filename_list,
        get_full_path=get_full_path,
        get_full_path_or_raise=get_full_path_or_raise,
        get_temp_directory=lambda: str(temp_dir),
        get_input_directory=lambda: str(temp_dir.parent / "input"),
        get_output_directory=lambda: str(temp_dir.parent / "output"),
    )


# ----------------------------------------------------------------------------------------------------------
# comfy


class InterruptProcessingException(Exception):
    pass


class ModelManagement:
    """``comfy.model_management`` on a CPU-only machine; ``loaded`` lists every ``load_models_gpu`` call."""

    InterruptProcessingException = InterruptProcessingException

    def __init__(self):
        self.loaded: list[list] = []
        self.interrupted = False

    def get_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def unet_offload_device(self) -> torch.device:
        return torch.device("cpu")

    def unet_dtype(self, device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32)):
        return torch.float32

    def vae_dtype(self, device=None, allowed_dtypes=()):
        return torch.float32

    def load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False) -> None:  # fmt: skip
        self.loaded.append(list(models))

    def interrupt_current_processing(self, value: bool = True) -> None:
        self.interrupted = value

    def throw_exception_if_processing_interrupted(self) -> None:
        if self.interrupted:
            self.interrupted = False
            raise InterruptProcessingException()

    def module(self) -> ModuleType:
        names = [name for name in dir(self) if not name.startswith("_") and name != "module"]
        return _module("comfy.model_management", **{name: getattr(self, name) for name in names})


class ModelPatcher:
    """``comfy.model_patcher.ModelPatcher``: holds ``model`` and its weight patches (``add_patches`` keeps those
    whose key is in the model's state dict and returns them, as ComfyUI's does); ``clone`` shares the model."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.patches: dict[str, list] = {}

    def clone(self) -> ModelPatcher:
        clone = ModelPatcher(self.model, self.load_device, self.offload_device, self.size)
        clone.patches = {key: list(patches) for key, patches in self.patches.items()}
        return clone

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        model_keys = set(self.model.state_dict())
        applied = []
        for key, patch_value in patches.items():
            if key in model_keys:
                applied.append(key)
                self.patches.setdefault(key, []).append((strength_patch, patch_value, strength_model, None, None))
        return applied


class LoRAAdapter:
    """``comfy.weight_adapter.lora.LoRAAdapter``: ``weights`` is ``(up, down, alpha, mid, dora_scale, reshape)``."""

    name = "lora"

    def __init__(self, loaded_keys: set[str], weights: tuple):
        self.loaded_keys = loaded_keys
        self.weights = weights


class ProgressBar:
    """``comfy.utils.ProgressBar``; ``updates`` lists ``(value, total, preview)`` of every update."""

    instances: list[ProgressBar] = []

    def __init__(self, total: int, node_id=None):
        self.total = total
        self.current = 0
        self.updates: list[tuple] = []
        ProgressBar.instances.append(self)

    def update_absolute(self, value: int, total: int | None = None, preview=None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        self.updates.append((value, self.total, preview))

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


class DiagonalGaussianRegularizer(torch.nn.Module):
    """``comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer``: marks a KL autoencoder's posterior."""


# ----------------------------------------------------------------------------------------------------------
# comfy_api.latest: io, ui, InputImpl, ComfyExtension


class Input:
    io_type = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):  # fmt: skip
        self.id, self.display_name, self.optional = id, display_name, optional
        self.tooltip, self.lazy = tooltip, lazy
        self.extra_dict = extra_dict or {}

    def get_io_type(self):
        """What ComfyUI checks a connected or typed value against (a list of options: the value must be one)."""
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None):  # fmt: skip
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless = default, socketless
        self.widget_type, self.force_input = widget_type, force_input


class Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def comfy_type(io_type: str, input_class: type = Input, output_class: type = Output) -> type:
    """A ComfyUI type with its ``Input`` and ``Output`` classes; their ``io_type`` says what they carry."""
    inputs = type("Input", (input_class,), {"io_type": io_type})
    outputs = type("Output", (output_class,), {"io_type": io_type})
    return type(io_type.title(), (), {"io_type": io_type, "Input": inputs, "Output": outputs})


class BooleanInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: bool = None, label_on: str = None, label_off: str = None, socketless: bool = None,
                 force_input: bool = None):  # fmt: skip
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.label_on, self.label_off = label_on, label_off


class IntInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: int = None, min: int = None, max: int = None, step: int = None,
                 control_after_generate: bool = None, display_mode=None, socketless: bool = None,
                 force_input: bool = None):  # fmt: skip
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate


class FloatInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: float = None, min: float = None, max: float = None, step: float = None, round: float = None,
                 display_mode=None, socketless: bool = None, force_input: bool = None):  # fmt: skip
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round


class StringInput(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 multiline=False, placeholder: str = None, default: str = None, dynamic_prompts: bool = None,
                 socketless: bool = None, force_input: bool = None):  # fmt: skip
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder = multiline, placeholder


class ComboInput(WidgetInput):
    def __init__(self, id: str, options: list = None, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, default=None, control_after_generate: bool = None, upload=None, image_folder=None,
                 remote=None, socketless: bool = None):  # fmt: skip
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options, self.control_after_generate = options, control_after_generate


class MultiTypeInput(Input):
    def __init__(self, id: str, types: list, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, extra_dict=None):  # fmt: skip
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.types = types


@dataclasses.dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool:
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index) -> Any:
        return self.args[index]


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


class VideoFromFile:
    """``InputImpl.VideoFromFile``: a video file, by path or held in memory."""

    def __init__(self, file: str | bytes_io.BytesIO):
        self._file = file

    def get_stream_source(self) -> str | bytes_io.BytesIO:
        if isinstance(self._file, bytes_io.BytesIO):
            self._file.seek(0)
        return self._file

    def save_to(self, path: str, format="auto", codec="auto", metadata: dict | None = None) -> None:
        """Writes the file unchanged (ComfyUI copies the streams into the same container)."""
        source = self.get_stream_source()
        if isinstance(source, str):
            shutil.copyfile(source, path)
        else:
            Path(path).write_bytes(source.getvalue())


class ComfyExtension:
    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list:
        raise NotImplementedError


def comfy_api_modules() -> dict[str, ModuleType]:
    """``comfy_api`` and ``comfy_api.latest`` with ``io``, ``ui``, ``InputImpl`` and ``ComfyExtension``."""
    io = _module(
        "comfy_api.latest._io",
        Input=Input,
        WidgetInput=WidgetInput,
        Output=Output,
        Schema=Schema,
        ComfyNode=ComfyNode,
        NodeOutput=NodeOutput,
        Custom=comfy_type,
        Boolean=comfy_type("BOOLEAN", BooleanInput),
        Int=comfy_type("INT", IntInput),
        Float=comfy_type("FLOAT", FloatInput),
        String=comfy_type("STRING", StringInput),
        Combo=comfy_type("COMBO", ComboInput),
        Image=comfy_type("IMAGE"),
        Audio=comfy_type("AUDIO"),
        Video=comfy_type("VIDEO"),
        Vae=comfy_type("VAE"),
        MultiType=SimpleNamespace(Input=MultiTypeInput),
    )
    ui = _module("comfy_api.latest._ui", PreviewText=PreviewText)
    latest = _module(
        "comfy_api.latest",
        io=io,
        ui=ui,
        InputImpl=SimpleNamespace(VideoFromFile=VideoFromFile),
        ComfyExtension=ComfyExtension,
    )
    return {"comfy_api": _module("comfy_api", latest=latest), "comfy_api.latest": latest}


class GraphNode:
    def __init__(self, id: str, class_type: str, inputs: dict):
        self.id, self.class_type, self.inputs = id, class_type, inputs

    def out(self, index: int) -> list:
        return [self.id, index]


class GraphBuilder:
    """``comfy_execution.graph_utils.GraphBuilder``: the nodes of a node expansion; ``finalize`` gives the prompt."""

    def __init__(self, prefix: str | None = None):
        self.nodes: dict[str, GraphNode] = {}

    def node(self, class_type: str, id: str | None = None, **kwargs) -> GraphNode:
        id = id or str(len(self.nodes) + 1)
        self.nodes[id] = GraphNode(id, class_type, kwargs)
        return self.nodes[id]

    def finalize(self) -> dict:
        return {id: {"class_type": node.class_type, "inputs": node.inputs} for id, node in self.nodes.items()}


# ----------------------------------------------------------------------------------------------------------
# All of them


@dataclasses.dataclass
class ComfyStubs:
    """The stand-ins while installed: ``modules`` by name, the model manager, the models and temp folders."""

    modules: dict[str, ModuleType]
    model_management: ModelManagement
    models_dir: Path
    temp_dir: Path


@contextlib.contextmanager
def comfy_stubs(models_dir: Path, temp_dir: Path) -> Iterator[ComfyStubs]:
    """Install the stand-in ComfyUI modules in ``sys.modules`` for the block; everything imported in it (the node
    modules included) is removed again at its end."""
    management = ModelManagement()
    comfy_modules = {
        "model_management": management.module(),
        "model_patcher": _module("comfy.model_patcher", ModelPatcher=ModelPatcher),
        "utils": _module("comfy.utils", ProgressBar=ProgressBar),
        "cli_args": _module("comfy.cli_args", args=SimpleNamespace(preview_size=512)),
        "weight_adapter": _module("comfy.weight_adapter"),
        "weight_adapter.lora": _module("comfy.weight_adapter.lora", LoRAAdapter=LoRAAdapter),
        "ldm": _module("comfy.ldm"),
        "ldm.models": _module("comfy.ldm.models"),
        "ldm.models.autoencoder": _module(
            "comfy.ldm.models.autoencoder", DiagonalGaussianRegularizer=DiagonalGaussianRegularizer
        ),
    }
    comfy = _module("comfy", **{name: module for name, module in comfy_modules.items() if "." not in name})
    modules = {
        "comfy": comfy,
        **{f"comfy.{name}": module for name, module in comfy_modules.items()},
        **comfy_api_modules(),
        "folder_paths": folder_paths_module(models_dir, temp_dir),
        "comfy_execution": _module("comfy_execution"),
        "comfy_execution.graph_utils": _module("comfy_execution.graph_utils", GraphBuilder=GraphBuilder),
    }
    with patch.dict(sys.modules, modules):
        yield ComfyStubs(modules, management, models_dir, temp_dir)
