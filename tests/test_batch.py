"""Batch lip sync: jobs files and folder pairs, and a batch of four rows (a video, a still photo, a damaged video, a
row with its own seed) with 1 and 2 workers and on a local Ray cluster, against single `lipsync` runs of the same
rows; a kill mid-batch, a changed setting and a deleted output on re-runs.

The clips are 240 x 240 crops of the fixtures' real talking heads (so the default MediaPipe detector finds the face
and the tiny random UNet really generates the mouth), a few frames long, one denoising step.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers.files import REPO_ROOT
from helpers.pipeline import decode_frames, write_wav

from latentsync._cli import main
from latentsync.errors import ConfigError
from latentsync.media import load_audio
from latentsync.media.video import VideoReader
from latentsync.pipeline.batch import RECORD_NAME, pair_folders, read_jobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CROP = 240  # side of the test clips
# (fixture clip, left, top, side) of the crop around the face in the 1080 x 1920 demo videos
FACES = {"demo1": (360, 480, 480), "demo2": (300, 220, 480)}
ROWS = ("talk", "photo", "broken", "seed7")  # the jobs file's rows, in order
GENERATED = ("talk", "photo", "seed7")
# Decoded frames this close are the same frames up to float rounding (see `assert_same_as_singles`).
SAME_FRAMES_DB = 50


def fast(models_dir: Path) -> list[str]:
    return ["--models-dir", str(models_dir), "--steps", "1", "--num-frames", "5", "--guidance", "1"]


def cropped_frames(assets_dir: Path, clip: str, count: int) -> list[np.ndarray]:
    import cv2

    left, top, side = FACES[clip]
    frames = []
    with VideoReader(assets_dir / f"{clip}_video.mp4") as reader:
        for _, rgb in reader.frames():
            frames.append(cv2.resize(rgb[top : top + side, left : left + side], (CROP, CROP), cv2.INTER_AREA))
            if len(frames) == count:
                return frames
    raise AssertionError(f"{clip} has fewer than {count} frames")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, assets_dir) -> Path:
    """talk.mp4 (8 frames) + talk.wav (0.32 s), photo.png + photo.wav (0.24 s), broken.mp4 (a cut-off file)."""
    import cv2

    folder = tmp_path_factory.mktemp("inputs")
    with av.open(str(folder / "talk.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = CROP
        stream.pix_fmt = "yuv420p"
        for frame in cropped_frames(assets_dir, "demo1", 8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    (photo,) = cropped_frames(assets_dir, "demo2", 1)
    cv2.imwrite(str(folder / "photo.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    write_wav(folder / "talk.wav", load_audio(assets_dir / "demo1_audio.wav")[: 16000 * 8 // 25][None])
    write_wav(folder / "photo.wav", load_audio(assets_dir / "demo2_audio.wav")[: 16000 * 6 // 25][None])
    (folder / "broken.mp4").write_bytes((folder / "talk.mp4").read_bytes()[:600])
    return folder


def write_jobs(folder: Path, inputs: Path, photo_seed: str = "") -> Path:
    """The four-row jobs file in ``folder`` (outputs in ``folder/out``, inputs by absolute path)."""
    rows = [
        ("talk.mp4", "talk.wav", "talk", ""),
        ("photo.png", "photo.wav", "photo", photo_seed),
        ("broken.mp4", "talk.wav", "broken", ""),
        ("talk.mp4", "photo.wav", "seed7", "7"),
    ]
    lines = ["video,audio,output,seed"]
    lines += [f"{inputs / video},{inputs / audio},out/{name}.mp4,{seed}" for video, audio, name, seed in rows]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobs.csv").write_text("\n".join(lines) + "\n")
    return folder / "jobs.csv"


def run_cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code


@pytest.fixture(scope="module")
def singles(tmp_path_factory, inputs, tiny_models_dir) -> dict[str, list[np.ndarray]]:
    """Decoded frames of single ``python -m latentsync lipsync`` runs of the rows that can run."""
    folder = tmp_path_factory.mktemp("singles")
    runs = {"talk": ("talk.mp4", "talk.wav", []), "photo": ("photo.png", "photo.wav", []),
            "seed7": ("talk.mp4", "photo.wav", ["--seed", "7"])}  # fmt: skip
    frames = {}
    for name, (video, audio, extra) in runs.items():
        output = folder / f"{name}.mp4"
        argv = ["--video", str(inputs / video), "--audio", str(inputs / audio), "--output", str(output)]
        assert run_cli("lipsync", *argv, *fast(tiny_models_dir), *extra, "--quiet") == 0
        frames[name] = decode_frames(output)
    return frames


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    mse = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_same_as_singles(out: Path, singles: dict, names=GENERATED) -> None:
    """Every frame of each output matches the single run's, up to float rounding that varies between processes.

    Measured: most runs give the same files bit for bit (batch rows with 1 and 2 workers and single `lipsync` runs
    hashed alike), but now and then one row (here the `seed7` row, in about one run of three) decodes 53 dB apart
    from its single run, while a different seed gives about 23 dB. It is not the encoder (x264 wrote the same frames
    to identical files four times over) nor the thread count (`--threads 1` and `2` gave identical files); the rest
    is CPU float rounding not pinned down yet, so the check is "the same frames", not "the same bytes"."""
    for name in names:
        frames = decode_frames(out / f"{name}.mp4")
        assert len(frames) == len(singles[name]), name
        assert min(psnr(a, b) for a, b in zip(frames, singles[name], strict=True)) >= SAME_FRAMES_DB, name


def record_entries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RECORD_NAME).read_text().splitlines()]


def report_lines(text: str) -> dict[str, str]:
    """Row name -> its line of the closing report."""
    lines = {}
    for line in text.splitlines():
        for number, name in enumerate(ROWS, start=2):
            if re.search(rf"jobs\.csv line {number}\b", line):
                lines[name] = line
    return lines


# ----------------------------------------------------------------------------------------------------------
# a batch of four rows, three ways


@pytest.fixture(scope="module")
def one_worker_batch(tmp_path_factory, inputs, tiny_models_dir):
    folder = tmp_path_factory.mktemp("one_worker")
    jobs = write_jobs(folder, inputs)
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = run_cli("batch", str(jobs), *fast(tiny_models_dir), "--workers", "1", "--quiet")
    return folder, code, stdout.getvalue()


@pytest.mark.parametrize("mode", ["1 worker", "2 workers", "ray local"])
def test_batch_matches_single_runs(mode, one_worker_batch, tmp_path, inputs, tiny_models_dir, singles, capsys):
    if mode == "1 worker":
        folder, code, report_text = one_worker_batch
    else:
        folder = tmp_path
        scale = ["--workers", "2"] if mode == "2 workers" else ["--ray", "local", "--workers", "2"]
        code = run_cli("batch", str(write_jobs(folder, inputs)), *fast(tiny_models_dir), *scale, "--quiet")
        report_text = capsys.readouterr().out
    assert code == 1  # a row failed
    assert_same_as_singles(folder / "out", singles)
    assert not (folder / "out" / "broken.mp4").exists()
    report = report_lines(report_text)
    assert report["broken"].startswith("failed") and "broken.mp4 is not a readable video" in report["broken"]
    assert all(report[name].startswith("done") for name in GENERATED)
    assert "(8 frames," in report["talk"] and "(6 frames," in report["photo"]
    assert "3 done, 0 skipped, 1 failed; 20 frames written" in report_text
    statuses = {Path(entry["key"]).stem: entry["status"] for entry in record_entries(folder / "out")}
    assert statuses == {"talk": "done", "photo": "done", "broken": "failed", "seed7": "done"}


def test_changed_setting_and_deleted_output_redo_only_their_rows(one_worker_batch, inputs, tiny_models_dir, capsys):
    folder, _, _ = one_worker_batch
    out = folder / "out"
    photo_before = decode_frames(out / "photo.mp4")
    (out / "talk.mp4").unlink()
    leftover, unrelated = out / ".photo.0123abcd.partial.mp4", out / ".other.0123abcd.partial.mp4"
    leftover.touch()
    unrelated.touch()
    jobs = write_jobs(folder, inputs, photo_seed="9")
    assert run_cli("batch", str(jobs), *fast(tiny_models_dir), "--quiet") == 1
    assert not leftover.exists() and unrelated.exists()  # a killed run's temporary file of a row is removed
    report = report_lines(capsys.readouterr().out)
    assert report["talk"].startswith("done") and report["photo"].startswith("done")
    assert report["seed7"].startswith("skipped") and report["broken"].startswith("failed")
    photo_after = decode_frames(out / "photo.mp4")
    assert max(psnr(a, b) for a, b in zip(photo_before, photo_after, strict=True)) < SAME_FRAMES_DB - 15


def test_killed_batch_resumes_with_the_unfinished_rows(tmp_path, inputs, tiny_models_dir, singles, capsys):
    jobs = write_jobs(tmp_path, inputs)
    record = tmp_path / "out" / RECORD_NAME
    command = [sys.executable, "-m", "latentsync", "batch", str(jobs), *fast(tiny_models_dir), "--quiet"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (record.is_file() and '"status": "done"' in record.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, "the batch ended before it was killed"
            time.sleep(0.02)
        process.kill()
    finally:
        process.wait()
    finished = {Path(entry["key"]).stem for entry in record_entries(tmp_path / "out") if entry["status"] == "done"}
    assert finished and finished != set(GENERATED)
    for output in (tmp_path / "out").glob("*.mp4"):  # whatever is there is complete
        assert len(decode_frames(output)) == len(singles[output.stem])

    assert run_cli("batch", str(jobs), *fast(tiny_models_dir), "--quiet") == 1
    report = report_lines(capsys.readouterr().out)
    assert {name for name in GENERATED if report[name].startswith("skipped")} == finished
    assert {name for name in GENERATED if report[name].startswith("done")} == set(GENERATED) - finished
    assert_same_as_singles(tmp_path / "out", singles)
    assert not list((tmp_path / "out").glob(".*partial*"))  # what the killed run left is gone


# ----------------------------------------------------------------------------------------------------------
# jobs files, folder pairs, the command line


def test_csv_jobs_parse_paths_and_settings(tmp_path):
    (tmp_path / "jobs.csv").write_text(
        "video,audio,output,steps,output-fps,resolution,face_index\n"
        "a.mp4,a.wav,out/a.mp4,5,30000/1001,auto,1\n"
        "photo.jpg,,out/b.mov,,,512,largest\n"
    )
    first, second = read_jobs(tmp_path / "jobs.csv")
    assert (first.video, first.audio, first.output) == (tmp_path / "a.mp4", tmp_path / "a.wav", tmp_path / "out/a.mp4")
    assert first.settings == {
        "num_inference_steps": 5, "output_fps": Fraction(30000, 1001), "resolution": None, "face_index": 1
    }  # fmt: skip
    assert second.audio is None and second.settings == {"resolution": 512, "face_index": "largest"}
    assert first.name == "jobs.csv line 2"


def test_jsonl_jobs_keep_json_values(tmp_path):
    row = {"video": "a.mp4", "output": "a.mp4", "guidance_scale": 2, "seed": "3"}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(row) + "\n\n")
    (row,) = read_jobs(tmp_path / "jobs.jsonl")
    assert row.settings == {"guidance_scale": 2, "seed": 3} and row.audio is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("video,output,step\na.mp4,o.mp4,3\n", "jobs.csv line 2: unknown column 'step'; the columns are video, audio"),
        ("video,output,seed\na.mp4,o.mp4,1\nb.mp4,p.mp4,x\n", "jobs.csv line 3: seed must be a whole number between 0 and 2\\^64-1, got 'x'"),
        ("video,output,num_frames\na.mp4,o.mp4,30\n", "line 2: num_frames must be a whole number between 5 and 24, got 30"),
        ("video,output,no_face\na.mp4,o.mp4,skip\n", "no_face must be 'passthrough' or 'error', got 'skip'"),
        ("video,audio,output\na.mp4,a.wav,\n", "line 2: the 'output' column is empty"),
        ("video,output\na.mp4,o.mp4,extra\n", "line 2: more cells than the header has columns"),
        ("video,output\n", "has no rows"),
    ],
)
def test_bad_jobs_name_the_line_and_the_problem(tmp_path, text, message):
    (tmp_path / "jobs.csv").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        read_jobs(tmp_path / "jobs.csv")


def test_pair_folders_by_name(tmp_path, caplog):
    for name in ("talk.mp4", "photo.jpg", "alone.mov", "talk.wav", "photo.mp3", "notes.txt"):
        (tmp_path / name).touch()
    rows = pair_folders(tmp_path, tmp_path, tmp_path / "out")
    assert [(row.video.name, row.audio.name, row.output) for row in rows] == [
        ("photo.jpg", "photo.mp3", tmp_path / "out" / "photo.mp4"),
        ("talk.mp4", "talk.wav", tmp_path / "out" / "talk.mp4"),
    ]
    assert "alone" in caplog.text
    (tmp_path / "talk.flac").touch()
    with pytest.raises(ConfigError, match="talk.flac and talk.wav .* have the same name"):
        pair_folders(tmp_path, tmp_path, tmp_path / "out")


def test_help_shows_a_talking_photo_example(capsys):
    assert run_cli("batch", "--help") == 0
    text = capsys.readouterr().out
    assert "still image" in text and "portrait.jpg,greeting.wav" in text and "--gpus-per-row" in text


@pytest.mark.parametrize("speaker", ["largest", "auto"])
def test_a_row_reports_its_lip_sync_progress(tmp_path, inputs, tiny_models_dir, speaker):
    """What the overall bar shows of the running row ("now talk 40%"): the lip sync's own units, rising to the
    end (with speaker auto, not the pass over every face before it)."""
    from latentsync.pipeline.batch import RowJob, lipsync_row
    from latentsync.pipeline.loading import ModelSources
    from latentsync.pipeline.settings import LipSyncSettings
    from latentsync.pipeline.speed import EXACT

    settings = LipSyncSettings(num_inference_steps=1, num_frames=5, guidance_scale=1.0, speaker=speaker)
    job = RowJob(ModelSources(models_dir=tiny_models_dir), settings, EXACT, str(inputs / "talk.mp4"),
                 str(inputs / "talk.wav"), str(tmp_path / "talk.mp4"))  # fmt: skip
    reports = []
    assert lipsync_row(job, lambda done, total: reports.append((done, total)))["frames"] == 8
    assert len(reports) > 8 and len({total for _, total in reports}) == 1
    assert [done for done, _ in reports] == sorted(done for done, _ in reports) and reports[-1][0] == reports[-1][1]
