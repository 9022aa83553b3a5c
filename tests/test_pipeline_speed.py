"""The speed switches inside `LipSyncPipeline`, the ``--speed`` option and the exact switches' tolerances.

The tiny random UNet with guidance runs on a synthetic clip whose face disappears for a while, so the windows
are cut unevenly (full, partial, full) and a window batch holds windows of different lengths.
"""

from __future__ import annotations

import argparse
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers.pipeline import (
    SyntheticFaceDetector,
    ZeroNoiseUNet,
    decode_frames,
    face_frame,
    speech,
    write_clip,
    write_wav,
)

from latentsync._cli import lipsync as lipsync_cli
from latentsync.errors import Cancelled, ConfigError
from latentsync.pipeline.lipsync import LipSyncPipeline
from latentsync.pipeline.settings import LipSyncSettings
from latentsync.pipeline.speed import EXACT, SpeedSettings

SIZE = (160, 160)
NUM_FRAMES = 24
# Faces in frames 0-9 and 17-23 (the tracker bridges gaps of up to 5 frames; this one is 7): windows of 5, 5 | 5, 2.
HAS_FACE = lambda index: not 10 <= index < 17  # noqa: E731
# The exact switches change float rounding only: decoded faces within this of the exact path ([-1, 1] scale) ...
EXACT_FACE_ATOL = 1e-4
# ... and written frames within one uint8 level where a value sits on a rounding edge.
EXACT_FRAME_ATOL = 1
EXACT_SWITCHES = SpeedSettings(cfg_batch=False, vae_batch=3, window_batch=3, io_overlap=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_pipeline(models, speed: SpeedSettings = EXACT, unet=None, **changes) -> LipSyncPipeline:
    fast = {"resolution": 256, "num_inference_steps": 2, "guidance_scale": 1.5, "num_frames": 5}
    settings = LipSyncSettings(**{**fast, **changes})
    return LipSyncPipeline(unet or models.unet, models.whisper, models.vae, SyntheticFaceDetector(), settings, speed)


def clip_frames(has_face=HAS_FACE):
    return [(index, face_frame(index, SIZE, face=has_face(index))) for index in range(NUM_FRAMES)]


def synced(pipeline: LipSyncPipeline, events: list | None = None) -> list[np.ndarray]:
    features = pipeline.prepare_audio(speech(NUM_FRAMES / 25)[0])
    progress = None if events is None else lambda *event: events.append(event)
    return list(pipeline.sync_frames(clip_frames(), features, Fraction(25), progress))


@pytest.mark.slow
def test_exact_switches_keep_the_output(tiny_models):
    exact_events, fast_events = [], []
    exact = synced(make_pipeline(tiny_models), exact_events)
    fast = synced(make_pipeline(tiny_models, EXACT_SWITCHES), fast_events)
    differences = [np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(exact, fast, strict=True)]
    assert max(differences) <= EXACT_FRAME_ATOL
    # the same work is reported (a batch reports the frames of all its windows at each step)
    assert exact_events[-1] == fast_events[-1]
    denoised = [(stage, done) for stage, done, _ in exact_events if stage == "denoise"]
    assert len(denoised) == 4 * 2


@pytest.mark.slow
def test_window_batches_equal_windows_one_by_one(tiny_models):
    generator = lambda: torch.Generator().manual_seed(5)
    pipeline = make_pipeline(tiny_models)
    faces = [np.stack([face_frame(index, (256, 256)) for index in range(count)]) for count in (5, 5, 2)]
    features = pipeline.prepare_audio(speech(12 / 25)[0])
    windows = [(window, pipeline.audio_window(features, 0, len(window))) for window in faces]
    noise = pipeline.initial_noise(generator())
    one_by_one = pipeline.denoise_windows(windows, noise, generator())
    batched = make_pipeline(tiny_models, SpeedSettings(window_batch=3, vae_batch=2)).denoise_windows(
        windows, noise, generator()
    )
    assert [tuple(window.shape) for window in batched] == [(count, 3, 256, 256) for count in (5, 5, 2)]
    for alone, together in zip(one_by_one, batched, strict=True):
        torch.testing.assert_close(together, alone, atol=EXACT_FACE_ATOL, rtol=0)
    # the windows differ (their faces and audio do), so the comparison above compares something
    assert (one_by_one[0] - one_by_one[1]).abs().max() > 0.01


def test_window_batch_generates_when_the_batch_is_full(tiny_models):
    """Windows wait for their batch: with window_batch=3 the first three windows are denoised together, across
    the frames without a face, and the last one when the clip ends."""
    calls = []

    class CountingPipeline(LipSyncPipeline):
        def denoise_windows(self, windows, *args, **kwargs):
            calls.append([len(faces) for faces, _ in windows])
            return super().denoise_windows(windows, *args, **kwargs)

    speed = SpeedSettings(window_batch=3)
    settings = LipSyncSettings(resolution=256, num_inference_steps=1, guidance_scale=1.0, num_frames=5)
    pipeline = CountingPipeline(ZeroNoiseUNet(), tiny_models.whisper, tiny_models.vae, SyntheticFaceDetector(), settings, speed)  # fmt: skip
    frames = synced(pipeline)
    assert len(frames) == NUM_FRAMES
    assert calls == [[5, 5, 5], [2]]


def test_io_overlap_writes_the_same_video(tmp_path, tiny_models):
    # audio longer than the clip: the pingpong replays source frames from the decoder's cache in the background
    clip = write_clip(tmp_path / "clip.mp4", 10, size=SIZE)
    audio = write_wav(tmp_path / "speech.wav", speech(0.64))
    outputs = []
    assert EXACT.io_overlap  # on by default
    for speed, name in ((SpeedSettings(io_overlap=False), "plain.mp4"), (EXACT, "overlap.mp4")):
        report = make_pipeline(tiny_models, speed, ZeroNoiseUNet(), num_inference_steps=1).run(
            clip, audio, tmp_path / name
        )
        assert report.num_frames == 16
        outputs.append(decode_frames(tmp_path / name))
    assert len(outputs[0]) == len(outputs[1]) == 16
    assert all(np.array_equal(a, b) for a, b in zip(*outputs, strict=True))


def test_io_overlap_cancel_writes_nothing_and_stops_its_threads(tmp_path, tiny_models):
    clip = write_clip(tmp_path / "clip.mp4", 12, size=SIZE)
    audio = write_wav(tmp_path / "speech.wav", speech(0.48))
    threads = threading.active_count()
    written = []

    def cancel_after_some_frames() -> bool:
        return len(written) >= 7

    def progress(stage, done, total):
        if stage == "paste":
            written.append(done)

    pipeline = make_pipeline(tiny_models, SpeedSettings(io_overlap=True), ZeroNoiseUNet(), num_inference_steps=1)
    with pytest.raises(Cancelled):
        pipeline.run(clip, audio, tmp_path / "out.mp4", progress=progress, cancel=cancel_after_some_frames)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.mp4", "speech.wav"]
    assert threading.active_count() == threads


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    lipsync_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["lipsync", "--video", "v.mp4", "--output", "o.mp4", *argv])


