"""Finding and loading the three models of a lip-sync run: the UNet, the Whisper encoder and the SD VAE.

A models folder in the official layout (what ``python -m latentsync download`` and ``make-tiny-models`` write)::

    DIR/latentsync_unet.pt                          ByteDance/LatentSync-1.6 (or -1.5)
    DIR/whisper/tiny.pt                             same repository (whisper/small.pt for a 768-wide UNet)
    DIR/sd-vae-ft-mse/{config.json, diffusion_pytorch_model.safetensors}     stabilityai/sd-vae-ft-mse

Any file can be given explicitly instead. A missing file raises a `CheckpointError` that names it, lists every place
it was looked for, and says how to get it.

The face resolution cannot be read from the UNet: LatentSync 1.5 (trained at 256 px) and 1.6 (512 px) have the same
architecture and key names. `infer_resolution` therefore looks, in order, at a sidecar JSON next to the checkpoint
(``latentsync_unet.json``: ``{"resolution": 512}`` or ``{"version": "1.6"}``), then at the names of the file and its
folders (``LatentSync-1.6``, ``unet_v1.5``, ``latentsync_512.pt`` ...; the Hugging Face cache keeps the repository
name in the path), and otherwise assumes 256, which runs either checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..audio.whisper import WhisperFeatureExtractor, load_whisper
from ..errors import CheckpointError
from ..models.vae import DiffusersVAE, load_vae

if TYPE_CHECKING:  # annotations only: the UNet module imports diffusers (`load_models` imports it)
    from ..models.unet import UNet3DConditionModel

logger = logging.getLogger(__name__)

UNET_FILE_NAMES = ("latentsync_unet.pt", "latentsync_unet.safetensors")
WHISPER_FILE_NAMES = ("whisper/tiny.pt", "whisper/small.pt")
VAE_FOLDER_NAMES = ("sd-vae-ft-mse", "vae")
# The StableSyncNet of `python -m latentsync score` and of finding the speaker (``speaker="auto"``).
SYNCNET_FILE = "stable_syncnet.pt"
# Single-file VAEs in the models folder, e.g. vae-ft-mse-840000-ema-pruned.safetensors.
VAE_FILE_PATTERN = "*vae*.safetensors"
VAE_HUB_CACHE_FOLDER = "models--stabilityai--sd-vae-ft-mse"
# Resolution assumed when nothing names the checkpoint's version; it runs both 1.5 and 1.6 checkpoints.
DEFAULT_RESOLUTION = 256
VERSION_RESOLUTIONS = {"1.5": 256, "1.6": 512}
# UNet input channels: 4 noisy latents + 1 mask + 4 masked-face latents + 4 reference latents.
LATENTSYNC_IN_CHANNELS = 13

_DOWNLOAD_HINT = "`python -m latentsync download --version 1.6 --dest DIR` fetches it"
HOW_TO_GET = {
    "unet": (
        "It is latentsync_unet.pt of https://huggingface.co/ByteDance/LatentSync-1.6 (512 px) or "
        f"https://huggingface.co/ByteDance/LatentSync-1.5 (256 px); {_DOWNLOAD_HINT}."
    ),
    "whisper": (
        f"It is whisper/tiny.pt of https://huggingface.co/ByteDance/LatentSync-1.6 (keep the whisper/ folder); "
        f"{_DOWNLOAD_HINT}."
    ),
    "vae": (
        "It is the diffusers folder of https://huggingface.co/stabilityai/sd-vae-ft-mse (config.json + "
        "diffusion_pytorch_model.safetensors) saved as DIR/sd-vae-ft-mse, or one VAE .safetensors file such as "
        f"vae-ft-mse-840000-ema-pruned.safetensors given with --vae; {_DOWNLOAD_HINT}."
    ),
}
# A version in a file or folder name: "LatentSync-1.6", "unet_v1.5.pt", "latentsync_1_6" (not "1.5.2").
_VERSION_PATTERN = re.compile(r"(?:^|[-_ .])v?1[._]([56])(?=$|[-_ ]|\.(?!\d))", re.IGNORECASE)
_RESOLUTION_PATTERN = re.compile(r"(?:^|[-_ .])(256|512)(?:px)?(?=$|[-_ .])", re.IGNORECASE)


@dataclass(frozen=True)
class ModelFiles:
    """Paths of the three model files (the VAE may be a folder)."""

    unet: Path
    whisper: Path
    vae: Path


@dataclass
class LipSyncModels:
    """Loaded models, ready for `LipSyncPipeline`.

    Attributes:
        unet: the UNet on ``device`` in ``dtype``, eval mode.
        whisper: the Whisper feature extractor on ``device`` in float32.
        vae: the VAE as a `LatentCodec` on ``device`` in ``dtype``.
        files: where they came from.
        resolution: face resolution to run at, and ``resolution_reason`` saying how it was chosen.
    """

    unet: UNet3DConditionModel
    whisper: WhisperFeatureExtractor
    vae: DiffusersVAE
    files: ModelFiles
    resolution: int
    resolution_reason: str


def _missing(role: str, looked_in: list[Path]) -> str:
    places = "\n".join(f"    {place}" for place in looked_in)
    return f"The {role} model was not found. Looked for:\n{places}\n  {HOW_TO_GET[role]}"


def _hub_cache_dirs() -> list[Path]:
    """Hugging Face hub cache folders, where ``from_pretrained`` downloads of the reference put the VAE."""
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return [home / "hub"]


def _vae_candidates(models_dir: Path | None) -> list[Path]:
    candidates = []
    if models_dir is not None:
        candidates += [models_dir / name for name in VAE_FOLDER_NAMES]
        candidates += sorted(models_dir.glob(VAE_FILE_PATTERN)) or [models_dir / VAE_FILE_PATTERN]
    for cache in _hub_cache_dirs():
        snapshots = cache / VAE_HUB_CACHE_FOLDER / "snapshots"
        candidates += sorted(snapshots.glob("*")) or [snapshots / "*"]
    return candidates


def _is_vae(path: Path) -> bool:
    return (path / "config.json").is_file() if path.is_dir() else path.is_file()


def _explicit(role: str, path: os.PathLike | str) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"The {role} model {path} does not exist. {HOW_TO_GET[role]}")
    return path


def find_model_files(
    models_dir: os.PathLike | str | None = None,
    unet: os.PathLike | str | None = None,
    whisper: os.PathLike | str | None = None,
    vae: os.PathLike | str | None = None,
) -> ModelFiles:
    """Locate the model files: explicit paths win, the rest are looked up in ``models_dir`` (and the VAE also in the
    Hugging Face cache).

    Raises:
        CheckpointError: listing every missing model, where it was looked for and how to get it.
    """
    models_dir = Path(models_dir) if models_dir is not None else None
    found: dict[str, Path] = {}
    problems = []
    searches = {
        "unet": (unet, [models_dir / name for name in UNET_FILE_NAMES] if models_dir else [], Path.is_file),
        "whisper": (whisper, [models_dir / name for name in WHISPER_FILE_NAMES] if models_dir else [], Path.is_file),
        "vae": (vae, _vae_candidates(models_dir), _is_vae),
    }
    for role, (explicit, candidates, usable) in searches.items():
        if explicit is not None:
            found[role] = _explicit(role, explicit)
            continue
        match = next((candidate for candidate in candidates if usable(candidate)), None)
        if match is None:
            where = candidates or [Path(f"(no models folder given: pass --models-dir or --{role})")]
            problems.append(_missing(role, where))
        else:
            found[role] = match
    if problems:
        raise CheckpointError("\n".join(problems))
    return ModelFiles(**found)


def _sidecar_resolution(unet_path: Path) -> tuple[int, str] | None:
    sidecar = unet_path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{sidecar} is not readable JSON ({error}); fix or delete it.") from error
    if not isinstance(info, dict):
        info = json.dumps(info)
        raise CheckpointError(
            f'{sidecar} must hold a JSON object such as {{"version": "1.6"}} or {{"resolution": 512}}, got {info}; '
            "fix or delete it."
        )
    if info.get("resolution") in VERSION_RESOLUTIONS.values():
        return int(info["resolution"]), f"{sidecar} says resolution {info['resolution']}"
    if str(info.get("version")) in VERSION_RESOLUTIONS:
        version = str(info["version"])
        return VERSION_RESOLUTIONS[version], f"{sidecar} says LatentSync {version}"
    raise CheckpointError(
        f'{sidecar} must hold {{"resolution": 256 or 512}} or {{"version": "1.5" or "1.6"}}, got {info}.'
    )


def infer_resolution(unet_path: os.PathLike | str) -> tuple[int, str]:
    """The face resolution a UNet checkpoint was trained at, and why (see the module docstring for the rule).

    Returns:
        ``(resolution, reason)``; ``reason`` is a sentence for the log.
    """
    path = Path(unet_path).absolute()
    sidecar = _sidecar_resolution(path)
    if sidecar is not None:
        return sidecar
    for name in (path.name, *(parent.name for parent in path.parents)):
        version = _VERSION_PATTERN.search(name)
        if version is not None:
            release = f"1.{version.group(1)}"
            return VERSION_RESOLUTIONS[release], f"the path names LatentSync {release} ({name!r})"
        resolution = _RESOLUTION_PATTERN.search(name)
        if resolution is not None:
            return int(resolution.group(1)), f"the path names {resolution.group(1)} px ({name!r})"
    return DEFAULT_RESOLUTION, (
        f"nothing in {path} names a version, so {DEFAULT_RESOLUTION} px (LatentSync 1.5) is assumed; "
        "set the resolution to 512 for a LatentSync 1.6 checkpoint"
    )


def _check_compatible(unet: UNet3DConditionModel, whisper: WhisperFeatureExtractor, files: ModelFiles) -> None:
    if unet.config.in_channels != LATENTSYNC_IN_CHANNELS or not unet.config.add_audio_layer:
        raise CheckpointError(
            f"{files.unet} is a UNet with {unet.config.in_channels} input channels and "
            f"add_audio_layer={unet.config.add_audio_layer}; lip sync needs a LatentSync stage-2 UNet "
            f"({LATENTSYNC_IN_CHANNELS} channels, audio layers). {HOW_TO_GET['unet']}"
        )
    if whisper.hidden_size != unet.config.cross_attention_dim:
        raise CheckpointError(
            f"The Whisper model {files.whisper} gives {whisper.hidden_size}-wide features but the UNet {files.unet} "
            f"attends to {unet.config.cross_attention_dim}-wide audio. LatentSync 1.5/1.6 pair with whisper/tiny.pt "
            "(384); a 768-wide UNet pairs with whisper/small.pt."
        )


def load_models(
    models_dir: os.PathLike | str | None = None,
    *,
    unet: os.PathLike | str | None = None,
    whisper: os.PathLike | str | None = None,
    vae: os.PathLike | str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    resolution: int | None = None,
) -> LipSyncModels:
    """Find (see `find_model_files`), load strictly and cross-check the three models.

    Args:
        models_dir: folder in the official layout; explicit ``unet`` / ``whisper`` / ``vae`` paths override it.
        device: where the models run.
        dtype: precision of the UNet and the VAE (Whisper stays float32; it is small and its features are cast).
        resolution: face resolution; ``None`` asks `infer_resolution`.

    Raises:
        CheckpointError: a missing, unreadable or mismatched file (which one, where, how to get it).
    """
    files = find_model_files(models_dir, unet, whisper, vae)
    if resolution is None:
        resolution, reason = infer_resolution(files.unet)
    else:
        reason = "given explicitly"
    from ..models.unet_loading import load_unet

    unet_model = load_unet(files.unet, device=device, dtype=dtype)
    whisper_model = load_whisper(files.whisper, device=device)
    _check_compatible(unet_model, whisper_model, files)
    vae_model = DiffusersVAE(load_vae(files.vae, device=device, dtype=dtype))
    logger.info("models: UNet %s, Whisper %s, VAE %s", files.unet, files.whisper, files.vae)
    logger.info("face resolution %d: %s", resolution, reason)
    return LipSyncModels(unet_model, whisper_model, vae_model, files, resolution, reason)
