"""The command line as a user meets it, in real subprocesses: signals, start-up, missing packages, messages, files.

Runs use the tiny random-weight models and the demo clip (`latentsync.demo`: the packaged portrait, found by the
default MediaPipe detector), so nothing here needs the fixtures.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.files import REPO_ROOT

from latentsync.demo import demo_frames, write_demo_clip
from latentsync.face.detectors import create_face_detector
from latentsync.media import VideoWriter, probe_audio, probe_video

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 600


def latentsync(*args: str, python_prefix: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *python_prefix, "-m", "latentsync", *map(str, args)]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        latentsync(*args), cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory) -> Path:
    return write_demo_clip(tmp_path_factory.mktemp("demo") / "face.mp4", seconds=2.0)


def test_demo_clip_has_a_face_the_default_detector_finds(demo_clip):
    detector = create_face_detector("mediapipe")
    frames = demo_frames(50)
    assert all(len(detector.detect(frame)) == 1 for frame in frames[::7])
    assert not np.array_equal(frames[0], frames[10])  # the head moves
    video = probe_video(demo_clip)
    assert (video.width, video.height, video.num_frames_estimate) == (288, 320, 50)
    assert probe_audio(demo_clip).duration == pytest.approx(2.0, abs=0.05)


def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("signal_number, code, message", [(signal.SIGTERM, 143, "Terminated."), (signal.SIGINT, 130, "Interrupted.")])
def test_a_signal_mid_run_removes_the_partial_output(tmp_path, tiny_models_dir, demo_clip, signal_number, code, message):
    output = tmp_path / "new" / "out.mp4"
    process = subprocess.Popen(
        latentsync("lipsync", "--video", demo_clip, "--output", output, "--models-dir", tiny_models_dir, "--threads", "1"),
        cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: output.parent.is_dir() and any(output.parent.glob(".out.*.partial.mp4")))
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == code, stderr
    assert stderr.rstrip().endswith(message) and "Traceback" not in stderr
    assert not output.parent.exists(), "the partial output and the folder made for it must be gone"


def test_ctrl_c_during_start_up_says_interrupted(tmp_path, tiny_models_dir, demo_clip):
    process = subprocess.Popen(
        latentsync("lipsync", "--video", demo_clip, "--output", tmp_path / "out.mp4", "--models-dir", tiny_models_dir),
        cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)  # importing torch and the models' code takes seconds
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130
    # the interrupt waits for the import it came in to end (the detector's runtime may have said hello by then)
    assert stderr.strip().splitlines()[-1] == "Interrupted." and "Traceback" not in stderr, stderr


def test_an_interrupt_during_an_import_waits_for_the_import(tmp_path):
    """Ctrl-C while a module is being imported is delivered once the import is over: raised inside it, it left NumPy
    or torch half-imported and the start-up failed with another error, or aborted (SIGABRT)."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.5)\n"
        "open(os.environ['IMPORTED_MARKER'], 'w').close()\n"
    )
    command = (
        "import time; from latentsync.errors import exit_with_status; "
        "exit_with_status(lambda: (__import__('slow_module'), time.sleep(30)))"
    )
    env = {**ENV, "PYTHONPATH": str(tmp_path), "IMPORTED_MARKER": str(tmp_path / "imported")}
    result = subprocess.run(
        [sys.executable, "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert (tmp_path / "imported").is_file()  # the import ran to its end
    assert result.returncode == 130 and result.stderr.strip() == "Interrupted.", result.stderr


@pytest.mark.parametrize("module, hint", [("torch", "scripts/install.sh"), ("accelerate", "install.sh --train")])
def test_a_missing_package_is_a_one_line_hint(tmp_path, module, hint):
    """The package is hidden from the import system (``sys.modules[name] = None`` makes importing it fail as if it
    were not installed)."""
    if module == "torch":
        command = "import sys; sys.modules['torch'] = None; from latentsync._cli import main; main(['lipsync', '-h'])"
    else:
        command = (
            "import sys; sys.modules['accelerate'] = None; from train.cli import main; "
            f"main(['stage2', '--config', 'tiny_stage2', 'run.output_dir={tmp_path / 'run'}', 'data.train_data_dir=x'])"
        )
    result = subprocess.run(
        [sys.executable, "-c", command], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{module}' is not installed" in lines[0] and hint in lines[0], result.stderr


def test_bad_numbers_are_refused_before_any_work(tmp_path, demo_clip):
    output = tmp_path / "out" / "out.mp4"
    for option, value in (("--guidance", "nan"), ("--output-fps", "inf"), ("--steps", "0")):
        result = run("lipsync", "--video", demo_clip, "--output", output, option, value)
        assert result.returncode == 2 and f"argument {option}:" in result.stderr
    assert not output.parent.exists()


def test_a_failed_run_removes_the_folders_it_created(tmp_path, tiny_models_dir, demo_clip):
    # models missing: refused before the folder is made
    output = tmp_path / "a" / "b" / "out.mp4"
    result = run("lipsync", "--video", demo_clip, "--output", output, "--models-dir", tmp_path / "no-models")
    assert result.returncode == 1 and "\nerror: The unet model was not found" in "\n" + result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "a").exists()
    # a failure while writing (no face under --no-face error): the folders made for the output are removed again
    faceless = tmp_path / "faceless.mp4"
    with VideoWriter(faceless, 25, 64, 64) as writer:
        for _ in range(10):
            writer.write_frame(np.full((64, 64, 3), 90, np.uint8))
    result = run(
        "lipsync", "--video", faceless, "--audio", demo_clip, "--output", output, "--models-dir", tiny_models_dir,
        "--no-face", "error", "--quiet",
    )  # fmt: skip
    assert result.returncode == 1 and "error: No face in output frame 0" in result.stderr, result.stderr
    assert not (tmp_path / "a").exists()


def test_score_checks_its_destinations_before_scoring(tmp_path, demo_clip):
    for option in ("--plot", "--json"):
        result = run("score", "--video", demo_clip, "--models-dir", tmp_path / "no-models", option, tmp_path / "x" / "o")
        # the destination is named, not the missing SyncNet the scoring would have needed first
        assert result.returncode == 1 and "Output folder" in result.stderr and "x" in result.stderr, result.stderr
        assert "stable_syncnet" not in result.stderr


def test_odd_sizes_and_short_audio(tmp_path, tiny_models_dir, demo_clip):
    """A 161x121 clip comes back 161x121; audio shorter than the video cuts it, with a warning saying how much."""
    frames = [frame[100:221, 60:221] for frame in demo_frames(20)]
    clip = tmp_path / "odd.mp4"
    with VideoWriter(clip, 25, 161, 121) as writer:
        for frame in frames:
            writer.write_frame(np.ascontiguousarray(frame))
    output = tmp_path / "out.mp4"
    result = run(
        "lipsync", "--video", clip, "--audio", demo_clip, "--output", output, "--models-dir", tiny_models_dir,
        "--steps", "1", "--num-frames", "5", "--threads", "1", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    video = probe_video(output)
    assert (video.width, video.height) == (161, 121)

    short_audio = tmp_path / "short.mp4"
    write_demo_clip(short_audio, seconds=0.4)
    result = run(
        "lipsync", "--video", demo_clip, "--audio", short_audio, "--output", output, "--models-dir", tiny_models_dir,
        "--steps", "1", "--num-frames", "5", "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cut = re.search(r"[\r\n]WARNING .*audio .* shorter than the video: its last ([0-9.]+) s are cut \(", result.stderr)
    assert cut and float(cut.group(1)) == pytest.approx(1.6, abs=0.1), result.stderr  # a whole line beside the bar
