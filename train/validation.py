"""Validation during UNet training, by lip sync on held-out clips, as LatentSync's authors advise (judge a
checkpoint by sync, not by the loss curve).

Every ``validation.every_n_steps`` (default: at every checkpoint), once that step's checkpoint is saved, the main
process

1. logs the training losses' decoded frames next to the real ones to TensorBoard (stage 2);
2. renders each validation clip whole with the inference pipeline (`LipSyncPipeline`: face detection,
   alignment, windows, paste-back) into ``val/step_<N>/``, with the clip's own audio;
3. scores each rendered clip with the sync score (`latentsync.score`: confidence, min distance, best offset) of
   the SyncNet ``validation.syncnet`` (default: ``model.syncnet``, the sync loss's) of ``validation.syncnet_config``;
4. logs the means over the clips to TensorBoard (``val/sync_confidence``, ``val/sync_min_distance``,
   ``val/sync_abs_offset``), appends one row per clip to ``val/sync_scores.csv``, and, when the mean confidence is
   the best so far, exports that checkpoint's model to ``export/best/`` with ``export/best/sync.json``.

Validation clips: ``data.val_video_path`` (with ``data.val_audio_path``) when given; else the clips of
``data.val_fileslist``; else the ``val_fileslist.txt`` that ``python -m train data prepare`` writes beside
``data.train_fileslist``; at most ``validation.max_clips`` of them. They are checked when the run starts (before any
training step), and so is the SyncNet. A validation that fails later logs the error and training goes on: the
checkpoint of that step is already on disk.

Under ZeRO-3 the weights are partitioned over processes, so rendering is skipped there (losses are still logged).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latentsync.errors import ConfigError, LatentSyncError
from latentsync.face.align import SUPPORTED_RESOLUTIONS

from .config import Config
from .data.clips import list_clips

logger = logging.getLogger("train")

IMAGES_LOGGED = 4
SCORES_FILE = "sync_scores.csv"
SCORE_COLUMNS = ("step", "clip", "confidence", "min_distance", "best_offset")


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``(n, 3, h, w)`` in ``[-1, 1]`` -> ``(n, h, w, 3)`` uint8."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def validation_clips(config: Config) -> list[tuple[Path, Path | None]]:
    """``(video, audio or None)`` of each validation clip (see the module docstring); [] when there is none.

    Raises:
        ConfigError: a named clip, audio file or list that does not exist.
    """
    data, limit = config["data"], config["validation"]["max_clips"]
    if data["val_video_path"]:
        video = Path(data["val_video_path"])
        audio = Path(data["val_audio_path"]) if data["val_audio_path"] else None
        clips = [(video, audio)]
    else:
        fileslist = data["val_fileslist"]
        beside = Path(data["train_fileslist"]).with_name("val_fileslist.txt") if data["train_fileslist"] else None
        if not fileslist and beside is not None and beside.is_file() and beside.read_text().strip():
            fileslist = str(beside)
        if not fileslist and not data["val_data_dir"]:
            return []
        clips = [(clip, None) for clip in list_clips(fileslist, data["val_data_dir"])[:limit]]
    for video, audio in clips:
        for path, key in ((video, "validation clip"), (audio, "data.val_audio_path")):
            if path is not None and not path.is_file():
                raise ConfigError(f"The {key} {path} does not exist; fix the path (it is checked before training starts).")
    return clips


class Validator:
    """Renders and sync-scores the validation clips; checked at construction (see the module docstring).

    Args:
        export_best: ``export_best(step, folder)`` exports the model of checkpoint ``step`` into ``folder``.
    """

    def __init__(self, config: Config, output_dir: Path, frozen, accelerator, export_best: Callable[[int, Path], None]):
        self.config = config
        self.validation = config["validation"]
        every = self.validation["every_n_steps"]
        self.every = config["ckpt"]["save_ckpt_steps"] if every == 0 else every
        self.folder = output_dir / "val"
        self.best_folder = output_dir / "export" / "best"
        self.frozen = frozen
        self.accelerator = accelerator
        self.export_best = export_best
        self.clips = validation_clips(config) if self.every > 0 else []
        self.syncnet = self._load_syncnet() if self.clips else None
        self.best_confidence = self._best_so_far()
        if self.every > 0 and not self.clips:
            logger.info("No validation clips (data.val_video_path, data.val_fileslist): validation logs images only.")

    def _load_syncnet(self):
        from latentsync.models.syncnet_loading import load_syncnet

        path = self.validation["syncnet"] or self.config["model"]["syncnet"]
        if not path:
            raise ConfigError("Validation by sync needs a SyncNet: set validation.syncnet (or model.syncnet).")
        syncnet_config = self.validation["syncnet_config"] or self.config["model"]["syncnet_config"]
        return load_syncnet(path, config=syncnet_config, device=self.accelerator.device)

    def _best_so_far(self) -> float:
        record = self.best_folder / "sync.json"
        return json.loads(record.read_text())["confidence"] if record.is_file() else float("-inf")

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def run(self, unet: torch.nn.Module, terms: dict, step: int) -> dict[str, float]:
        """Validate at ``step``; returns the numbers to log (none on other processes or when it fails)."""
        from .runtime import is_deepspeed

        accelerator = self.accelerator
        if not accelerator.is_main_process:
            return {}
        self._log_images(terms, step)
        deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config if is_deepspeed(accelerator) else {}
        if deepspeed_config.get("zero_optimization", {}).get("stage") == 3:
            logger.info("Validation videos skipped under ZeRO-3 (weights are partitioned).")
            return {}
        if not self.clips:
            return {}
        was_training = unet.training
        unet.eval()
        try:
            return self._validate(unet, step)
        except (LatentSyncError, OSError, RuntimeError) as error:
            logger.error("Validation at step %d failed (the checkpoint is saved; training goes on): %s", step, error)
            return {}
        finally:
            unet.train(was_training)

    def _validate(self, unet, step: int) -> dict[str, float]:
        from latentsync.face.detectors import create_face_detector
        from latentsync.score import score_video

        pipeline = self._pipeline(unet)
        detector = create_face_detector()
        folder = self.folder / f"step_{step}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for index, (video, audio) in enumerate(self.clips):
            output = folder / f"{index:02d}_{video.stem}.mp4"
            pipeline.run(video, audio, output)
            score = score_video(output, self.syncnet, detector)
            rows.append({"step": step, "clip": str(video), "confidence": score.confidence,
                         "min_distance": score.min_distance, "best_offset": score.best_offset})  # fmt: skip
        self._append_rows(rows)
        logs = {
            "val/sync_confidence": float(np.mean([row["confidence"] for row in rows])),
            "val/sync_min_distance": float(np.mean([row["min_distance"] for row in rows])),
            "val/sync_abs_offset": float(np.mean([abs(row["best_offset"]) for row in rows])),
        }
        logger.info("Validation at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))
        if logs["val/sync_confidence"] > self.best_confidence:
            self.best_confidence = logs["val/sync_confidence"]
            self.export_best(step, self.best_folder)
            record = {"step": step, "confidence": self.best_confidence, "clips": rows}
            (self.best_folder / "sync.json").write_text(json.dumps(record, indent=2) + "\n")
            logger.info("Best sync so far: step %d exported to %s", step, self.best_folder)
        return logs

    def _pipeline(self, unet):
        from latentsync.audio import load_whisper
        from latentsync.models.vae import DiffusersVAE
        from latentsync.pipeline.lipsync import LipSyncPipeline
        from latentsync.pipeline.settings import LipSyncSettings

        data = self.config["data"]
        # the aligner works at 256 or 512; a model trained on smaller faces is rendered at 256
        resolution = data["resolution"] if data["resolution"] in SUPPORTED_RESOLUTIONS else SUPPORTED_RESOLUTIONS[0]
        settings = LipSyncSettings(
            resolution=resolution,
            num_inference_steps=self.validation["inference_steps"],
            guidance_scale=self.validation["guidance_scale"],
            num_frames=data["num_frames"],
            seed=self.config["run"]["seed"],
        )
        whisper = load_whisper(self.config["model"]["whisper"], device=self.accelerator.device)
        return LipSyncPipeline(unet, whisper, DiffusersVAE(self.frozen.vae), settings=settings)

    def _append_rows(self, rows: list[dict]) -> None:
        path = self.folder / SCORES_FILE
        new = not path.is_file()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SCORE_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def _log_images(self, terms: dict, step: int) -> None:
        if "pred_pixels" not in terms or not self.config["run"]["report_to"]:
            return
        tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        pairs = torch.cat([terms["gt_pixels"][:IMAGES_LOGGED], terms["pred_pixels"][:IMAGES_LOGGED]], dim=-1)
        tracker.add_images("train/real_vs_one_step", _to_uint8(pairs), step, dataformats="NHWC")
