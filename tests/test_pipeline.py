"""End-to-end lip sync with tiny random models: timing, lengths, faces, determinism, bad input, memory.

The generated clip (`helpers.pipeline.face_frame`) has a steady synthetic face found by `SyntheticFaceDetector`;
the real clips of the fixtures use the default MediaPipe detector. Where a test checks only mechanics the UNet is
`ZeroNoiseUNet` (no UNet cost); the VAE, the faces, the paste and the media IO always run for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers.files import REPO_ROOT
from helpers.media import write_empty_wav
from helpers.pipeline import (
    PoolingCodec,
    SyntheticFaceDetector,
    ZeroNoiseUNet,
    decode_frames,
    face_frame,
    read_index,
    speech,
    write_clip,
    write_wav,
)

from latentsync.errors import Cancelled, MediaError, NoFaceError
from latentsync.face.align import FaceAligner, crop_size
from latentsync.media import load_audio, probe_audio, probe_video
from latentsync.pipeline.lipsync import LipSyncPipeline
from latentsync.pipeline.settings import LipSyncSettings

SIZE = (160, 160)
# Subprocesses run torch on one thread, as the tests do (see `one_torch_thread` in conftest.py).
SINGLE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# the paste may touch pixels up to this far outside the face crop's bounding box
PASTE_MARGIN = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_pipeline(models, unet=None, **changes) -> LipSyncPipeline:
    fast = {"resolution": 256, "num_inference_steps": 1, "guidance_scale": 1.0, "num_frames": 5}
    settings = LipSyncSettings(**{**fast, **changes})
    return LipSyncPipeline(unet or models.unet, models.whisper, models.vae, SyntheticFaceDetector(), settings)


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    mse = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def face_box(size=SIZE) -> tuple[slice, slice]:
    """Rows and columns of the frame the synthetic face's paste can change."""
    frame = face_frame(0, size)
    (face,) = SyntheticFaceDetector().detect(frame)
    affine = FaceAligner(256).estimate_affine(face.points3)
    height, width = crop_size(256)
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    inverse = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
    points = corners @ inverse[:, :2].T + inverse[:, 2]
    (left, top), (right, bottom) = points.min(0) - PASTE_MARGIN, points.max(0) + PASTE_MARGIN
    return slice(max(int(top), 0), int(bottom) + 1), slice(max(int(left), 0), int(right) + 1)


def outside(frame: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """The pixels of ``frame`` outside ``box``, flattened to (n, 3)."""
    keep = np.ones(frame.shape[:2], dtype=bool)
    keep[box] = False
    return frame[keep]


MOUTH = (slice(104, 124), slice(66, 94))  # rows / columns around the synthetic mouth (160 x 160 frame)


def mouth_change(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first[MOUTH].astype(np.int16) - second[MOUTH]).mean())


def assert_nothing_written(folder: Path, output: Path) -> None:
    assert not output.exists()
    assert not [path.name for path in folder.iterdir() if "partial" in path.name]


# ----------------------------------------------------------------------------------------------------------
# generation


@pytest.fixture(scope="module")
def synced_clip(tmp_path_factory, tiny_models):
    """A 30 fps clip with 48 kHz stereo sound, lip-synced to its own audio with the tiny UNet and guidance."""
    folder = tmp_path_factory.mktemp("synced")
    clip = write_clip(folder / "clip.mp4", 8, Fraction(30), SIZE, audio=speech(8 / 30, 48000, 2), marks=False)
    events = []
    pipeline = make_pipeline(tiny_models, guidance_scale=1.5)
    report = pipeline.run(clip, None, folder / "out.mp4", progress=lambda *event: events.append(event))
    return clip, folder / "out.mp4", report, events


