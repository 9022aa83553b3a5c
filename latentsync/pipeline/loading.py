"""From model paths and settings to a ready `LipSyncPipeline`: the one way ``python -m latentsync lipsync`` and every
row of ``python -m latentsync batch`` get their pipeline.

    sources = ModelSources(models_dir="checkpoints")
    pipeline = load_pipeline(sources, LipSyncSettings(num_inference_steps=20))
    pipeline.run("talk.mp4", "speech.wav", "out.mp4")

A batch worker passes ``cache=latentsync.parallel.worker_cache``: the face detector and the models are then loaded
once per worker and shared by every row that asks for the same ones; only the (cheap) pipeline object is new per row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError
from ..face.detectors import FaceDetector, FaceFilter, create_face_detector
from ..models.lora import load_lora_into
from ..models.syncnet_loading import load_syncnet
from .lipsync import LipSyncPipeline
from .models import SYNCNET_FILE, LipSyncModels, load_models
from .settings import LipSyncSettings, resolve_device, resolve_dtype
from .speed import EXACT, SpeedSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")
Cache = Callable[[str, Callable[[], T]], T]
"""``cache(name, build)``: ``build()`` once per ``name``, e.g. `latentsync.parallel.worker_cache`."""


def _no_cache(name: str, build: Callable[[], T]) -> T:
    return build()


@dataclass(frozen=True)
class ModelSources:
    """Where the models of a run come from (the ``--models-dir``, ``--unet``, ``--whisper``, ``--vae``,
    ``--syncnet`` and ``--detector-models`` options); explicit files override the models folder
    (`find_model_files`)."""

    models_dir: str | os.PathLike | None = None
    unet: str | os.PathLike | None = None
    whisper: str | os.PathLike | None = None
    vae: str | os.PathLike | None = None
    syncnet: str | os.PathLike | None = None
    detector_models: str | os.PathLike | None = None
    # LoRAs merged into the UNet, in order: (file or peft folder, strength)
    loras: tuple[tuple[str | os.PathLike, float], ...] = ()

    def syncnet_file(self) -> Path | None:
        """The StableSyncNet that ``speaker="auto"`` finds the speaker with: ``syncnet``, else `SYNCNET_FILE` in
        the models folder when it is there, else None (auto is then the largest face)."""
        if self.syncnet is not None:
            return Path(self.syncnet)
        default = Path(self.models_dir or ".") / SYNCNET_FILE
        return default if default.is_file() else None


def load_detector(sources: ModelSources, settings: LipSyncSettings) -> FaceDetector:
    """The face detector of ``settings`` (faces from ``min_face_size`` pixels tall), its model files from
    ``sources.detector_models``.

    Raises:
        ConfigError: InsightFace without its model folder, or an unknown detector.
    """
    options: dict[str, Any] = {"model_dir": sources.detector_models} if sources.detector_models else {}
    if settings.face_detector == "insightface" and not options:
        raise ConfigError(
            "--face-detector insightface needs --detector-models DIR: InsightFace's buffalo_l folder with det_10g.onnx "
            "and 2d106det.onnx (e.g. ComfyUI/models/insightface/models/buffalo_l)."
        )
    face_filter = FaceFilter.for_min_height(settings.min_face_size)
    return create_face_detector(settings.face_detector, face_filter=face_filter, **options)


def load_pipeline(
    sources: ModelSources,
    settings: LipSyncSettings,
    speed: SpeedSettings = EXACT,
    cache: Cache = _no_cache,
) -> LipSyncPipeline:
    """The face detector, then the models (on ``settings.device`` in ``settings.dtype``; the SyncNet only for
    ``speaker="auto"``), then the pipeline.

    Args:
        cache: keeps the detector and the models between calls (`latentsync.parallel.worker_cache` in a batch);
            by default both are loaded on every call.

    Raises:
        ConfigError: a bad device or detector setting.
        CheckpointError: a missing, unreadable or mismatched model file.
    """
    detector_key = f"detector {settings.face_detector} {settings.min_face_size} {sources.detector_models}"
    detector = cache(detector_key, lambda: load_detector(sources, settings))
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)

    def load() -> LipSyncModels:
        models = load_models(
            sources.models_dir,
            unet=sources.unet,
            whisper=sources.whisper,
            vae=sources.vae,
            device=device,
            dtype=dtype,
            resolution=settings.resolution,
        )
        for path, strength in sources.loras:
            load_lora_into(models.unet, path, strength)
            logger.info("LoRA %s merged at strength %g", path, strength)
        return models

    models = cache(f"models {sources} {device} {dtype} {settings.resolution}", load)
    syncnet_file = sources.syncnet_file() if settings.speaker == "auto" else None
    syncnet = None
    if syncnet_file is not None:
        syncnet = cache(f"syncnet {syncnet_file} {device}", lambda: load_syncnet(syncnet_file, device=device))
    return LipSyncPipeline(
        models.unet, models.whisper, models.vae, detector, settings.replace(resolution=models.resolution), speed,
        syncnet,
    )  # fmt: skip
