"""What the node modules share: the pack's socket types, model folders, inputs built from the settings table,
and the bridge from the pipeline's progress / cancel callbacks to ComfyUI."""

from __future__ import annotations

import io as bytes_io
import logging
import os
from pathlib import Path

import folder_paths
import numpy as np
import torch
from comfy import model_management
from comfy.cli_args import args
from comfy.utils import ProgressBar
from comfy_api.latest import InputImpl, io, ui
from PIL import Image

from ..latentsync.pipeline.settings import DEFAULT_SETTINGS, SETTING_SPECS
from .convert import MAX_FPS, MIN_FPS, check_video_path
from .data import latentsync_file_kind, setting_input_name, setting_widget

logger = logging.getLogger(__name__)

CATEGORY = "LatentSync"

MODEL = io.Custom("LATENTSYNC_MODEL")
AUDIO_ENCODER = io.Custom("LATENTSYNC_AUDIO_ENCODER")
AUDIO_EMBEDS = io.Custom("LATENTSYNC_AUDIO_EMBEDS")
FACE_DETECTOR = io.Custom("LATENTSYNC_FACE_DETECTOR")
FACES = io.Custom("LATENTSYNC_FACES")
FACE_TRACKS = io.Custom("LATENTSYNC_FACE_TRACKS")
SPEAKER_MAP = io.Custom("LATENTSYNC_SPEAKER_MAP")
SYNCNET = io.Custom("LATENTSYNC_SYNCNET")
VAE = io.Custom("LATENTSYNC_VAE")
SPEED = io.Custom("LATENTSYNC_SPEED")

# ----------------------------------------------------------------------------------------------------------
# Model folders

MODEL_FOLDER = "latentsync"  # models/latentsync: latentsync_unet.pt, whisper/tiny.pt, stable_syncnet.pt
MODEL_EXTENSIONS = {".safetensors", ".pt", ".pth"}
DEFAULT_INSIGHTFACE_MODEL = "buffalo_l"
INSIGHTFACE_FOLDER = "insightface"  # models/insightface/models/buffalo_l/{det_10g,2d106det}.onnx
LORA_FOLDER = "loras"


def register_model_folder(name: str, extensions: set[str], own_extensions: bool) -> None:
    """Add ``models/<name>`` to ComfyUI's folder ``name`` without dropping folders an extra_model_paths.yaml gave it
    (those are registered before custom nodes load). ``own_extensions``: the folder is ours, so its file types are
    ``extensions`` even if the yaml created it; otherwise another pack's file types are kept."""
    default = os.path.join(folder_paths.models_dir, name)
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([default], set(extensions))
        return
    folder_paths.add_model_folder_path(name, default)
    paths, current = folder_paths.folder_names_and_paths[name]
    folder_paths.folder_names_and_paths[name] = (paths, set(extensions) if own_extensions else current)


register_model_folder(MODEL_FOLDER, MODEL_EXTENSIONS, own_extensions=True)
register_model_folder(INSIGHTFACE_FOLDER, {".onnx"}, own_extensions=False)


def latentsync_files(kind: str) -> tuple[list[str], str | None]:
    """The files of ``models/latentsync`` that hold a model of ``kind`` (`latentsync_file_kind`) and the default to
    show: the first whose name contains ``kind``."""
    files = [name for name in folder_paths.get_filename_list(MODEL_FOLDER) if latentsync_file_kind(name) == kind]
    return files, next((name for name in files if kind in name.lower()), files[0] if files else None)


def full_path(folder: str, name: str) -> Path:
    return Path(folder_paths.get_full_path_or_raise(folder, name))


def comfy_video_path(path: str | os.PathLike) -> Path:
    """The file of a VIDEO input if it lies in ComfyUI's input, output or temp folder (`check_video_path`)."""
    folders = [folder_paths.get_input_directory(), folder_paths.get_output_directory()]
    return check_video_path(path, [*folders, folder_paths.get_temp_directory()])


class Choice(io.Combo.Input):
    """A dropdown whose value ComfyUI checks against its options when a prompt is queued.

    ComfyUI 0.3.64 checks a value only for inputs typed by their list of options (the V1 form of a combo); a V3
    ``Combo.Input`` is typed ``"COMBO"`` and reaches ``execute`` with any value an API caller sends. Typed by its
    options, a wrong value is refused with HTTP 400 on that input alone (``value_not_in_list``); a
    ``validate_inputs`` would flag every input it names.
    """

    def get_io_type(self):
        return list(self.options)


# ----------------------------------------------------------------------------------------------------------
# Inputs from the settings table


def setting_input(name: str, widget: dict | None = None, **overrides) -> io.Input:
    """The input of `LipSyncSettings` field ``name``, named `setting_input_name`, with its default, bounds and help
    from ``SETTING_SPECS`` (or from ``widget``, `setting_widget` of another table)."""
    options = {**(widget or setting_widget(name)), **overrides}
    input_name = setting_input_name(name)
    if "options" in options:
        return Choice(input_name, **options)
    if isinstance(options["default"], bool):
        return io.Boolean.Input(input_name, **options)
    if isinstance(options["default"], float):
        return io.Float.Input(input_name, **options)
    return io.Int.Input(input_name, **options)


