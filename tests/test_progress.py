"""Progress that tells the truth: frames through every stage, a total known from the start, cancel between frames
(the pass that tracks every face included)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from helpers.pipeline import SyntheticFaceDetector, ZeroNoiseUNet, speech, write_clip, write_wav

from latentsync.errors import Cancelled
from latentsync.pipeline.lipsync import LipSyncPipeline
from latentsync.pipeline.progress import WorkCounter, num_model_frames
from latentsync.pipeline.settings import LipSyncSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# speaker "largest": the one-pass path, whose total is known before the whisper features are made
SETTINGS = LipSyncSettings(
    resolution=256, num_inference_steps=3, guidance_scale=1.0, num_frames=5, speaker="largest"
)


def pipeline(models, settings: LipSyncSettings = SETTINGS) -> LipSyncPipeline:
    return LipSyncPipeline(ZeroNoiseUNet(), models.whisper, models.vae, SyntheticFaceDetector(), settings)


@pytest.fixture
def clip(tmp_path):
    """16 frames at 30 fps, frames 4-11 without a face (longer than the tracker bridges); 16 frames of speech."""
    faceless = range(4, 12)
    video = write_clip(tmp_path / "clip.mp4", 16, Fraction(30), (160, 160), has_face=lambda index: index not in faceless)
    return video, write_wav(tmp_path / "speech.wav", speech(16 / 30))


def test_the_run_reports_every_stage_against_a_total_known_from_the_start(tmp_path, tiny_models, clip):
    events = []
    report = pipeline(tiny_models).run(*clip, tmp_path / "out.mp4", progress=lambda *event: events.append(event))
    assert report.num_frames == 16 and report.frames_without_face == 8
    totals = {total for _, _, total in events}
    # 16 output frames (detect + paste) and 14 model frames at 25 fps (encode + 3 steps + decode)
    assert totals == {2 * 16 + num_model_frames(16, Fraction(30)) * (2 + 3)} == {102}
    assert events[0] == ("audio", 0, 102) and events[-1][1:] == (102, 102)
    done = [done for _, done, _ in events]
    assert done == sorted(done)
    assert [stage for stage, _, _ in events[:3]] == ["audio", "detect", "detect"]
    assert {stage for stage, _, _ in events} == {"audio", "detect", "vae_encode", "denoise", "vae_decode", "paste"}
    # frame by frame in every stage: more events than frames, not one per window
    assert sum(stage == "paste" for stage, _, _ in events) == 16
    assert sum(stage == "denoise" for stage, _, _ in events) == 3 * report.num_windows


def test_a_speaker_plan_reports_the_pass_over_every_face_then_one_total_over_its_voices(tmp_path, tiny_models, clip):
    """speaker "auto" without a SyncNet tracks every face first (stage "faces", frame by frame against the video's
    16 frames), then syncs the plan's voice(s) in chained stages against one total."""
    events = []
    run = pipeline(tiny_models, SETTINGS.replace(speaker="auto"))
    run.run(*clip, tmp_path / "out.mp4", progress=lambda *event: events.append(event))
    tracking = [event for event in events if event[0] == "faces"]
    assert tracking == [("faces", done, 16) for done in range(17)] and events[: len(tracking)] == tracking
    syncing = events[len(tracking) :]
    assert len({total for _, _, total in syncing}) == 1 and syncing[0][2] > 16
    done = [done for _, done, _ in syncing]
    assert done == sorted(done) and done[-1] == syncing[-1][2]


def test_cancel_is_asked_while_every_face_is_tracked(tmp_path, tiny_models, clip):
    events = []

    def cancel() -> bool:
        return len(events) >= 3

    run = pipeline(tiny_models, SETTINGS.replace(speaker="auto"))
    with pytest.raises(Cancelled):
        run.run(*clip, tmp_path / "out.mp4", progress=lambda *e: events.append(e), cancel=cancel)
    assert events == [("faces", 0, 16), ("faces", 1, 16), ("faces", 2, 16)]
    assert not (tmp_path / "out.mp4").exists()


def test_cancel_is_asked_between_frames_before_any_model_work(tmp_path, tiny_models, clip):
    events = []

    def cancel() -> bool:
        return sum(stage == "detect" for stage, _, _ in events) >= 2

    with pytest.raises(Cancelled):
        pipeline(tiny_models).run(*clip, tmp_path / "out.mp4", progress=lambda *e: events.append(e), cancel=cancel)
    assert [stage for stage, _, _ in events] == ["audio", "detect", "detect"]
    assert not (tmp_path / "out.mp4").exists()


def test_counter_skips_the_model_work_of_frames_without_a_face():
    events = []
    counter = WorkCounter(lambda *event: events.append(event), None, num_output_frames=4, fps=Fraction(25), num_steps=2)
    assert counter.total == 2 * 4 + 4 * (2 + 2)
    counter.advance(1, "detect")
    counter.skip_model_frames(1)
    assert events == [("detect", 1, 24), ("detect", 5, 24)]
    unknown = WorkCounter(None, None, num_output_frames=None, fps=Fraction(25), num_steps=2)
    assert unknown.total == 0


def test_cli_bar_shows_the_stage_and_the_total_from_the_first_event():
    from latentsync._cli.lipsync import _ProgressBar

    bar = _ProgressBar()
    try:
        bar("audio", 0, 74)
        assert bar.bar.total == 74
        bar("denoise", 30, 74)
        assert bar.bar.n == 30 and "denoise" in str(bar.bar)
        assert bar.bar.smoothing == 0  # the ETA is the average rate since the start, not a recent burst
        bar("denoise", 74, 74)
        bar("detect", 3, 200)  # a run's lip sync after its pass over every face: a bar of its own
        assert (bar.bar.n, bar.bar.total) == (3, 200)
    finally:
        bar.close()
