"""Signal processing shared by both audio features: waveform checks, the STFT and the Slaney mel filterbank.

The Whisper log-mel (`latentsync.audio.whisper`) and the SyncNet mel (`latentsync.audio.syncnet_mel`) differ in
window size, padding and scaling, but both go through `stft` and `mel_filterbank` here. The filterbank equals
``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` with its defaults (Slaney mel scale, Slaney area
normalisation), which is what the reference code uses, so librosa is not needed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import MediaError

# Slaney's auditory mel scale: linear up to 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per octave * ln 6.4).
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Frequencies in Hz to Slaney mels (float64, same shape)."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    linear = frequencies / _SLANEY_HZ_PER_MEL
    with np.errstate(divide="ignore"):
        logarithmic = _SLANEY_LOG_START_MEL + np.log(frequencies / _SLANEY_LOG_START_HZ) / _SLANEY_LOG_STEP
    return np.where(frequencies >= _SLANEY_LOG_START_HZ, logarithmic, linear)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Slaney mels to frequencies in Hz (float64, same shape)."""
    mels = np.asarray(mels, dtype=np.float64)
    linear = mels * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * (mels - _SLANEY_LOG_START_MEL))
    return np.where(mels >= _SLANEY_LOG_START_MEL, logarithmic, linear)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular Slaney mel filters with area normalisation, as ``librosa.filters.mel`` builds them.

    Filter ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2``, where the ``n_mels + 2``
    points are spaced evenly on the mel scale between ``fmin`` and ``fmax``; it is then scaled by
    ``2 / (f[m + 2] - f[m])`` so every filter has the same area.

    Args:
        sample_rate: in Hz.
        n_fft: FFT size; the filters act on its ``n_fft // 2 + 1`` one-sided bins.
        n_mels: number of filters.
        fmin, fmax: lowest and highest frequency in Hz (``fmax`` defaults to ``sample_rate / 2``).

    Returns:
        float32 array of shape ``(n_mels, n_fft // 2 + 1)``.
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(
            f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}, sample_rate={sample_rate}"
        )
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_points_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))

    # distances (Hz) of every bin from every mel point: (n_mels + 2, bins)
    point_to_bin = mel_points_hz[:, None] - bin_hz[None, :]
    point_spacing = np.diff(mel_points_hz)
    rising = -point_to_bin[:-2] / point_spacing[:-1, None]
    falling = point_to_bin[2:] / point_spacing[1:, None]
    # librosa rounds the triangles to float32 before scaling them; doing the same keeps the result bit-identical
    filters = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)

    area_norm = 2.0 / (mel_points_hz[2:] - mel_points_hz[:-2])
    return (filters * area_norm[:, None]).astype(np.float32)


def as_waveform(waveform: np.ndarray | torch.Tensor, dtype: torch.dtype, min_samples: int = 1) -> torch.Tensor:
    """Check a mono waveform and return it as a 1-D CPU tensor of ``dtype``.

    Args:
        waveform: samples of shape ``(num_samples,)`` (numpy or torch), full scale +-1.
        dtype: the floating dtype wanted.
        min_samples: the fewest samples the caller can work with.

    Raises:
        MediaError: integer samples, not 1-D (multi-channel audio must be mixed down first), too short, or not
            finite.
    """
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.array(waveform))  # a copy: decoders often hand out read-only buffers
    elif not isinstance(waveform, torch.Tensor):
        waveform = torch.as_tensor(waveform)
    if not torch.is_floating_point(waveform):
        raise MediaError(
            f"expected float samples in [-1, 1], got {waveform.dtype}; divide PCM16 samples by 32768 first"
        )
    samples = waveform.detach().to(device="cpu", dtype=dtype)
    if samples.ndim != 1:
        raise MediaError(
            f"expected a mono waveform of shape (num_samples,), got shape {tuple(samples.shape)}; "
            "mix multi-channel audio down to mono first"
        )
    if samples.numel() < min_samples:
        what = "empty (0 samples)" if samples.numel() == 0 else f"only {samples.numel()} samples long"
        raise MediaError(f"the audio is {what}; at least {min_samples} samples are needed. Check the audio input.")
    if not torch.isfinite(samples).all():
        raise MediaError("the audio contains NaN or infinite samples; check the audio decoding")
    return samples


def stft(
    waveform: torch.Tensor, n_fft: int, hop_length: int, win_length: int | None = None, pad_mode: str = "reflect"
) -> torch.Tensor:
    """Centred short-time Fourier transform with a periodic Hann window.

    The signal is padded by ``n_fft // 2`` on both sides (``pad_mode`` ``"reflect"`` like Whisper, ``"constant"``
    for zeros like librosa >= 0.10), so frame ``t`` is centred on sample ``t * hop_length``; a window shorter than
    ``n_fft`` is zero-padded to ``n_fft`` on both sides.

    Args:
        waveform: 1-D float tensor ``(num_samples,)``; the transform runs in its dtype and on its device.
        n_fft, hop_length, win_length: sizes in samples (``win_length`` defaults to ``n_fft``).
        pad_mode: ``"reflect"`` or ``"constant"``.

    Returns:
        Complex tensor of shape ``(n_fft // 2 + 1, 1 + num_samples // hop_length)``.
    """
    win_length = n_fft if win_length is None else win_length
    if pad_mode == "reflect" and waveform.shape[-1] <= n_fft // 2:
        raise MediaError(
            f"the audio is {waveform.shape[-1]} samples long; this spectrogram needs more than {n_fft // 2}"
        )
    window = torch.hann_window(win_length, periodic=True, dtype=waveform.dtype, device=waveform.device)
    return torch.stft(
        waveform,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        pad_mode=pad_mode,
        return_complex=True,
    )