def vae_input() -> io.Input:
    """The samplers' VAE: ComfyUI's (Load VAE) or LatentSync VAE Loader's."""
    return io.MultiType.Input(
        "vae",
        types=[io.Vae, VAE],
        tooltip="The SD 1.5 VAE (sd-vae-ft-mse), from Load VAE or from LatentSync VAE Loader (the reference's "
        "diffusers implementation; also loads diffusers folders).",
    )


def generation_inputs() -> list[io.Input]:
    """Steps, guidance, seed and window length: the inputs every sampling node has."""
    return [
        setting_input("num_inference_steps"),
        setting_input("guidance_scale"),
        setting_input("seed", control_after_generate=True),
        setting_input("num_frames"),
    ]


def landmark_filter_input() -> io.Input:
    """Optional, so graphs saved before it existed still run (with the filter on, the default)."""
    return setting_input("landmark_filter", optional=True)


def speaker_input(tooltip: str = "", default: str = DEFAULT_SETTINGS.speaker) -> io.Input:
    """Who speaks: the ``speaker`` setting as text (auto, largest, all, an id, point:X,Y[@T], box:X0,Y0,X1,Y1[@T]).
    Optional, so graphs saved before it existed still run."""
    help = SETTING_SPECS["speaker"].help
    return io.String.Input("speaker", default=default, optional=True, tooltip=f"{help[0].upper()}{help[1:]}. {tooltip}")


def policy_inputs() -> list[io.Input]:
    return [setting_input("long_audio"), setting_input("short_audio"), setting_input("no_face")]


# ----------------------------------------------------------------------------------------------------------
# Notices, progress and cancel


def show_notices(notices: list[str]) -> ui.PreviewText | None:
    """Log ``notices`` (`run_notices`) and show them on the node that runs: as its progress text in the frontend
    (on the all-in-one node when it runs the sampler for it) and as a ``text`` UI output in the prompt's history."""
    if not notices:
        return None
    from server import PromptServer  # the running server's module: imported when a node runs, not with the pack

    text = "\n".join(notices)
    logger.warning("LatentSync: %s", text)
    server = PromptServer.instance
    if server.last_node_id is not None:  # the node the frontend shows as running (set for frontend clients)
        server.send_progress_text(text, server.last_node_id)
    return ui.PreviewText(text)



def check_cancel() -> bool:
    """The pipeline's ``cancel`` callback: raises ComfyUI's interrupt (so the run stops as a cancel, not an
    error) when the user pressed Cancel; otherwise False."""
    model_management.throw_exception_if_processing_interrupted()
    return False


class SamplingProgress:
    """A ComfyUI progress bar over a run's work, frames through every stage (`latentsync.pipeline.progress`),
    previewing the newest generated face.

    ``progress`` and ``cancel`` are the pipeline's callbacks (cancel is asked between frames and steps); pass
    ``show`` as the codec's ``on_decoded``.
    """

    def __init__(self):
        self.bar: ProgressBar | None = None
        self.shown = 0
        self.preview = None

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = ProgressBar(max(total, 1))
        new_total = bool(total) and total != self.bar.total  # the lip sync after the pass over every face
        if new_total or done - self.shown >= max(1, total // 500) or done == total:  # a message to the browser each
            self.shown = done
            self.bar.update_absolute(done, total=max(total, 1), preview=self.preview)

    cancel = staticmethod(check_cancel)

    def show(self, pixels: torch.Tensor) -> None:
        """Keep the first face of a decoded window ``(f, 3, R, R)`` in [-1, 1] as the preview."""
        face = ((pixels[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
        self.preview = ("JPEG", Image.fromarray(np.ascontiguousarray(face)), args.preview_size)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.update_absolute(self.bar.total, preview=self.preview)


# ----------------------------------------------------------------------------------------------------------
# Inputs and outputs more than one node module uses

FPS_TOOLTIP = "Frame rate of the video frames (connect fps from Get Video Components)."


def fps_input(tooltip: str = FPS_TOOLTIP) -> io.Float.Input:
    return io.Float.Input("fps", default=25.0, min=float(MIN_FPS), max=float(MAX_FPS), step=0.01, tooltip=tooltip)


def vae_choices() -> list[str]:
    """VAEs in ``models/vae``: diffusers folders (with a config.json) first, then single files outside them."""
    folders = {
        config.parent.name
        for root in folder_paths.get_folder_paths("vae")
        for config in Path(root).glob("*/config.json")
    }
    files = [name for name in folder_paths.get_filename_list("vae") if Path(name).parts[0] not in folders]
    return sorted(folders) + files


def video_output(path: Path) -> InputImpl.VideoFromFile:
    """A VIDEO of the encoded file, held in memory (compressed), so ``path`` can be deleted."""
    return InputImpl.VideoFromFile(bytes_io.BytesIO(path.read_bytes()))
