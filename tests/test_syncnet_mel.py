"""SyncNet mel spectrogram and its clip crop against the reference (fixture README §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.files import load_json, load_tensors, read_pcm16_wav
from latentsync.audio import AudioHParams, crop_mel_window, mel_filterbank, mel_window_length, syncnet_melspectrogram
from latentsync.errors import ConfigError, MediaError

MEL_ATOL = 1e-9  # README §0, float64


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    directory = fixtures_dir / "syncnet_mel"
    return load_tensors(directory / "demo1_mel.safetensors"), load_json(directory / "demo1_mel.json")


@pytest.fixture(scope="module")
def mel(assets_dir):
    return syncnet_melspectrogram(read_pcm16_wav(assets_dir / "demo1_audio.wav"))


def test_hparams_are_the_official_ones(fixture):
    _, info = fixture
    assert AudioHParams.from_dict(info["hparams"]) == AudioHParams()
    with pytest.raises(ConfigError, match="unknown"):
        AudioHParams.from_dict({**info["hparams"], "n_ftt": 800})


def test_mel_basis_matches_reference(fixture):
    tensors, _ = fixture
    basis = mel_filterbank(16000, 800, 80, fmin=55, fmax=7600)
    assert basis.shape == (80, 401) and basis.dtype == np.float32
    np.testing.assert_allclose(basis, tensors["mel_basis"].numpy(), rtol=0, atol=1e-7)


def test_mel_matches_reference(fixture, mel):
    tensors, _ = fixture
    assert mel.dtype == np.float64 and mel.shape == (80, 1 + 153600 // 200)
    np.testing.assert_allclose(mel, tensors["mel"].numpy(), rtol=0, atol=MEL_ATOL)


def test_crops_match_reference(fixture, mel):
    tensors, info = fixture
    assert mel_window_length(16, 25) == info["mel_window_length"] == 52
    for crop in info["crops"]:
        result = crop_mel_window(mel, crop["video_frame_index"], num_frames=16, fps=25)
        assert result.shape == (1, 80, 52)
        np.testing.assert_array_equal(result, mel[None, :, crop["mel_start_column"] : crop["mel_end_column_exclusive"]])
        np.testing.assert_allclose(result, tensors[crop["key"]].numpy(), rtol=0, atol=MEL_ATOL)


def test_crop_accepts_tensors(mel):
    result = crop_mel_window(torch.from_numpy(mel), 10)
    assert isinstance(result, torch.Tensor) and result.shape == (1, 80, 52)


def test_crop_past_the_end_is_an_error(mel):
    # 769 columns: frame 224 starts at column 716 (716 + 52 <= 769), frame 225 at 720 (720 + 52 > 769)
    assert crop_mel_window(mel, 224).shape == (1, 80, 52)
    with pytest.raises(MediaError, match="too short"):
        crop_mel_window(mel, 225)


@pytest.mark.parametrize("num_samples", [1, 199, 200, 8000])
def test_any_length(num_samples):
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    result = syncnet_melspectrogram(samples)
    assert result.shape == (80, 1 + num_samples // 200)
    assert np.all(np.abs(result) <= 4.0)


def test_empty_audio_is_an_error():
    with pytest.raises(MediaError, match="empty"):
        syncnet_melspectrogram(np.zeros(0, dtype=np.float32))
