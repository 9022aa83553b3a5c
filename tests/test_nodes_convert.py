"""ComfyUI values ↔ library values (`nodes/convert.py`), without ComfyUI."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers.pack import pack_module

from latentsync.media.audio import load_audio

convert = pack_module("nodes.convert")
errors = pack_module("latentsync.errors")


def audio_value(samples: np.ndarray, sample_rate: int) -> dict:
    """A core AUDIO dict of ``(c, n)`` samples."""
    return {"waveform": torch.from_numpy(samples)[None], "sample_rate": sample_rate}


def tone(seconds: float, sample_rate: int, channels: int) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return np.stack([0.5 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# IMAGE


def test_every_uint8_level_survives_image_round_trip():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    image = convert.frames_to_images(levels[None])
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16, 3)
    assert np.array_equal(convert.frame_to_uint8(image[0]), levels)
    assert np.array_equal(convert.frame_to_uint8(convert.frame_to_image(levels)), levels)


def test_out_of_range_pixels_are_clamped():
    image = torch.tensor([[[-0.2, 0.5, 1.7]]])
    assert convert.frame_to_uint8(image).tolist() == [[[0, 128, 255]]]


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 4, 4, 3)), "RGB IMAGE batch"),
        (torch.zeros(4, 4, 3), "RGB IMAGE batch"),
        (torch.zeros(2, 4, 4, 4), "RGB IMAGE batch"),
        (torch.zeros(0, 4, 4, 3), "holds no frames"),
    ],
)
def test_bad_image_batches_are_refused(images, message):
    with pytest.raises(errors.MediaError, match=message):
        convert.check_images(images)


def test_uint8_frames_converts_one_frame_at_a_time():
    images = torch.rand(5, 6, 7, 3)
    frames = convert.Uint8Frames(images)
    assert len(frames) == 5
    assert np.array_equal(frames[-1], convert.frame_to_uint8(images[4]))
    assert [frame.shape for frame in frames] == [(6, 7, 3)] * 5  # iteration stops at the end
    with pytest.raises(IndexError):
        frames[5]


# ----------------------------------------------------------------------------------------------------------
# AUDIO


@pytest.mark.parametrize(
    "audio, message",
    [
        ([0.0, 0.1], "Expected an AUDIO value"),
        ({"waveform": torch.zeros(2, 100), "sample_rate": 16000}, "shape \\(batch, channels, samples\\)"),
        ({"waveform": torch.zeros(2, 1, 100), "sample_rate": 16000}, "batch of 2 clips"),
        ({"waveform": torch.zeros(1, 9, 100), "sample_rate": 16000}, "9 channels"),
        ({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, "empty"),
        ({"waveform": torch.zeros(1, 1, 100), "sample_rate": 0}, "must be positive"),
        ({"waveform": torch.full((1, 1, 100), float("nan")), "sample_rate": 16000}, "NaN"),
    ],
)
def test_bad_audio_is_refused(audio, message):
    with pytest.raises(errors.MediaError, match=message):
        convert.audio_samples(audio)


def test_16k_mono_reaches_the_model_unchanged():
    samples = tone(0.5, 16000, 1)
    assert np.array_equal(convert.model_waveform(audio_value(samples, 16000)), samples[0])


@pytest.mark.parametrize("sample_rate, channels", [(44100, 2), (48000, 1), (22050, 6), (8000, 1)])
def test_any_rate_and_channel_count_becomes_16k_mono_as_files_do(tmp_path, sample_rate, channels):
    samples = tone(0.73, sample_rate, channels)
    audio = audio_value(samples, sample_rate)
    waveform = convert.model_waveform(audio)
    assert waveform.dtype == np.float32
    assert len(waveform) == round(Fraction(samples.shape[1], sample_rate) * 16000)
    # the same audio read from a file by the library (the CLI's path)
    from_file = load_audio(convert.save_wav(audio, tmp_path / "tone.wav"), 16000)
    np.testing.assert_allclose(waveform, from_file, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_wav_keeps_every_channel_and_sample(tmp_path, channels):
    samples = tone(0.2, 44100, channels)
    path = convert.save_wav(audio_value(samples, 44100), tmp_path / "out.wav")
    assert np.array_equal(load_audio(path, 44100, mono=False), samples)
    assert convert.audio_duration(audio_value(samples, 44100)) == Fraction(samples.shape[1], 44100)


# ----------------------------------------------------------------------------------------------------------
# fps, scratch files


@pytest.mark.parametrize(
    "value, expected",
    [
        (25.0, Fraction(25)),
        (30000 / 1001, Fraction(30000, 1001)),
        (24000 / 1001, Fraction(24000, 1001)),
        (12.5, Fraction(25, 2)),
    ],
)
def test_float_fps_becomes_the_exact_rate(value, expected):
    assert convert.as_fps(value) == expected


@pytest.mark.parametrize("value", [0, -25, 0.5, 1000, "fast", None, float("nan"), float("inf")])
def test_bad_fps_is_refused(value):
    with pytest.raises(errors.ConfigError, match="fps"):
        convert.as_fps(value)


@pytest.mark.parametrize("ending", [None, RuntimeError, KeyboardInterrupt])
def test_scratch_folder_is_removed_however_the_block_ends(tmp_path, ending):
    made = []
    try:
        with convert.scratch_dir(tmp_path) as scratch:
            (scratch / "part.mp4").write_bytes(b"x" * 100)
            made.append(scratch)
            if ending is not None:
                raise ending("stop")
    except (RuntimeError, KeyboardInterrupt):
        pass
    assert made and made[0].parent == tmp_path and not made[0].exists()
    assert list(tmp_path.iterdir()) == []


def test_video_files_outside_comfys_folders_are_refused(tmp_path):
    input_dir, output_dir, elsewhere = tmp_path / "input", tmp_path / "output", tmp_path / "secret"
    for folder in (input_dir, output_dir, elsewhere):
        folder.mkdir()
        (folder / "clip.mp4").write_bytes(b"")
    (input_dir / "sub").mkdir()
    (input_dir / "escape.mp4").symlink_to(elsewhere / "clip.mp4")
    folders = [input_dir, output_dir]
    assert convert.check_video_path(input_dir / "clip.mp4", folders) == input_dir / "clip.mp4"
    assert convert.check_video_path(output_dir / "clip.mp4", folders) == output_dir / "clip.mp4"
    traversal = input_dir / "sub" / ".." / ".." / "secret" / "clip.mp4"
    for outside in (elsewhere / "clip.mp4", traversal, input_dir / "escape.mp4"):
        with pytest.raises(errors.MediaError, match="outside ComfyUI's input, output and temp folders"):
            convert.check_video_path(outside, folders)
