"""Training clips on disk: listing them, reading frame windows, and the cached audio features of each clip.

A training clip is what `python -m train data prepare` writes: an aligned ``R x R`` face video at 25 fps with a
16 kHz audio track, 5-10 s long. Its Whisper features and SyncNet mel are computed once and cached as
``.safetensors`` files keyed by the clip's path, size and modification time (and by the Whisper checkpoint), so
changing a clip or the Whisper model never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from latentsync.conventions import MODEL_SAMPLE_RATE, signed_pixels
from latentsync.errors import ConfigError, MediaError
from latentsync.face.align import resize_faces
from latentsync.files import atomic_write

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4",)


def list_clips(fileslist: str = "", data_dir: str = "") -> list[Path]:
    """Clip paths from a file list (one path per line, relative to the list's folder if not absolute) or from all
    ``.mp4`` files under ``data_dir`` (sorted, recursive).

    Raises:
        ConfigError: neither is given, the list or folder is missing, or they name no clip.
    """
    if fileslist:
        list_path = Path(fileslist)
        if not list_path.is_file():
            raise ConfigError(f"File list not found: {list_path}.")
        lines = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
        clips = [path if path.is_absolute() else list_path.parent / path for path in map(Path, lines)]
        source = str(list_path)
    elif data_dir:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise ConfigError(f"Data folder not found: {folder}.")
        clips = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        source = str(folder)
    else:
        raise ConfigError("No training data: set data.train_fileslist or data.train_data_dir (`python -m train data prepare` writes both).")
    if not clips:
        raise ConfigError(f"{source} names no clips.")
    return clips


def file_fingerprint(path: Path, extra: str = "") -> str:
    """A short hash of a file's resolved path, size and modification time (plus ``extra``)."""
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{extra}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_window_frames(path: Path, starts: list[int], num_frames: int, fps: int = 25) -> list[np.ndarray]:
    """Decode the windows ``[s, s + num_frames)`` of a clip, one per start ``s``, in one pass.

    Returns:
        One ``(num_frames, h, w, 3)`` uint8 array per start.

    Raises:
        MediaError: unreadable clip, or a window past its end.
    """
    from latentsync.media import VideoReader

    wanted = {index for start in starts for index in range(start, start + num_frames)}
    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    with VideoReader(path) as reader:
        for index, (_, rgb) in enumerate(reader.frames_at_fps(fps)):
            if index in wanted:
                frames[index] = rgb
            if index >= last:
                break
    if len(frames) != len(wanted):
        raise MediaError(f"{path} ends before frame {last}; it has {len(frames)} of the {len(wanted)} needed frames.")
    return [np.stack([frames[i] for i in range(start, start + num_frames)]) for start in starts]


def count_frames(path: Path, fps: int = 25) -> int:
    """Frames of ``path`` at ``fps`` (from packet timestamps, without decoding)."""
    from latentsync.media import VideoReader

    with VideoReader(path) as reader:
        return reader.num_frames_at_fps(fps)


def to_pixels(frames: np.ndarray, resolution: int) -> torch.Tensor:
    """``(f, h, w, 3)`` uint8 -> ``(f, 3, R, R)`` float32 in ``[-1, 1]``; resized (bicubic, antialiased) if needed."""
    pixels = resize_faces(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), resolution)
    return signed_pixels(pixels)


class AudioFeatureCache:
    """Whisper features and SyncNet mels of clips, computed on first use and cached on disk.

    Each worker loads the Whisper model lazily (on CPU) the first time a clip misses the cache; run
    ``python -m train data prepare`` (its ``features`` step) to fill the cache ahead of training on the GPU.

    Args:
        cache_dir: folder of the cache (created).
        whisper_path: Whisper checkpoint, or None when no features are needed.
        sample_rate: audio rate the models expect (16 kHz).
    """

    def __init__(self, cache_dir: str | os.PathLike, whisper_path: Optional[str] = None, sample_rate: int = MODEL_SAMPLE_RATE):
        self.cache_dir = Path(cache_dir)
        self.whisper_path = whisper_path
        self.sample_rate = sample_rate
        self._whisper = None
        whisper_key = file_fingerprint(Path(whisper_path))[:8] if whisper_path else "none"
        self.whisper_dir = self.cache_dir / f"whisper-{whisper_key}"
        self.mel_dir = self.cache_dir / "mel"

    def __getstate__(self) -> dict:
        # Workers load their own copy of the model.
        return {**self.__dict__, "_whisper": None}

    def _load(self, path: Path) -> Optional[torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            return None
        try:
            return load_file(str(path))["value"]
        except (SafetensorError, OSError, KeyError) as error:
            logger.warning("Ignoring the unreadable cache file %s (%s); recomputing it.", path, error)
            return None

    @staticmethod
    def _store(path: Path, value: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as temporary:
            save_file({"value": value.contiguous()}, str(temporary))

    def _audio(self, clip: Path) -> np.ndarray:
        from latentsync.media import load_audio

        return load_audio(clip, self.sample_rate)

    def whisper_features(self, clip: Path) -> torch.Tensor:
        """``(n, L, d)`` float32 Whisper features of the clip's audio."""
        if self.whisper_path is None:
            raise ConfigError("No Whisper checkpoint was given (model.whisper).")
        path = self.whisper_dir / f"{clip.stem}-{file_fingerprint(clip)}.safetensors"
        features = self._load(path)
        if features is None:
            if self._whisper is None:
                from latentsync.audio import load_whisper

                self._whisper = load_whisper(self.whisper_path)
            features = self._whisper.encode(self._audio(clip))
            self._store(path, features)
        return features

    def mel(self, clip: Path) -> torch.Tensor:
        """``(80, T)`` float32 SyncNet mel spectrogram of the clip's audio (80 columns per second)."""
        path = self.mel_dir / f"{clip.stem}-{file_fingerprint(clip)}.safetensors"
        mel = self._load(path)
        if mel is None:
            from latentsync.audio import syncnet_melspectrogram

            mel = torch.from_numpy(syncnet_melspectrogram(self._audio(clip))).float()
            self._store(path, mel)
        return mel