def test_speed_option_of_the_command_line():
    assert lipsync_cli.speed_from_args(parse()) == EXACT
    args = parse("--speed", "io_overlap=false, vae_batch=2,window_batch=4")
    assert lipsync_cli.speed_from_args(args) == SpeedSettings(io_overlap=False, vae_batch=2, window_batch=4)
    # --deepcache is the official interval and branch; --speed may change the branch
    args = parse("--deepcache", "--speed", "deepcache_branch=2")
    assert lipsync_cli.speed_from_args(args) == SpeedSettings(deepcache_interval=3, deepcache_branch=2)
    with pytest.raises(ConfigError, match="cfg_batch=false cannot be combined with DeepCache"):
        lipsync_cli.speed_from_args(parse("--deepcache", "--speed", "cfg_batch=false"))


@pytest.mark.parametrize(
    "text, message",
    [("warp=9", "unknown speed switch 'warp=9'"), ("vae_batch=0", "vae_batch must be 'none' or a whole number between 1 and 64")],
)
def test_bad_speed_option_is_a_usage_error(capsys, text, message):
    with pytest.raises(SystemExit) as exit_info:
        parse("--speed", text)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_looped_frames_reuse_their_detection(tmp_path, tiny_models):
    """Audio 2.5x the clip, pingpong: every source frame is detected once; replays reuse its face (alignment)."""
    detected = []

    class CountingDetector(SyntheticFaceDetector):
        def _find_faces(self, image):
            detected.append(image.shape)
            return super()._find_faces(image)

    clip = write_clip(tmp_path / "clip.mp4", 8, size=SIZE)
    audio = write_wav(tmp_path / "speech.wav", speech(20 / 25))
    settings = LipSyncSettings(resolution=256, num_inference_steps=1, guidance_scale=1.0, num_frames=5)
    pipeline = LipSyncPipeline(ZeroNoiseUNet(), tiny_models.whisper, tiny_models.vae, CountingDetector(), settings)
    report = pipeline.run(clip, audio, tmp_path / "out.mp4")
    assert (report.num_frames, report.num_generated) == (20, 20)
    assert len(detected) == 8
