"""Sync score mechanics on a tiny random StableSyncNet (`latentsync.score`, `python -m latentsync score`).

Random weights say nothing about real lip sync, but the mechanics are exact: the audio windows start at frame
times, so delaying the audio by k frames moves the whole distance curve, and its minimum, by exactly k.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from itertools import islice

import cv2
import numpy as np
import pytest
import torch
from helpers.files import read_pcm16_wav
from helpers.media import delay, speech_like, write_audio, write_video

from latentsync._cli import score as score_cli
from latentsync.audio.syncnet_mel import crop_mel_window, mel_window_length, syncnet_melspectrogram
from latentsync.errors import ConfigError, LatentSyncError, MediaError, NoFaceError
from latentsync.models.syncnet import StableSyncNet, pack_frames
from latentsync.models.syncnet_loading import save_syncnet
from latentsync.models.syncnet_configs import get_syncnet_config
from latentsync.files import save_png
from latentsync.score import (
    FaceWindowEmbedder,
    FrameAlignedMel,
    SyncNetInput,
    SyncScore,
    frames_at_score_fps,
    score_video,
    sync_offset_scores,
)
from latentsync.score_plot import plot_offsets

SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640
MAX_OFFSET = 15


def random_syllables(seconds: float, seed: int) -> np.ndarray:
    """A non-periodic speech-like waveform ``(n,)``: voiced bursts of random pitch, length and loudness.

    The first 0.2 s are silent, so cutting up to 4 frames from the front leaves the zeros the STFT pads with.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.zeros_like(t)
    start = 0.2
    while start < seconds:
        length, pitch = rng.uniform(0.08, 0.3), rng.uniform(90, 260)
        inside = (t >= start) & (t < start + length)
        envelope = np.sin(np.pi * (t[inside] - start) / length) ** 2 * rng.uniform(0.2, 1.0)
        wave[inside] = envelope * sum(np.sin(2 * np.pi * pitch * h * t[inside]) / h for h in range(1, 8))
        start += length + rng.uniform(0.02, 0.2)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def random_faces(num_frames: int, seed: int, resolution: int = 256) -> torch.Tensor:
    """``(n, 3, R, R)`` uint8 smooth random images that change from frame to frame."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_frames, 3, 16, 16, generator=generator)
    faces = torch.nn.functional.interpolate(coarse, size=(resolution, resolution), mode="bilinear")
    return (faces * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------
# Audio windows


def test_frame_aligned_mel_windows():
    wave = random_syllables(1.2, seed=3)
    audio = FrameAlignedMel(wave)
    length = mel_window_length(16)

    # frames that are multiples of 5 start on the mel grid: the datasets' crop rule
    mel = syncnet_melspectrogram(wave)
    for frame in (0, 5, 10):
        expected = crop_mel_window(mel, frame)
        np.testing.assert_allclose(audio.windows([frame], 16)[0].numpy(), expected, atol=1e-6)
    # other frames start 40 * (frame % 5) samples later than the crop rule does, at the frame's own time
    assert not np.allclose(audio.windows([3], 16)[0].numpy(), crop_mel_window(mel, 3), atol=1e-2)

    # a delay of k frames moves every window by exactly k (none lies near the start of the audio)
    for k in (2, 3):
        delayed = FrameAlignedMel(delay(wave, k))
        frames = np.arange(3, audio.num_windows(16))
        torch.testing.assert_close(delayed.windows(frames + k, 16), audio.windows(frames, 16), atol=1e-5, rtol=0)

    # the last window's last hop fits in the audio, the next one's does not
    count = audio.num_windows(16)
    assert audio.windows([count - 1], 16).shape == (1, 1, 80, length)
    last_centre = SAMPLES_PER_FRAME * (count - 1) + 200 * (length - 1)
    assert last_centre <= len(wave) < last_centre + SAMPLES_PER_FRAME
    assert FrameAlignedMel(wave[: 200 * (length - 1) - 1]).num_windows(16) == 0


# ----------------------------------------------------------------------------------------------------------
# Core score on aligned faces


@pytest.fixture(scope="module")
def scoring_case(tiny_syncnet):
    """48 faces (two windows at stride 16: frames 15 and 31) and 3 s of audio; the base score."""
    faces = random_faces(48, seed=1)
    wave = random_syllables(3.0, seed=7)
    return faces, wave, sync_offset_scores(tiny_syncnet, faces, wave, max_offset=MAX_OFFSET, stride=16)


def test_score_fields(scoring_case):
    _, _, score = scoring_case
    assert score.offsets.tolist() == list(range(-MAX_OFFSET, MAX_OFFSET + 1))
    assert score.window_starts.tolist() == [15, 31]
    assert score.window_distances.shape == (2, 2 * MAX_OFFSET + 1)
    np.testing.assert_allclose(score.mean_distances, score.window_distances.mean(axis=0), rtol=1e-6)
    assert score.min_distance == score.mean_distances.min()
    assert score.best_offset == score.offsets[np.argmin(score.mean_distances)]
    assert score.confidence == pytest.approx(np.median(score.mean_distances) - score.min_distance)
    assert score.confidence > 0 and 0 < score.min_distance < 1


@pytest.mark.parametrize("k", [-3, 2, 5])
def test_shift_equivariance(tiny_syncnet, scoring_case, k):
    faces, wave, base = scoring_case
    # the base curve has one clear minimum that stays inside -15..15 after the shift (a property of the data)
    ordered = np.sort(base.mean_distances)
    assert ordered[1] - ordered[0] > 1e-3
    assert -MAX_OFFSET + 3 <= base.best_offset <= MAX_OFFSET - 5, base.best_offset

    shifted = sync_offset_scores(tiny_syncnet, faces, delay(wave, k), max_offset=MAX_OFFSET, stride=16)

    assert shifted.window_starts.tolist() == base.window_starts.tolist()
    assert shifted.best_offset == base.best_offset + k
    # distance at offset o with the delayed audio == distance at o - k with the original, for every window
    overlap = slice(max(k, 0), 2 * MAX_OFFSET + 1 + min(k, 0))
    moved = slice(max(-k, 0), 2 * MAX_OFFSET + 1 - max(k, 0))
    np.testing.assert_allclose(shifted.window_distances[:, overlap], base.window_distances[:, moved], atol=1e-5)
    assert shifted.min_distance == pytest.approx(base.min_distance, abs=1e-5)


def test_identical_inputs_identical_scores(tiny_syncnet, scoring_case):
    faces, wave, base = scoring_case
    again = sync_offset_scores(tiny_syncnet, faces.clone(), wave.copy(), max_offset=MAX_OFFSET, stride=16)
    assert again.to_dict() == base.to_dict()


def test_window_embedder_gaps_and_batches(tiny_syncnet):
    """Windows never cross a face gap; batching and the bounded buffer give the embeddings of a direct call."""
    spec = SyncNetInput.for_model(tiny_syncnet)
    faces = random_faces(39, seed=2)
    gap = 20
    embedder = FaceWindowEmbedder(tiny_syncnet, spec, first_start=1, stride=2, batch_size=3)
    for index, face in enumerate(faces):
        embedder.push(None if index == gap else face)
        assert embedder.num_buffered_faces < spec.num_frames + 3 * 2
    starts, embeds = embedder.finish()

    # run 0..19 holds windows 1 and 3; run 21..38 holds 21 and 23 (on the stride grid from 1)
    assert starts.tolist() == [1, 3, 21, 23]
    assert (embedder.num_faces, embedder.longest_run) == (38, 20)
    windows = torch.stack([faces[s : s + spec.num_frames] for s in starts]).float() / 127.5 - 1
    with torch.no_grad():
        direct = tiny_syncnet.visual_encoder(pack_frames(windows, lower_half=True)).flatten(1)
    torch.testing.assert_close(embeds, torch.nn.functional.normalize(direct, dim=1), atol=1e-5, rtol=0)


def test_too_short_and_bad_settings(tiny_syncnet):
    wave = random_syllables(3.0, seed=7)
    # the first window starts at frame 15 (audio 15 frames before it) and needs faces up to frame 30
    with pytest.raises(MediaError, match="start at frames 15 to 44, .*longest run of faces: 30 frames"):
        sync_offset_scores(tiny_syncnet, random_faces(30, seed=1), wave)
    with pytest.raises(MediaError, match="audio covers about 20 frames, fewer than the 46 needed"):
        sync_offset_scores(tiny_syncnet, random_faces(60, seed=1), wave[: SAMPLES_PER_FRAME * 20])
    with pytest.raises(ConfigError, match="max_offset"):
        sync_offset_scores(tiny_syncnet, random_faces(60, seed=1), wave, max_offset=-1)
    with pytest.raises(ConfigError, match=r"\(3, 256, 256\)"):
        sync_offset_scores(tiny_syncnet, random_faces(60, seed=1, resolution=128), wave)


def test_window_spec_follows_the_syncnet_config():
    with torch.device("meta"):
        pixel_25, latent = StableSyncNet.from_config("syncnet_25_pixel"), StableSyncNet.from_config("syncnet_16_latent")
    assert SyncNetInput.for_model(pixel_25) == SyncNetInput(num_frames=25, resolution=256, lower_half=True)
    with pytest.raises(ConfigError, match="says 16 frames per window"):
        SyncNetInput.for_model(pixel_25, get_syncnet_config("syncnet_16_pixel")["data"])
    with pytest.raises(ConfigError, match="pixel-space"):
        SyncNetInput.for_model(latent)


# ----------------------------------------------------------------------------------------------------------
# Plot


def test_plot_offsets_and_png(tmp_path):
    offsets = np.arange(-15, 16)
    distances = 0.5 + 0.01 * np.abs(offsets - 4).astype(np.float64)
    score = SyncScore(
        confidence=float(np.median(distances) - distances.min()),
        min_distance=float(distances.min()),
        best_offset=4,
        offsets=offsets,
        mean_distances=distances,
        window_starts=np.array([15]),
        window_distances=distances[None].astype(np.float32),
        num_frames=16,
    )
    image = plot_offsets(score, width=640, height=400)
    assert image.shape == (400, 640, 3) and image.dtype == np.uint8
    red = (image[..., 0] > 180) & (image[..., 1] < 90) & (image[..., 2] < 90)
    blue = (image[..., 2] > 150) & (image[..., 0] < 80)
    assert red.sum() > 100 and blue.sum() > 500
    # the best-offset marker sits at offset 4 of -15..15 inside the plot area (x from 70 to 620)
    red_columns = np.flatnonzero(red.sum(axis=0) > 100)
    assert abs(red_columns.mean() - (70 + 19 / 30 * 550)) < 3

    path = save_png(image, tmp_path / "offsets.png")
    assert cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).tolist() == image.tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["offsets.png"]
    with pytest.raises(MediaError, match="does not exist"):
        save_png(image, tmp_path / "missing" / "offsets.png")


# ----------------------------------------------------------------------------------------------------------
# Videos


def test_frames_at_score_fps():
    """Frame i at 25 fps shows the source frame on screen at i / 25 s; the duration is kept."""
    at_30 = list(frames_at_score_fps(range(70), Fraction(30)))
    assert len(at_30) == 59  # ceil(70 / 30 * 25), as VideoReader.frames_at_fps counts
    assert at_30[:8] == [0, 1, 2, 3, 4, 6, 7, 8]
    assert list(frames_at_score_fps(range(3), Fraction(25, 2))) == [0, 0, 1, 1, 2, 2]
    assert list(frames_at_score_fps(range(4), Fraction(30000, 1001)))[:4] == [0, 1, 2, 3]
    assert list(frames_at_score_fps(range(30), 29.97)) == list(frames_at_score_fps(range(30), Fraction(30000, 1001)))
    with pytest.raises(LatentSyncError, match="fps must be positive"):
        list(frames_at_score_fps(range(3), 0))


def test_faceless_video_raises_no_face_error(tiny_syncnet, face_detector, tmp_path):
    audio = speech_like(1.5, 48000)
    video = write_video(tmp_path / "pattern.mp4", num_frames=45, fps=Fraction(30), size=(160, 120), audio=audio)
    with pytest.raises(NoFaceError, match="No face found in any of the 38 frames"):
        score_video(video, tiny_syncnet, face_detector)


@pytest.fixture(scope="module")
def clip_30fps(assets_dir, tmp_path_factory):
    """1.7 s of demo1 at 30 fps (a 480x480 crop around the face, frames picked by time), its first 3 s of audio."""
    from latentsync.media import VideoReader, VideoWriter

    folder = tmp_path_factory.mktemp("clip30")
    with VideoReader(assets_dir / "demo1_video.mp4") as reader:
        frames = [rgb[480:960, 360:840] for _, rgb in islice(reader.frames(), 42)]
    with VideoWriter(folder / "clip30.mp4", 30, 480, 480, preset="ultrafast") as writer:
        for index in range(50):
            writer.write_frame(frames[index * 25 // 30])
    wave = read_pcm16_wav(assets_dir / "demo1_audio.wav")[: 3 * SAMPLE_RATE]
    return folder / "clip30.mp4", write_audio(folder / "audio.wav", wave[None], SAMPLE_RATE), wave


@pytest.mark.slow
def test_cli_scores_a_30fps_video(tiny_syncnet, face_detector, clip_30fps, tmp_path, capsys):
    video, audio, wave = clip_30fps
    checkpoint = save_syncnet(tiny_syncnet, tmp_path / "syncnet_tiny.pt")
    parser = argparse.ArgumentParser()
    score_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["score", "--video", str(video), "--audio", str(audio), "--syncnet", str(checkpoint), "--max-offset", "3",
         "--stride", "16", "--device", "cpu", "--plot", str(tmp_path / "plot.png"), "--json", str(tmp_path / "s.json")]
    )
    assert score_cli.run(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "s.json").read_text())

    # 50 frames at 30 fps = 1.67 s -> 42 frames at 25 fps, a face in each; windows at 3, 19 (s + 16 <= 42)
    assert result["window_starts"] == [3, 19]
    assert result["offsets"] == [-3, -2, -1, 0, 1, 2, 3]
    assert f"Confidence (LSE-C style): {result['confidence']:.4f}" in printed
    assert result["confidence"] == pytest.approx(np.median(result["mean_distances"]) - result["min_distance"])
    assert cv2.imread(str(tmp_path / "plot.png")).shape == (400, 640, 3)

    insightface = parser.parse_args(["score", "--video", str(video), "--detector", "insightface", "--quiet"])
    with pytest.raises(ConfigError, match="--detector-models"):
        score_cli.run(insightface)

    # end to end, delaying the audio by 2 frames moves the curve by 2 (detection and alignment are deterministic)
    delayed = write_audio(tmp_path / "delayed.wav", delay(wave, 2)[None], SAMPLE_RATE)
    shifted = score_video(video, tiny_syncnet, face_detector, delayed, max_offset=3, stride=16)
    assert shifted.window_starts.tolist() == result["window_starts"]
    np.testing.assert_allclose(shifted.mean_distances[2:], result["mean_distances"][:-2], atol=1e-5)
