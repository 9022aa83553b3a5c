"""Datasets of the UNet and SyncNet training, over aligned 25 fps / 16 kHz clips.

Sampling follows the reference (`latentsync/data/unet_dataset.py`, `syncnet_dataset.py`):

* UNet: a clip of at least ``3 * num_frames`` frames; a target window of ``num_frames`` frames at a uniformly
  random start; a reference window from the same clip whose start is at least ``num_frames`` frames away (so the
  two windows never overlap); the mouth-masked target frames; the mel and Whisper chunks of the target window.
* SyncNet: a clip of at least ``2 * num_frames`` frames; with probability 1/2 the window that matches the audio
  (label 1), else a window at another start (label 0).

Unlike the reference, which draws a random clip whatever index it is asked for, item ``i`` of epoch ``e`` is
drawn from a generator seeded with ``(seed, e, i)``: the data order is the sampler's, and a resumed run sees the
same samples as an uninterrupted one. A clip that cannot be used (unreadable, too short, no audio) is reported
once and replaced by the next index.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from latentsync.audio import crop_mel_window, feature_window
from latentsync.errors import LatentSyncError

from .clips import AudioFeatureCache, count_frames, read_window_frames, to_pixels

logger = logging.getLogger(__name__)

# How many following indices a dataset tries before it gives up on a run of unusable clips.
MAX_CONSECUTIVE_BAD_CLIPS = 32


class _ClipDataset(Dataset):
    """Shared part: clip list, seeded per-item generators, skipping of unusable clips."""

    min_windows: int = 3

    def __init__(self, clips: list[Path], num_frames: int, resolution: int, seed: int, fps: int = 25):
        self.clips = list(clips)
        self.num_frames = num_frames
        self.resolution = resolution
        self.seed = seed
        self.fps = fps
        self.epoch = 0
        self._reported: set[Path] = set()

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Draw windows for ``epoch`` (called by the trainer before each epoch)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        for attempt in range(MAX_CONSECUTIVE_BAD_CLIPS):
            clip_index = (index + attempt) % len(self.clips)
            clip = self.clips[clip_index]
            generator = np.random.default_rng([self.seed, self.epoch, index, attempt])
            try:
                total = count_frames(clip, self.fps)
                if total < self.min_windows * self.num_frames:
                    raise LatentSyncError(
                        f"it has {total} frames, fewer than {self.min_windows} x {self.num_frames} needed"
                    )
                sample = self._sample(clip, total, generator)
            except (LatentSyncError, OSError, RuntimeError, ValueError) as error:
                if clip not in self._reported:
                    self._reported.add(clip)
                    logger.warning("Skipping training clip %s: %s", clip, error)
                continue
            sample["clip_index"] = clip_index
            return sample
        raise LatentSyncError(
            f"{MAX_CONSECUTIVE_BAD_CLIPS} clips in a row from index {index} could not be used; check the data "
            "(see the warnings above) or run `python -m train data prepare` on it."
        )

    def _sample(self, clip: Path, total: int, generator: np.random.Generator) -> dict:
        raise NotImplementedError


def reference_start(start: int, total: int, num_frames: int, generator: np.random.Generator) -> int:
    """A window start at least ``num_frames`` away from ``start`` (the reference's rule), uniformly among them."""
    candidates = [s for s in range(total - num_frames + 1) if abs(s - start) >= num_frames]
    return int(candidates[generator.integers(len(candidates))])


class UNetDataset(_ClipDataset):
    """Items for UNet training.

    Args:
        clips: aligned clips.
        num_frames: frames per window ``f``.
        resolution: face size ``R`` (frames of another size are resized).
        mask: ``(3, R, R)`` float mouth mask, 1 keeps a pixel.
        audio: the feature cache; None when neither Whisper features nor mels are needed.
        with_audio_embeds: return Whisper chunks (the UNet has audio cross-attention).
        with_mel: return the SyncNet mel window (the sync loss is on).
        seed: seed of the window draws.

    Items:
        ``gt_pixel_values``, ``masked_pixel_values``, ``ref_pixel_values`` ``(f, 3, R, R)`` in ``[-1, 1]``;
        ``masks`` ``(f, 1, R, R)``; ``audio_embeds`` ``(f, 50, d)``; ``mel`` ``(1, 80, ceil(f * 16 / 5))``;
        ``start`` (first frame of the target window), ``clip_index``.
    """

    min_windows = 3

    def __init__(
        self,
        clips: list[Path],
        num_frames: int,
        resolution: int,
        mask: torch.Tensor,
        audio: Optional[AudioFeatureCache],
        with_audio_embeds: bool,
        with_mel: bool,
        seed: int,
        fps: int = 25,
    ):
        super().__init__(clips, num_frames, resolution, seed, fps)
        if tuple(mask.shape) != (3, resolution, resolution):
            raise ValueError(f"mask must be (3, {resolution}, {resolution}), got {tuple(mask.shape)}")
        self.mask = mask.float()
        self.audio = audio
        self.with_audio_embeds = with_audio_embeds
        self.with_mel = with_mel

    def _sample(self, clip: Path, total: int, generator: np.random.Generator) -> dict:
        start = int(generator.integers(total - self.num_frames + 1))
        ref_start = reference_start(start, total, self.num_frames, generator)
        sample = {"start": start}
        if self.with_mel:
            sample["mel"] = crop_mel_window(self.audio.mel(clip), start, self.num_frames, self.fps).float()
        if self.with_audio_embeds:
            features = self.audio.whisper_features(clip)
            sample["audio_embeds"] = feature_window(features, start, self.num_frames, self.fps)
        gt_frames, ref_frames = read_window_frames(clip, [start, ref_start], self.num_frames, self.fps)
        gt_pixel_values = to_pixels(gt_frames, self.resolution)
        sample.update(
            gt_pixel_values=gt_pixel_values,
            masked_pixel_values=gt_pixel_values * self.mask,
            masks=self.mask[0:1].expand(self.num_frames, 1, -1, -1).clone(),
            ref_pixel_values=to_pixels(ref_frames, self.resolution),
        )
        return sample


class SyncNetDataset(_ClipDataset):
    """Items for SyncNet training.

    With ``windows_per_clip`` None (the reference): ``frames`` ``(f, 3, R, R)`` in ``[-1, 1]``, ``audio_samples``
    the mel window ``(1, 80, ceil(f * 16 / 5))`` of the true start, ``y`` ``(1,)`` 1 in sync / 0 shifted.
    With ``windows_per_clip`` k (`offset_contrastive_loss`): ``k`` windows of one clip at distinct random starts,
    each with its own mel: ``frames`` ``(k, f, 3, R, R)``, ``audio_samples`` ``(k, 1, 80, ceil(f * 16 / 5))``.

    ``augment`` varies each window's look (`augment_faces`), never its timing.
    """

    min_windows = 2

    def __init__(
        self,
        clips: list[Path],
        num_frames: int,
        resolution: int,
        audio: AudioFeatureCache,
        seed: int,
        windows_per_clip: Optional[int] = None,
        augment: bool = False,
    ):
        super().__init__(clips, num_frames, resolution, seed)
        self.audio = audio
        self.windows_per_clip = windows_per_clip
        self.augment = augment

    def _sample(self, clip: Path, total: int, generator: np.random.Generator) -> dict:
        num_starts = total - self.num_frames + 1
        mel = self.audio.mel(clip)
        if self.windows_per_clip is not None:
            if num_starts < self.windows_per_clip:
                raise LatentSyncError(f"it has {num_starts} window starts, fewer than {self.windows_per_clip}")
            starts = sorted(int(s) for s in generator.choice(num_starts, self.windows_per_clip, replace=False))
            return {
                "frames": torch.stack([self._pixels(window, generator)
                                       for window in read_window_frames(clip, starts, self.num_frames, self.fps)]),
                "audio_samples": torch.stack([crop_mel_window(mel, s, self.num_frames, self.fps) for s in starts]).float(),
            }  # fmt: skip
        start = int(generator.integers(num_starts))
        in_sync = bool(generator.integers(2))
        if in_sync:
            shown = start
        else:
            others = [s for s in range(num_starts) if s != start]
            shown = int(others[generator.integers(len(others))])
        (frames,) = read_window_frames(clip, [shown], self.num_frames, self.fps)
        return {
            "frames": self._pixels(frames, generator),
            "audio_samples": crop_mel_window(mel, start, self.num_frames, self.fps).float(),
            "y": torch.tensor([float(in_sync)]),
        }

    def _pixels(self, frames: np.ndarray, generator: np.random.Generator) -> torch.Tensor:
        pixels = to_pixels(frames, self.resolution)
        return augment_faces(pixels, generator) if self.augment else pixels


# Largest changes `augment_faces` makes: contrast and brightness (on [-1, 1] pixels), shift (share of the size).
AUGMENT_CONTRAST = 0.15
AUGMENT_BRIGHTNESS = 0.1
AUGMENT_SHIFT = 0.05


def augment_faces(pixels: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
    """One window's faces ``(f, 3, R, R)`` in ``[-1, 1]`` with one random contrast and brightness change, a
    horizontal flip half of the time and a shift of up to `AUGMENT_SHIFT` of the size (wrapping around), the same
    for every frame of the window."""
    contrast = 1.0 + AUGMENT_CONTRAST * (2.0 * generator.random() - 1.0)
    brightness = AUGMENT_BRIGHTNESS * (2.0 * generator.random() - 1.0)
    pixels = pixels * contrast + brightness
    if generator.random() < 0.5:
        pixels = pixels.flip(-1)
    limit = round(AUGMENT_SHIFT * pixels.shape[-1])
    dy, dx = (int(d) for d in generator.integers(-limit, limit + 1, size=2))
    return torch.roll(pixels, (dy, dx), (-2, -1)).clamp(-1.0, 1.0)
