"""Whisper audio features against the reference `Audio2Feature` outputs (fixture README §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers.files import load_json, load_tensors, read_pcm16_wav
from latentsync.audio import (
    WhisperAudioEncoder,
    feature_chunks,
    load_whisper,
    mel_filterbank,
    random_tiny_whisper_state,
    stft,
)
from latentsync.audio.whisper import WhisperAttention
from latentsync.errors import CheckpointError, MediaError

FEATURE_ATOL = 1e-5  # README §0, float32 Whisper features
# The log-mel's smallest values sit next to the (max - 8) clamp, where float32 FFT rounding is relatively large:
# both the fixture and this implementation are within 2e-5 of a float64 computation there (measured), so two
# float32 FFT backends can differ by up to ~4e-5. Elsewhere they agree to about one float32 ulp (mean checked).
LOG_MEL_ATOL = 5e-5
LOG_MEL_MEAN_ATOL = 1e-6


@pytest.fixture(scope="module")
def whisper_dir(fixtures_dir):
    return fixtures_dir / "whisper"


@pytest.fixture(scope="module")
def reference(whisper_dir):
    return load_tensors(whisper_dir / "whisper_features_public.safetensors")


@pytest.fixture(scope="module")
def extractor(whisper_dir):
    return load_whisper(whisper_dir / "whisper_tiny_random.pt")


@pytest.fixture(scope="module")
def waveforms(whisper_dir, assets_dir):
    return {
        "demo1": read_pcm16_wav(assets_dir / "demo1_audio.wav"),
        "long": read_pcm16_wav(whisper_dir / "long_concat_public.wav"),
    }


@pytest.fixture(scope="module")
def features(extractor, waveforms):
    return {name: extractor.encode(samples) for name, samples in waveforms.items()}


# ----------------------------------------------------------------------------------------------- signal processing


def test_mel_filterbank_matches_reference(reference):
    filters = mel_filterbank(16000, 400, 80)
    assert filters.shape == (80, 201) and filters.dtype == np.float32
    np.testing.assert_allclose(filters, reference["mel_filters_80x201"].numpy(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_stft_matches_explicit_framing(pad_mode):
    n_fft, hop = 64, 16
    signal = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    padded = np.pad(signal.numpy(), n_fft // 2, mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic
    expected = np.fft.rfft(frames * hann, axis=-1).T

    result = stft(signal, n_fft, hop, pad_mode=pad_mode).numpy()
    assert result.shape == (n_fft // 2 + 1, 1 + 1000 // hop)
    np.testing.assert_allclose(result, expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------------- log-mel


def test_log_mel_first_window_demo1(extractor, waveforms, reference):
    log_mel = extractor.log_mel(waveforms["demo1"])
    expected = reference["demo1.log_mel_window0"]
    assert log_mel.shape == (80, 960) and log_mel.dtype == torch.float32
    assert torch.all(expected[:, 960:] == 0.0)
    difference = (log_mel - expected[:, :960]).abs()
    assert difference.max() <= LOG_MEL_ATOL and difference.mean() <= LOG_MEL_MEAN_ATOL


def test_log_mel_whole_long_file(extractor, waveforms, reference):
    log_mel = extractor.log_mel(waveforms["long"])
    expected = reference["long.log_mel_full"]
    assert log_mel.shape == expected.shape == (80, 3904)
    difference = (log_mel - expected).abs()
    assert difference.max() <= LOG_MEL_ATOL and difference.mean() <= LOG_MEL_MEAN_ATOL


# --------------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("name, rows", [("demo1", 480), ("long", 1500 + 452)])
def test_audio_feat_matches_reference(features, reference, name, rows):
    assert features[name].shape == (rows, 5, 24) and features[name].dtype == torch.float32
    torch.testing.assert_close(features[name], reference[f"{name}.audio_feat"], rtol=0, atol=FEATURE_ATOL)


def test_chunks_from_own_features_match_reference(features, reference):
    torch.testing.assert_close(feature_chunks(features["demo1"]), reference["demo1.chunks"], rtol=0, atol=FEATURE_ATOL)
    subset = reference["long.chunks_subset_indices"].long()
    torch.testing.assert_close(
        feature_chunks(features["long"])[subset], reference["long.chunks_subset"], rtol=0, atol=FEATURE_ATOL
    )


def test_float64_encoder_matches_reference(whisper_dir, waveforms, reference):
    extractor64 = load_whisper(whisper_dir / "whisper_tiny_random.pt", dtype=torch.float64)
    result = extractor64.encode(waveforms["demo1"])
    assert result.dtype == torch.float32  # features always come back as float32 on the CPU
    torch.testing.assert_close(result, reference["demo1.audio_feat"], rtol=0, atol=FEATURE_ATOL)


def test_float16_encoder_is_close(whisper_dir, waveforms, reference):
    extractor16 = load_whisper(whisper_dir / "whisper_tiny_random.pt", dtype=torch.float16)
    assert extractor16.encoder.conv1.weight.dtype == torch.float16
    result = extractor16.encode(waveforms["demo1"])
    torch.testing.assert_close(result, reference["demo1.audio_feat"], rtol=0, atol=3e-2)


def test_sdpa_attention_equals_openai_formula():
    attention = WhisperAttention(24, 4)
    hidden = torch.randn(2, 37, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scale = (24 // 4) ** -0.25
        q = attention.query(hidden).view(2, 37, 4, 6).permute(0, 2, 1, 3) * scale
        k = attention.key(hidden).view(2, 37, 4, 6).permute(0, 2, 3, 1) * scale
        v = attention.value(hidden).view(2, 37, 4, 6).permute(0, 2, 1, 3)
        weights = torch.softmax((q @ k).float(), dim=-1)
        expected = attention.out((weights @ v).permute(0, 2, 1, 3).flatten(2))
        torch.testing.assert_close(attention(hidden), expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- audio of any length


@pytest.mark.parametrize("num_samples, rows", [(320, 1), (8000, 25), (12345, 38)])
def test_short_audio(extractor, waveforms, num_samples, rows):
    result = extractor.encode(waveforms["demo1"][:num_samples])
    assert result.shape == (rows, 5, 24)
    assert torch.isfinite(result).all()


def test_audio_longer_than_60_seconds(extractor, waveforms, features):
    twice = np.concatenate([waveforms["long"], waveforms["long"]])  # 78.08 s: windows of 3000, 3000, 1808 columns
    result = extractor.encode(twice)
    assert result.shape == (1500 + 1500 + 904, 5, 24)
    assert torch.isfinite(result).all()
    # the first 30 s window sees the same mel columns (same content, same global maximum) as the long file's
    torch.testing.assert_close(result[:1500], features["long"][:1500], rtol=0, atol=FEATURE_ATOL)


@pytest.mark.parametrize(
    "waveform, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros(319, dtype=np.float32), "319 samples"),
        (np.zeros((2, 16000), dtype=np.float32), "mono"),
        (np.full(16000, np.nan, dtype=np.float32), "NaN"),
        (np.zeros(16000, dtype=np.int16), "32768"),
    ],
)
def test_unusable_audio_is_rejected(extractor, waveform, message):
    with pytest.raises(MediaError, match=message):
        extractor.encode(waveform)


# ---------------------------------------------------------------------------------------------- checkpoint files


def test_loaded_weights_are_the_file_weights(extractor, whisper_dir):
    stored = torch.load(whisper_dir / "whisper_tiny_random.pt", weights_only=True)["model_state_dict"]
    loaded = extractor.state_dict()
    assert set(loaded) == {key for key in stored if key.startswith("encoder.")}
    for key, value in loaded.items():
        assert value.dtype == torch.float32 and torch.equal(value, stored[key].float()), key


def test_unet_file_is_rejected(fixtures_dir):
    with pytest.raises(CheckpointError, match="Whisper"):
        load_whisper(fixtures_dir / "unet_tiny" / "latentsync_unet_tiny.pt")


def test_flat_unet_like_file_is_rejected(tmp_path):
    path = tmp_path / "unet.pt"
    torch.save({"conv_in.weight": torch.zeros(4, 13, 3, 3), "down_blocks.0.x": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="UNet"):
        load_whisper(path)


def test_missing_dims_is_rejected(tmp_path, whisper_dir):
    stored = torch.load(whisper_dir / "whisper_tiny_random.pt", weights_only=True)
    path = tmp_path / "no_dims.pt"
    torch.save({"model_state_dict": stored["model_state_dict"]}, path)
    with pytest.raises(CheckpointError, match="dims"):
        load_whisper(path)


def test_encoder_keys_load_strictly(tmp_path, whisper_dir):
    stored = torch.load(whisper_dir / "whisper_tiny_random.pt", weights_only=True)
    weights = stored["model_state_dict"]
    cases = {
        "missing": ({k: v for k, v in weights.items() if k != "encoder.ln_post.bias"}, stored["dims"]),
        "unexpected": ({**weights, "encoder.extra.weight": torch.zeros(1)}, stored["dims"]),
        "wrong shape": (weights, {**stored["dims"], "n_audio_layer": 3, "n_mels": 128}),
    }
    for message, (state_dict, dims) in cases.items():
        path = tmp_path / f"{message}.pt"
        torch.save({"dims": dims, "model_state_dict": state_dict}, path)
        with pytest.raises(CheckpointError, match=f"(?i){message.split()[0]}"):
            load_whisper(path)


def test_random_state_has_the_official_layout(whisper_dir):
    stored = torch.load(whisper_dir / "whisper_tiny_random.pt", weights_only=True)
    weights, dims = stored["model_state_dict"], stored["dims"]
    state = random_tiny_whisper_state(dims, seed=3)
    assert list(state) == list(weights)
    for key, value in weights.items():
        assert state[key].shape == value.shape and state[key].dtype == value.dtype == torch.float16, key
    # the positional table is the float16 sinusoid table, like the official files
    assert torch.equal(state["encoder.positional_embedding"], weights["encoder.positional_embedding"])
    conv1 = state["encoder.conv1.weight"]
    assert torch.equal(conv1, random_tiny_whisper_state(dims, seed=3)["encoder.conv1.weight"])
    assert not torch.equal(conv1, random_tiny_whisper_state(dims, seed=4)["encoder.conv1.weight"])
    fan_in = 80 * 3
    assert conv1.float().std() == pytest.approx(1 / math.sqrt(fan_in), rel=0.15)


def test_encoder_from_dims_has_openai_keys(whisper_dir):
    dims = load_json(whisper_dir / "whisper_features_public.json")["dims"]
    with torch.device("meta"):
        encoder = WhisperAudioEncoder.from_dims(dims)
    stored = torch.load(whisper_dir / "whisper_tiny_random.pt", weights_only=True)["model_state_dict"]
    assert [f"encoder.{key}" for key in encoder.state_dict()] == [k for k in stored if k.startswith("encoder.")]
