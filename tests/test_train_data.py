"""The data pipeline (`python -m train data prepare`) on excerpts of the shared demo clips, a clip with two hard
cuts made from them, and a broken file: the same clips in one process, two worker processes and a local Ray
cluster; resuming after a kill; a changed option redoing only its step and the ones after it; segmentation that
keeps data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers.media import delay

from train.data.pipeline import DEFAULT_MIN_SYNC_CONFIDENCE, PipelineOptions, run_pipeline
from train.data.segments import balanced_pieces, face_runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Small and short on purpose: frames are stored at most 256 pixels high, segments are 1-2 s.
OPTIONS = PipelineOptions(max_side=256, min_seconds=1.0, max_seconds=2.0, min_face_size=0.0, workers=1)
# The cut clip's scenes: (source, first frame, frames); the last is shorter than OPTIONS.min_seconds.
CUT_SCENES = (("demo2", 0, 40), ("demo1", 40, 30), ("demo2", 40, 15))


def test_balanced_pieces():
    assert balanced_pieces(0, 250, 125, 250) == [(0, 250)]
    assert balanced_pieces(0, 275, 125, 250) == [(0, 138), (138, 275)]  # 11 s: 5.5 + 5.5 s, not 10 + (dropped) 1
    assert balanced_pieces(10, 760, 125, 250) == [(10, 260), (260, 510), (510, 760)]
    assert balanced_pieces(0, 275, 200, 250) == [(0, 250)]  # min > max / 2: the 1 s rest cannot make a piece
    assert balanced_pieces(0, 124, 125, 250) == []
    for length in range(125, 1000, 7):
        pieces = balanced_pieces(0, length, 125, 250)
        assert pieces[0][0] == 0 and pieces[-1][1] == length  # nothing left over when min <= max / 2
        assert all(125 <= last - first <= 250 for first, last in pieces)


def test_face_runs():
    has_face = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=bool)
    assert face_runs(has_face, 0, 9) == [(0, 2), (3, 6), (8, 9)]
    assert face_runs(has_face, 4, 8) == [(4, 6)]
    assert face_runs(np.zeros(5, dtype=bool), 0, 5) == []


# ----------------------------------------------------------------------------------------------------------
# Inputs


def _excerpt(assets_dir: Path, name: str, first: int, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames ``first .. first + count - 1`` of a shared clip at half size (the reference's face-size rule still
    passes), with their audio."""
    import cv2

    from latentsync.media import VideoReader, load_audio

    path = assets_dir / f"{name}_video.mp4"
    frames = []
    with VideoReader(path) as reader:
        for _, frame in reader.frames_at_fps(25, start_index=first):
            frames.append(cv2.resize(frame, (reader.width // 2, reader.height // 2), interpolation=cv2.INTER_AREA))
            if len(frames) == count:
                break
    return frames, load_audio(path, 16000)[first * 640 : (first + count) * 640]


def _write(path: Path, frames: list[np.ndarray], audio: np.ndarray) -> Path:
    from latentsync.media import AudioArray, VideoWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with VideoWriter(path, 25, width, height, audio=AudioArray(audio, 16000)) as writer:
        for frame in frames:
            writer.write_frame(frame)
    return path


@pytest.fixture(scope="module")
def excerpts(assets_dir) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """The first 3.2 s of demo1 and demo2 at half size."""
    return {name: _excerpt(assets_dir, name, 0, 80) for name in ("demo1", "demo2")}


@pytest.fixture(scope="module")
def raw(excerpts, tmp_path_factory) -> Path:
    """demo1 and demo2 (2.4 s each), ``speaker/cuts.mp4`` (three scenes: 1.6, 1.2 and 0.6 s) and a broken file."""
    raw = tmp_path_factory.mktemp("raw")
    for name, (frames, audio) in excerpts.items():
        _write(raw / f"{name}.mp4", frames[:60], audio[: 60 * 640])
    scenes = [(excerpts[name][0][first : first + count], excerpts[name][1][first * 640 : (first + count) * 640])
              for name, first, count in CUT_SCENES]  # fmt: skip
    frames = [frame for scene_frames, _ in scenes for frame in scene_frames]
    _write(raw / "speaker" / "cuts.mp4", frames, np.concatenate([audio for _, audio in scenes]))
    (raw / "broken.mp4").write_bytes(os.urandom(3000))
    return raw


def _clips(output: Path) -> dict[str, str]:
    """The training clips of a run: relative path -> SHA-256 of the file."""
    return {str(path.relative_to(output)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted((output / "clips").glob("*.mp4"))}  # fmt: skip


def _lists(output: Path) -> tuple[str, str, list[dict]]:
    meta = [json.loads(line) for line in (output / "meta.jsonl").read_text().splitlines()]
    return (output / "fileslist.txt").read_text(), (output / "val_fileslist.txt").read_text(), meta


@pytest.fixture(scope="module")
def in_process(raw, tmp_path_factory):
    output = tmp_path_factory.mktemp("workers1")
    return output, run_pipeline(raw, output, replace(OPTIONS, keep_intermediate=True))


# ----------------------------------------------------------------------------------------------------------
# One run


def test_pipeline_makes_aligned_clips_of_every_scene_longer_than_min(in_process):
    from latentsync.media import load_audio, probe_video

    output, summary = in_process
    train, val, meta = _lists(output)
    assert sorted(train.split() + val.split()) == sorted(_clips(output)) == sorted(entry["path"] for entry in meta)
    assert {entry["id"] for entry in meta} == {
        "demo1_s000_00", "demo1_s000_01", "demo2_s000_00", "demo2_s000_01",  # 2.4 s: two balanced 1.2-s pieces
        "speaker_cuts_s000_00",  # 1.6 s scene: one piece
        "speaker_cuts_s001_00",  # 1.2 s scene: one piece
    }  # fmt: skip
    for entry in meta:
        info = probe_video(output / entry["path"])
        assert (info.width, info.height, info.fps) == (256, 256, 25)
        assert 1.0 <= entry["seconds"] <= 2.0
        assert abs(len(load_audio(output / entry["path"], 16000)) / 16000 - entry["seconds"]) < 0.05
        assert {"sharpness", "brightness", "face_size"} <= set(entry)
    table = summary.table()
    assert "dropped at check: unreadable" in table
    assert "dropped at segments: scene shorter than min-seconds      1   0.0002" in table  # the 0.6-s scene
    assert f"{len(meta)} training clips" in table


def test_workers_and_ray_give_the_same_clips(raw, in_process, tmp_path):
    """Two local worker processes and a local Ray cluster (2 CPUs) write the same lists and the same bytes."""
    pytest.importorskip("ray")
    output, _ = in_process
    expected_clips, expected_lists = _clips(output), _lists(output)
    modes = {"workers2": replace(OPTIONS, workers=2), "ray": replace(OPTIONS, workers=2, ray="local")}
    for mode, options in modes.items():
        run_pipeline(raw, tmp_path / mode, options)
        assert _clips(tmp_path / mode) == expected_clips, mode
        assert _lists(tmp_path / mode) == expected_lists, mode  # file lists, and every number of meta.jsonl
        assert not (tmp_path / mode / "intermediate").exists()  # removed without keep_intermediate


def _cli(raw: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", "data", "prepare", "--input", str(raw), "--output", str(output),
            "--max-side", "256", "--min-seconds", "1", "--max-seconds", "2", "--min-face-size", "0",
            *extra]  # fmt: skip


def test_a_killed_run_resumes_without_redoing_finished_clips(raw, in_process, tmp_path):
    output = tmp_path / "out"
    process = subprocess.Popen(_cli(raw, output, "--workers", "2"), cwd=REPO_ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    align_record = output / "intermediate" / "05_align" / "manifest.jsonl"
    deadline = time.monotonic() + 600
    while not (align_record.is_file() and align_record.read_text().count("\n") >= 2):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {json.loads(line)["key"] for line in align_record.read_text().splitlines() if line.endswith("}")}
    assert 2 <= len(finished) < 6

    summary = run_pipeline(raw, output, replace(OPTIONS, keep_intermediate=True))
    steps = {step.name: step for step in summary.steps}
    assert steps["resample"].done == 0 and steps["faces"].done == 0  # finished before the kill
    assert steps["align"].skipped == len(finished) and steps["align"].done == 6 - len(finished)
    assert _clips(output) == _clips(in_process[0])


def test_a_changed_option_redoes_its_step_and_the_later_ones_only(raw, in_process, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(in_process[0], output)
    summary = run_pipeline(raw, output, replace(OPTIONS, min_seconds=0.5, keep_intermediate=True))
    done = {step.name: step.done for step in summary.steps}
    assert done == {"check": 0, "resample": 0, "scenes": 0, "faces": 0, "segments": 3, "align": 7, "quality": 7}
    assert "speaker_cuts_s002_00" in {clip["id"] for clip in summary.clips}  # the 0.6-s scene is long enough now
    again = run_pipeline(raw, output, replace(OPTIONS, min_seconds=0.5, keep_intermediate=True))
    assert all(step.done == 0 for step in again.steps)


# ----------------------------------------------------------------------------------------------------------
# Detection gaps


def test_a_detection_gap_longer_than_the_bridge_splits_the_segment(excerpts, tmp_path):
    """Hide the face for 5 frames (bridged by the tracker) and later for 6 (too long): the segment is cut at the 6."""
    from latentsync.face.detectors import create_face_detector

    frames, audio = list(excerpts["demo1"][0][:60]), excerpts["demo1"][1][: 60 * 640]
    x1, y1, x2, y2 = create_face_detector().detect(frames[0])[0].box.astype(int)
    pad = (x2 - x1) // 2
    for index in [*range(10, 15), *range(30, 36)]:
        frames[index] = frames[index].copy()
        frames[index][max(y1 - pad, 0) : y2 + pad, max(x1 - pad, 0) : x2 + pad] = 128
    _write(tmp_path / "raw" / "gaps.mp4", frames, audio)
    options = replace(OPTIONS, min_seconds=0.4, max_seconds=2.4, keep_intermediate=True,
                      steps=["check", "resample", "scenes", "faces", "segments"])  # fmt: skip
    summary = run_pipeline(tmp_path / "raw", tmp_path / "out", options)
    scenes, segments = summary.steps[2].kept[0]["scenes"], summary.steps[-1].kept
    assert scenes == [[0, 60]]
    assert [(s["first_frame"], s["stop_frame"]) for s in segments] == [(0, 30), (36, 60)]
    assert summary.steps[-1].dropped == [{"id": "gaps_s000", "reason": "no face", "seconds": 6 / 25, "detail": ""}]


# ----------------------------------------------------------------------------------------------------------
# Command line


def test_the_sync_filter_has_a_default_on_the_zero_to_one_scale():
    assert 0 < DEFAULT_MIN_SYNC_CONFIDENCE < 1
    assert PipelineOptions(syncnet="x.pt").min_sync_confidence == DEFAULT_MIN_SYNC_CONFIDENCE


def test_nothing_kept_is_an_error_with_the_table(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "broken.mp4").write_bytes(os.urandom(3000))
    run = subprocess.run(_cli(tmp_path / "raw", tmp_path / "out", "--workers", "1"), cwd=REPO_ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 1
    assert "dropped at check: unreadable" in run.stdout
    assert "No training clip was kept" in run.stderr


def test_the_text_filter_drops_a_captioned_clip_and_keeps_the_clean_one(in_process, tmp_path):
    """Real OCR (PaddleOCR's models from rapidocr_onnxruntime) on an aligned clip, and on it with a caption."""
    import cv2

    from train.data.steps import Dropped, read_frames, read_audio, step_text, write_clip

    pytest.importorskip("rapidocr_onnxruntime", reason="the optional text filter's package")
    output, summary = in_process
    clean = dict(summary.clips[0])
    captioned = tmp_path / "captioned.mp4"
    frames = [cv2.putText(frame.copy(), "Hello there", (30, 220), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2)
              for frame in read_frames(clean["path"])]  # fmt: skip
    write_clip(captioned, frames, read_audio(clean["path"]))
    kept = step_text(clean, tmp_path, OPTIONS, lambda done, total: None).kept[0]
    assert kept["text_fraction"] == 0.0
    with pytest.raises(Dropped, match="text covers 0.0"):
        step_text({**clean, "path": str(captioned)}, tmp_path, OPTIONS, lambda done, total: None)


# ----------------------------------------------------------------------------------------------------------
# Sync filter, with the tiny StableSyncNet that learned sync on the demo clips

TRAINED_SYNCNET = REPO_ROOT / "tests" / "assets" / "stable_syncnet_tiny_trained.pt"
HELD_OUT_DEMO2 = 351  # demo2's first frame that the trained SyncNet never saw (its last 6 s)


@pytest.fixture(scope="module")
def aligned_demo2(assets_dir, tmp_path_factory) -> dict:
    """demo2's last 6 s (held out from the trained SyncNet's training) at half size with the voice of its own lips
    (`latentsync.demo.lip_voice`), tracked and aligned as one clip. 6 s, not less: over a 3-s clip another voice
    like this one follows the lips at some offset within +-15 frames by chance often enough to score as high as
    the clip's own (measured on demo1's last 3 s: 0.07-0.34 against its own 0.24)."""
    from latentsync.demo import write_lip_voiced_clip
    from latentsync.face.detectors import create_face_detector
    from train.data.steps import step_align, step_faces

    frames, _ = _excerpt(assets_dir, "demo2", HELD_OUT_DEMO2, 151)
    folder = tmp_path_factory.mktemp("aligned")
    path = write_lip_voiced_clip(frames, folder / "demo2.mp4", create_face_detector())
    record = {"id": "demo2", "path": str(path), "frames": len(frames), "seconds": len(frames) / 25, "scale": 1.0,
              "scenes": [[0, len(frames)]]}  # fmt: skip
    record = step_faces(record, folder, OPTIONS, lambda done, total: None).kept[0]
    segment = {**record, "first_frame": 0, "stop_frame": record["frames"]}
    return step_align(segment, folder, OPTIONS, lambda done, total: None).kept[0]


def _with_audio(record: dict, audio: np.ndarray, path: Path) -> dict:
    from train.data.steps import read_frames, write_clip

    write_clip(path, read_frames(record["path"]), audio)
    return {**record, "path": str(path)}


@pytest.mark.skipif(not TRAINED_SYNCNET.is_file(), reason="tests/assets/stable_syncnet_tiny_trained.pt not there")
def test_the_sync_filter_keeps_synced_clips_and_drops_shifted_or_foreign_audio(aligned_demo2, assets_dir, tmp_path):
    from latentsync.demo import lip_voice
    from latentsync.face.detectors import create_face_detector
    from latentsync.face.mouth import mouth_openings
    from train.data.steps import Dropped, read_audio, step_sync

    options = replace(OPTIONS, syncnet=str(TRAINED_SYNCNET))  # the default thresholds
    report = lambda done, total: None  # noqa: E731
    kept = step_sync(aligned_demo2, tmp_path, options, report).kept[0]
    assert kept["sync_confidence"] >= DEFAULT_MIN_SYNC_CONFIDENCE and abs(kept["sync_offset"]) <= 1

    audio = read_audio(aligned_demo2["path"])
    delayed = _with_audio(aligned_demo2, delay(audio, 8)[: len(audio)], tmp_path / "delayed.mp4")
    with pytest.raises(Dropped, match=r"sync offset.*\|[78]\| > 6"):
        step_sync(delayed, tmp_path, options, report)
    shifted = step_sync(delayed, tmp_path, replace(options, max_sync_offset=10), report).kept[0]
    assert shifted["sync_offset"] in (7, 8) and shifted["frames"] == aligned_demo2["frames"] - shifted["sync_offset"]

    demo1_frames, _ = _excerpt(assets_dir, "demo1", 0, aligned_demo2["frames"])
    demo1_voice = lip_voice(mouth_openings(demo1_frames, create_face_detector()))
    foreign = _with_audio(aligned_demo2, demo1_voice[: len(audio)], tmp_path / "foreign.mp4")
    with pytest.raises(Dropped, match="sync confidence"):
        step_sync(foreign, tmp_path, options, report)