def test_output_keeps_size_rate_length_and_sound(synced_clip):
    _, output, report, events = synced_clip
    video = probe_video(output)
    assert (video.width, video.height, video.fps) == (*SIZE, 30)
    assert len(decode_frames(output)) == report.num_frames == 8
    assert video.duration == pytest.approx(8 / 30, abs=1e-3)
    audio = probe_audio(output)
    assert (audio.sample_rate, audio.channels) == (48000, 2)
    assert audio.duration == pytest.approx(8 / 30, abs=1 / 30)
    # 8 frames at 30 fps are 7 model frames at 25 fps: windows of 5 + 2
    assert (report.num_model_frames, report.num_generated, report.num_windows) == (7, 7, 2)
    # progress: 8 frames detected and pasted, 7 model frames encoded, denoised (1 step) and decoded
    assert events[-1] == ("paste", 8 * 2 + 7 * 3, 8 * 2 + 7 * 3)


def test_only_the_face_changes(synced_clip):
    clip, output, _, _ = synced_clip
    box = face_box()
    for source, synced in zip(decode_frames(clip), decode_frames(output)):
        assert psnr(outside(source, box), outside(synced, box)) >= 45
        assert mouth_change(source, synced) > 20


def test_same_seed_same_output(tmp_path, tiny_models):
    clip = write_clip(tmp_path / "clip.mp4", 6, size=SIZE)
    audio = write_wav(tmp_path / "speech.wav", speech(0.24))
    outputs = []
    for seed, name in ((7, "a.mp4"), (7, "b.mp4"), (8, "c.mp4")):
        make_pipeline(tiny_models, seed=seed).run(clip, audio, tmp_path / name)
        outputs.append(decode_frames(tmp_path / name))
    assert all(np.array_equal(a, b) for a, b in zip(outputs[0], outputs[1]))
    assert any(mouth_change(a, c) > 1 for a, c in zip(outputs[0], outputs[2]))


# ----------------------------------------------------------------------------------------------------------
# faces


def test_faceless_video_comes_back_unchanged(tmp_path, tiny_models):
    clip = write_clip(tmp_path / "clip.mp4", 6, size=SIZE, has_face=lambda index: False, marks=False)
    audio = write_wav(tmp_path / "speech.wav", speech(0.24))
    report = make_pipeline(tiny_models, ZeroNoiseUNet()).run(clip, audio, tmp_path / "out.mp4")
    assert (report.num_generated, report.frames_without_face, report.num_frames) == (0, 6, 6)
    for source, output in zip(decode_frames(clip), decode_frames(tmp_path / "out.mp4"), strict=True):
        assert psnr(source, output) >= 45


def test_frames_without_a_face_pass_through(tmp_path, tiny_models):
    # the tracker bridges misses of up to 5 frames; a 7-frame gap is a real absence and splits the windows
    has_face = lambda index: not 3 <= index < 10
    clip = write_clip(tmp_path / "clip.mp4", 13, size=SIZE, has_face=has_face)
    audio = write_wav(tmp_path / "speech.wav", speech(0.52))
    report = make_pipeline(tiny_models, ZeroNoiseUNet()).run(clip, audio, tmp_path / "out.mp4")
    assert (report.frames_without_face, report.num_generated, report.num_windows) == (7, 6, 2)
    for index, (source, output) in enumerate(zip(decode_frames(clip), decode_frames(tmp_path / "out.mp4"))):
        assert read_index(output) == index
        if has_face(index):
            assert mouth_change(source, output) > 20
        else:
            assert mouth_change(source, output) < 3


def test_no_face_error_stops_and_writes_nothing(tmp_path, tiny_models):
    clip = write_clip(tmp_path / "clip.mp4", 10, size=SIZE, has_face=lambda index: index < 3)
    audio = write_wav(tmp_path / "speech.wav", speech(0.4))
    pipeline = make_pipeline(tiny_models, ZeroNoiseUNet(), no_face="error")
    with pytest.raises(NoFaceError, match=r"output frame 3 \(0.12 s\)") as caught:
        pipeline.run(clip, audio, tmp_path / "out.mp4")
    assert_nothing_written(tmp_path, tmp_path / "out.mp4")
    assert "set no_face to passthrough" in str(caught.value) and "--" not in str(caught.value)  # no CLI flag


