"""The data pipeline (`python -m train data prepare`) on the shared demo clip, plus a broken file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from train.data.pipeline import PipelineOptions, run_pipeline, segment_ranges


def test_segment_ranges():
    assert segment_ranges(0, 250, 125, 250) == [(0, 250)]
    assert segment_ranges(10, 400, 125, 250) == [(10, 260), (260, 400)]
    assert segment_ranges(0, 300, 125, 250) == [(0, 250)]  # the 50-frame rest is too short
    assert segment_ranges(0, 100, 125, 250) == []


def _first_seconds(source: Path, target: Path, seconds: int) -> None:
    """The first seconds of a clip at half size (the face detector still finds the face), with its audio."""
    import cv2

    from latentsync.media import AudioArray, VideoReader, VideoWriter, load_audio

    audio = load_audio(source, 16000)[: seconds * 16000]
    with VideoReader(source) as reader, VideoWriter(target, 25, reader.width // 2, reader.height // 2,
                                                    audio=AudioArray(audio, 16000)) as writer:  # fmt: skip
        for index, (_, frame) in enumerate(reader.frames_at_fps(25)):
            if index == seconds * 25:
                break
            writer.write_frame(cv2.resize(frame, (reader.width // 2, reader.height // 2), interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="module")
def prepared(assets_dir, tmp_path_factory):
    from latentsync.tiny import make_tiny_models

    root = tmp_path_factory.mktemp("data")
    raw = root / "raw"
    (raw / "speaker").mkdir(parents=True)
    _first_seconds(assets_dir / "demo1_video.mp4", raw / "speaker" / "demo1.mp4", seconds=3)
    (raw / "broken.mp4").write_bytes(os.urandom(3000))
    models = make_tiny_models(root / "models")
    options = PipelineOptions(
        resolution=256, max_side=0, min_seconds=2.0, max_seconds=2.0, syncnet=str(models["syncnet"]),
        min_sync_confidence=0.0, whisper=str(models["whisper"]), steps=None,
    )  # fmt: skip
    options.steps = [*options.selected_steps(), "motion", "text"]
    summary = run_pipeline(raw, root / "out", options)
    return root, options, summary


def test_pipeline_turns_the_clip_into_aligned_training_clips(prepared):
    from latentsync.media import load_audio, probe_video

    root, _, summary = prepared
    out = root / "out"
    listed = (out / "fileslist.txt").read_text().split() + (out / "val_fileslist.txt").read_text().split()
    meta = [json.loads(line) for line in (out / "meta.jsonl").read_text().splitlines()]
    assert len(listed) == len(meta) == len(summary.clips) >= 1
    for entry in meta:
        info = probe_video(out / entry["path"])
        assert (info.width, info.height, info.fps) == (256, 256, 25)
        assert 2.0 - 0.7 <= entry["seconds"] <= 2.0  # a sync offset may cut up to 15 frames
        assert "sync_confidence" in entry and "motion" in entry and "text_fraction" in entry
        samples = load_audio(out / entry["path"], 16000)
        assert abs(len(samples) / 16000 - entry["seconds"]) < 0.05
        assert entry["path"].startswith("04_sync/speaker_demo1_s")
    assert list((out / "cache").glob("whisper-*/*.safetensors")) and list((out / "cache/mel").glob("*.safetensors"))


def test_broken_file_is_dropped_and_reported(prepared):
    _, _, summary = prepared
    check = summary.steps[0]
    assert check.name == "check" and len(check.kept) == 1
    assert [Path(d["path"]).name for d in check.dropped] == ["broken.mp4"]
    table = summary.table()
    assert "dropped at check: MediaError: 1" in table and "hours" in table


def test_a_second_run_resumes_from_the_manifests(prepared, monkeypatch):
    import train.data.pipeline as pipeline

    root, options, first = prepared

    def must_not_run(*args):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(pipeline, "_STEP_FUNCTIONS", {name: must_not_run for name in pipeline._STEP_FUNCTIONS})
    monkeypatch.setattr(pipeline, "_SyncScorer", lambda options: must_not_run)
    again = run_pipeline(root / "raw", root / "out", options)
    assert [c["path"] for c in again.clips] == [c["path"] for c in first.clips]
