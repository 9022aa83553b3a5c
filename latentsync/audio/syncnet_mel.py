"""The mel spectrogram SyncNet sees (Wav2Lip's ``melspectrogram``, ``configs/audio.yaml``), and its per-clip crop.

80 columns per second (hop 200 at 16 kHz); a clip of 16 video frames at 25 fps covers 52 columns. Computed in
float64 (fixture README §5):

    y = pre-emphasis(x)                                   y[n] = x[n] - 0.97 x[n-1]
    M = mel_basis @ |STFT(y)|                             n_fft 800, hop 200, Hann 800, zero-padded, centred
    S = 20 log10(max(1e-5, M)) - 20                       dB relative to ref_level_db
    out = clip(8 (S + 100) / 100 - 4, -4, 4)              symmetric normalisation to [-max_abs, max_abs]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

import numpy as np
import torch

from ..conventions import MODEL_SAMPLE_RATE
from ..errors import ConfigError, MediaError
from ..media.timeline import parse_fps
from .mel import as_waveform, mel_filterbank, stft

# the crop rule counts 80 mel columns per second whatever the hparams (as the reference datasets do)
MEL_COLUMNS_PER_SECOND = 80


@dataclass(frozen=True)
class AudioHParams:
    """The ``audio:`` section of the reference ``configs/audio.yaml``.

    ``rescale`` / ``rescaling_max`` are carried for completeness; `syncnet_melspectrogram` does not apply them
    (neither does the reference). ``use_lws`` must stay false.
    """

    num_mels: int = 80
    rescale: bool = True
    rescaling_max: float = 0.9
    use_lws: bool = False
    n_fft: int = 800
    hop_size: int | None = 200
    win_size: int = 800
    sample_rate: int = MODEL_SAMPLE_RATE
    frame_shift_ms: float | None = None
    signal_normalization: bool = True
    allow_clipping_in_normalization: bool = True
    symmetric_mels: bool = True
    max_abs_value: float = 4.0
    preemphasize: bool = True
    preemphasis: float = 0.97
    min_level_db: float = -100
    ref_level_db: float = 20
    fmin: float = 55
    fmax: float = 7600

    @classmethod
    def from_dict(cls, values: Mapping) -> "AudioHParams":
        """From the ``audio:`` mapping of an ``audio.yaml``; unknown keys are an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown audio hparams {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def hop_length(self) -> int:
        """STFT hop in samples (``hop_size``, or ``frame_shift_ms`` converted when ``hop_size`` is null)."""
        if self.hop_size is not None:
            return self.hop_size
        if self.frame_shift_ms is None:
            raise ConfigError("audio hparams need hop_size or frame_shift_ms")
        return int(self.frame_shift_ms / 1000 * self.sample_rate)


def _normalize(decibels: np.ndarray, hparams: AudioHParams) -> np.ndarray:
    """Map ``[min_level_db, 0]`` dB to ``[-max_abs, max_abs]`` (symmetric) or ``[0, max_abs]``."""
    unit = (decibels - hparams.min_level_db) / (-hparams.min_level_db)
    if hparams.symmetric_mels:
        low, scaled = -hparams.max_abs_value, (2 * hparams.max_abs_value) * unit - hparams.max_abs_value
    else:
        low, scaled = 0.0, hparams.max_abs_value * unit
    if hparams.allow_clipping_in_normalization:
        return np.clip(scaled, low, hparams.max_abs_value)
    return scaled


def syncnet_melspectrogram(waveform: np.ndarray | torch.Tensor, hparams: AudioHParams = AudioHParams()) -> np.ndarray:
    """SyncNet's normalised mel spectrogram of a whole waveform.

    Args:
        waveform: mono samples ``(num_samples,)`` at ``hparams.sample_rate``, full scale +-1 (int16 / 32768).
        hparams: `AudioHParams` (defaults = ``configs/audio.yaml``).

    Returns:
        float64 array ``(num_mels, 1 + num_samples // hop)``.
    """
    if hparams.use_lws:
        raise ConfigError("use_lws is not supported (the official configs keep it false)")
    samples = as_waveform(waveform, torch.float64).numpy()

    # 1. pre-emphasis, in float64
    if hparams.preemphasize:
        samples = np.concatenate([samples[:1], samples[1:] - hparams.preemphasis * samples[:-1]])

    # 2. magnitude STFT, zero-padded and centred (librosa >= 0.10)
    spectrum = stft(torch.from_numpy(samples), hparams.n_fft, hparams.hop_length, hparams.win_size, pad_mode="constant")
    magnitude = spectrum.abs().numpy()

    # 3. mel (the float32 basis, as librosa returns it), decibels, normalisation
    basis = mel_filterbank(hparams.sample_rate, hparams.n_fft, hparams.num_mels, hparams.fmin, hparams.fmax)
    min_level = np.exp(hparams.min_level_db / 20 * np.log(10))
    decibels = 20 * np.log10(np.maximum(min_level, basis @ magnitude)) - hparams.ref_level_db
    return _normalize(decibels, hparams) if hparams.signal_normalization else decibels


def mel_window_length(num_frames: int = 16, fps: float | Fraction = 25) -> int:
    """Mel columns covering ``num_frames`` video frames: ``ceil(num_frames * 80 / fps)`` (52 for 16 at 25 fps)."""
    return math.ceil(Fraction(num_frames * MEL_COLUMNS_PER_SECOND) / parse_fps(fps))


def crop_mel_window(mel, start_frame: int, num_frames: int = 16, fps: float | Fraction = 25):
    """The mel columns of video frames ``start_frame .. start_frame + num_frames - 1`` (the datasets' crop rule).

    Columns ``[s, s + mel_window_length)`` with ``s = floor(80 * start_frame / fps)``.

    Args:
        mel: ``(num_mels, T)`` from `syncnet_melspectrogram` (numpy array or tensor).

    Returns:
        ``(1, num_mels, mel_window_length)``, same kind and dtype as ``mel``.

    Raises:
        MediaError: the audio ends before the window does (the reference datasets skip such clips).
    """
    if start_frame < 0:
        raise MediaError(f"start_frame must be >= 0, got {start_frame}")
    start = math.floor(Fraction(MEL_COLUMNS_PER_SECOND * start_frame) / parse_fps(fps))
    end = start + mel_window_length(num_frames, fps)
    if end > mel.shape[-1]:
        raise MediaError(
            f"the audio is too short for video frames {start_frame}..{start_frame + num_frames - 1}: they need mel "
            f"columns {start}..{end - 1} but the spectrogram has {mel.shape[-1]} "
            f"({mel.shape[-1] / MEL_COLUMNS_PER_SECOND:.2f} s)"
        )
    return mel[None, :, start:end]