def test_cancel_stops_and_writes_nothing(tmp_path, tiny_models):
    clip = write_clip(tmp_path / "clip.mp4", 6, size=SIZE)
    audio = write_wav(tmp_path / "speech.wav", speech(0.24))
    with pytest.raises(Cancelled):
        make_pipeline(tiny_models, ZeroNoiseUNet()).run(clip, audio, tmp_path / "out.mp4", cancel=lambda: True)
    assert_nothing_written(tmp_path, tmp_path / "out.mp4")


# ----------------------------------------------------------------------------------------------------------
# timing and length


@pytest.mark.parametrize(
    "long_audio, short_audio, seconds, expected",
    [
        ("pingpong", "trim", 0.4, [0, 1, 2, 3, 4, 5, 5, 4, 3, 2]),
        ("loop", "trim", 0.4, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]),
        ("hold", "trim", 0.32, [0, 1, 2, 3, 4, 5, 5, 5]),
        ("pingpong", "trim", 0.2, [0, 1, 2, 3, 4]),
        ("pingpong", "pad", 0.2, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_length_policies(tmp_path, tiny_models, long_audio, short_audio, seconds, expected):
    # faces only for the first case, where replayed frames reuse their first visit's face; the rest stays cheap
    has_face = lambda index: seconds == 0.4 and long_audio == "pingpong"
    clip = write_clip(tmp_path / "clip.mp4", 6, size=SIZE, has_face=has_face)
    audio = write_wav(tmp_path / "speech.wav", speech(seconds))
    pipeline = make_pipeline(tiny_models, ZeroNoiseUNet(), long_audio=long_audio, short_audio=short_audio)
    report = pipeline.run(clip, audio, tmp_path / "out.mp4")
    frames = decode_frames(tmp_path / "out.mp4")
    assert [read_index(frame) for frame in frames] == expected
    duration = len(expected) / 25
    assert probe_video(tmp_path / "out.mp4").duration == pytest.approx(duration, abs=1e-3)
    assert probe_audio(tmp_path / "out.mp4").duration == pytest.approx(duration, abs=1 / 25)
    if has_face(0):
        assert report.num_generated == len(expected)
        sources = decode_frames(clip)
        assert all(mouth_change(sources[index], frame) > 20 for index, frame in zip(expected, frames))


def test_variable_frame_rate_input(tmp_path, tiny_models):
    # frames last 20 and 40 ms in turn
    times = [Fraction(sum(20 if k % 2 == 0 else 40 for k in range(index)), 1000) for index in range(13)]
    clip = write_clip(tmp_path / "clip.mp4", 12, Fraction(30), SIZE, has_face=lambda index: False, times=times)
    source = probe_video(clip)
    assert source.is_vfr
    audio = write_wav(tmp_path / "speech.wav", speech(float(times[-1])))
    report = make_pipeline(tiny_models, ZeroNoiseUNet()).run(clip, audio, tmp_path / "out.mp4")
    video = probe_video(tmp_path / "out.mp4")
    # a constant rate: the source's average
    assert video.fps == source.fps and not video.is_vfr
    num_frames = round(times[-1] * source.fps)
    assert report.num_frames == num_frames
    assert video.duration == pytest.approx(float(num_frames / source.fps), abs=1e-3)
    # output frame i shows the source frame on screen at i / fps
    expected = [max(k for k in range(12) if times[k] <= i / source.fps) for i in range(num_frames)]
    assert [read_index(frame) for frame in decode_frames(tmp_path / "out.mp4")] == expected


def test_output_fps_resamples_by_timestamp(tmp_path, tiny_models):
    clip = write_clip(tmp_path / "clip.mp4", 12, Fraction(30), SIZE, has_face=lambda index: False)
    audio = write_wav(tmp_path / "speech.wav", speech(0.4))
    make_pipeline(tiny_models, ZeroNoiseUNet(), output_fps=25).run(clip, audio, tmp_path / "out.mp4")
    assert probe_video(tmp_path / "out.mp4").fps == 25
    assert [read_index(frame) for frame in decode_frames(tmp_path / "out.mp4")] == [i * 30 // 25 for i in range(10)]


# ----------------------------------------------------------------------------------------------------------
# bad input


@pytest.fixture
def media(tmp_path):
    """Good and bad input files."""
    files = {
        "clip": write_clip(tmp_path / "clip.mp4", 3, size=SIZE, has_face=lambda index: False),
        "speech": write_wav(tmp_path / "speech.wav", speech(0.12)),
        "empty": tmp_path / "empty.mp4",
        "corrupt": tmp_path / "corrupt.mp4",
        "silent": write_empty_wav(tmp_path / "silent.wav"),
    }
    files["empty"].write_bytes(b"")
    files["corrupt"].write_bytes(np.random.default_rng(0).bytes(4096))
    return files


def test_missing_output_folder_is_created(tmp_path, tiny_models, media):
    output = tmp_path / "new" / "folder" / "out.mp4"
    make_pipeline(tiny_models, ZeroNoiseUNet()).run(media["clip"], media["speech"], output)
    assert output.is_file()


@pytest.mark.parametrize(
    "video, audio, output, message",
    [
        ("missing.mp4", "speech", "out.mp4", "not found"),
        ("empty", "speech", "out.mp4", "empty"),
        ("corrupt", "speech", "out.mp4", "not a readable"),
        ("speech", "speech", "out.mp4", "no video stream"),
        ("clip", None, "out.mp4", "no audio track"),
        ("clip", "clip", "out.mp4", "no audio track"),
        ("clip", "silent", "out.mp4", "zero length"),
        ("clip", "speech", "speech.wav/out.mp4", "Cannot create the output folder"),
        ("clip", "speech", "out.txt", "must be one of"),
        ("clip", "speech", "clip.mp4", "one of the inputs"),
    ],
)
def test_bad_input_is_refused_before_writing(tmp_path, tiny_models, media, video, audio, output, message):
    def path(name):
        return media.get(name, tmp_path / name) if name is not None else None

    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(MediaError, match=message):
        make_pipeline(tiny_models, ZeroNoiseUNet()).run(path(video), path(audio), tmp_path / output)
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_wrong_model_files_are_named(tmp_path, tiny_models_dir):
    from latentsync.audio import random_tiny_whisper_state, save_whisper_checkpoint
    from latentsync.errors import CheckpointError
    from latentsync.pipeline.models import load_models

    whisper = tiny_models_dir / "whisper" / "tiny.pt"
    with pytest.raises(CheckpointError, match=f"{whisper}.*not a LatentSync"):
        load_models(tiny_models_dir, unet=whisper, resolution=256)
    dims = {
        "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 16, "n_audio_head": 4, "n_audio_layer": 1,
        "n_vocab": 8, "n_text_ctx": 4, "n_text_state": 16, "n_text_head": 4, "n_text_layer": 1,
    }  # fmt: skip
    narrow = tmp_path / "narrow.pt"
    save_whisper_checkpoint(narrow, dims, random_tiny_whisper_state(dims))
    with pytest.raises(CheckpointError, match="16-wide features but the UNet .* attends to 24-wide"):
        load_models(tiny_models_dir, whisper=narrow, resolution=256)


# ----------------------------------------------------------------------------------------------------------
# real clips, command line, memory


@pytest.mark.slow
def test_real_clip_with_mediapipe(assets_dir, tmp_path, tiny_models):
    samples = load_audio(assets_dir / "demo1_audio.wav")[: 16000 * 2 // 5][None]  # the first 0.4 s
    audio = write_wav(tmp_path / "speech.wav", samples)
    settings = LipSyncSettings(resolution=256, num_inference_steps=1, guidance_scale=1.0, num_frames=5)
    pipeline = LipSyncPipeline(tiny_models.unet, tiny_models.whisper, tiny_models.vae, settings=settings)
    report = pipeline.run(assets_dir / "demo1_video.mp4", audio, tmp_path / "out.mp4")
    video = probe_video(tmp_path / "out.mp4")
    assert (video.width, video.height, video.fps) == (1080, 1920, 25)
    assert (report.num_frames, report.num_generated, report.frames_without_face) == (10, 10, 0)
    assert probe_audio(tmp_path / "out.mp4").duration == pytest.approx(0.4, abs=1 / 25)
    sources = decode_frames(assets_dir / "demo1_video.mp4")[:10]
    for source, output in zip(sources, decode_frames(tmp_path / "out.mp4"), strict=True):
        assert psnr(source[:400], output[:400]) >= 45  # far above the face (eyebrows at y ~ 650)
        assert np.abs(source[750:850, 500:700].astype(np.int16) - output[750:850, 500:700]).mean() > 10


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "latentsync", "lipsync", *args],
        check=False,
        cwd=REPO_ROOT,
        env=SINGLE_THREAD_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, tiny_models_dir):
    # MediaPipe finds no face in the synthetic clip: the run passes every frame through, exit code 0
    clip = write_clip(tmp_path / "clip.mp4", 6, size=SIZE, audio=speech(0.24, 48000, 2))
    output = tmp_path / "out.mp4"
    result = _cli("--video", str(clip), "--output", str(output), "--models-dir", str(tiny_models_dir), "--steps", "1")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "6 frames at 25 fps" in result.stdout and "encode" in result.stdout
    assert "face resolution 256" in result.stderr  # no version in the path: 256 is assumed, and said
    assert len(decode_frames(output)) == 6


@pytest.mark.slow
def test_cli_bad_input_exits_1_with_one_line(tmp_path, tiny_models_dir):
    output = tmp_path / "out.mp4"
    result = _cli("--video", str(tmp_path / "missing.mp4"), "--output", str(output), "--quiet")
    assert result.returncode == 1
    assert result.stderr.startswith("error: Media file not found") and "Traceback" not in result.stderr
    assert not output.exists()


class TrackedFrame(np.ndarray):
    """A frame that counts how many frames are alive (held anywhere, views included)."""

    alive = 0


def tracked(frame: np.ndarray) -> TrackedFrame:
    frame = frame.view(TrackedFrame)
    TrackedFrame.alive += 1
    weakref.finalize(frame, lambda: setattr(TrackedFrame, "alive", TrackedFrame.alive - 1))
    return frame


@pytest.mark.parametrize("num_frames", [40, 160])
def test_stream_holds_a_bounded_number_of_frames(tiny_models, num_frames):
    pipeline = LipSyncPipeline(
        ZeroNoiseUNet(), tiny_models.whisper, PoolingCodec(), SyntheticFaceDetector(), LipSyncSettings(num_frames=8)
    )
    features = pipeline.prepare_audio(speech(num_frames / 25)[0])
    most_alive = 0

    def frames():
        nonlocal most_alive
        for index in range(num_frames):
            most_alive = max(most_alive, TrackedFrame.alive)
            yield index, tracked(face_frame(index, SIZE))

    synced = sum(1 for _ in pipeline.sync_frames(frames(), features, Fraction(25)))
    assert synced == num_frames
    # one window of 8 frames waits for its mouth, plus the frame being read
    assert most_alive <= 8 + 1


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_length(tiny_models_dir):
    """The repository's measuring script at a CI-friendly size; each run is its own process.

    Peak RSS settles after about a hundred frames (encoder look-ahead, allocator pools) and then stays flat, with
    +-20 MiB of noise from run to run; the frame count of the short run is above that warm-up.
    """
    command = [sys.executable, "scripts/measure_memory.py", "--frames", "60", "240", "--stub", "--json"]
    command += ["--models", str(tiny_models_dir)]
    result = subprocess.run(
        command, check=False, cwd=REPO_ROOT, env=SINGLE_THREAD_ENV, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    short, long = (json.loads(line) for line in result.stdout.splitlines() if line.startswith("{"))
    assert (short["generated"], long["generated"]) == (60, 240)
    assert long["peak_rss_mib"] <= 1.3 * short["peak_rss_mib"]
    # holding the decoded faces (0.75 MiB each) or the synced frames would add more than 130 MiB here
    assert long["peak_rss_mib"] - short["peak_rss_mib"] < 100
