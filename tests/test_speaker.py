"""Choosing who speaks: --speaker forms, plans, the chained synthesis pass, speaker maps, the speaker timeline.

Scenes come from the real demo clips (`face_scenes`): demo1 (face 0, left, 90 px) and demo2 (face 1, right, 60 px).
Mechanics run with `ZeroNoiseUNet` and `PoolingCodec` (the re-synced mouth is a blurred copy, visibly different);
where the voice must matter, the tiny random UNet runs (its output depends on the audio features).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from helpers.face_scenes import speaking_in_turns, two_face_scene, write_scene
from helpers.files import REPO_ROOT
from helpers.pipeline import PoolingCodec, ZeroNoiseUNet, decode_frames, speech, write_wav

from latentsync.errors import ConfigError, NoFaceError
from latentsync.face.detectors import FaceFilter, create_face_detector
from latentsync.face.search import FaceSearch
from latentsync.face.tracks import FaceTrackSet
from latentsync.pipeline.lipsync import LipSyncPipeline
from latentsync.pipeline.settings import LipSyncSettings
from latentsync.speaker import (
    SpeakerChoice,
    load_speaker_map,
    parse_speaker,
    plan_auto,
    plan_choice,
    plan_map,
    speaker_timeline,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (480, 270)
NUM_FRAMES = 10
FPS = Fraction(25)


@pytest.fixture(scope="module")
def detector():
    return create_face_detector("mediapipe", face_filter=FaceFilter.for_min_height(32))


@pytest.fixture(scope="module")
def scene(assets_dir, detector):
    """Frames, the face boxes per frame (as tracked; the heads move in their cut-outs), and the tracks."""
    frames, _ = two_face_scene(assets_dir, NUM_FRAMES, SIZE, heights=(90, 60))
    tracker = FaceTrackSet(FaceSearch(detector))
    for frame in frames:
        tracker.update(frame)
    assert [t.track_id for t in tracker.tracks] == [0, 1]
    boxes = [[track.at(index).box for track in tracker.tracks] for index in range(NUM_FRAMES)]
    return frames, boxes, tracker.tracks


def head(box: np.ndarray, scale: float = 2.0) -> tuple[slice, slice]:
    """Rows and columns of a square ``scale`` times the face box around it: all that a paste of it may touch (the
    aligned crop reaches about 1.7 box heights)."""
    centre, half = (box[:2] + box[2:]) / 2, scale * (box[3] - box[1]) / 2
    (left, top), (right, bottom) = (centre - half).astype(int), (centre + half).astype(int) + 1
    return slice(max(top, 0), bottom), slice(max(left, 0), right)


def mouth(box: np.ndarray) -> tuple[slice, slice]:
    x1, y1, x2, y2 = box.astype(int)
    return slice((y1 + y2) // 2, y2), slice(x1, x2)


def synced(pipeline, frames, plan, features):
    return list(pipeline.sync_plan(enumerate(frames), plan, features, FPS))


def changed_faces(frames, outputs, boxes) -> list[bool]:
    """Per face: whether its mouth changed; and everything outside the changed faces' heads is bit-identical."""
    changed = []
    for which in range(2):
        difference = np.mean([np.abs(o[mouth(b[which])].astype(int) - f[mouth(b[which])]).mean()
                              for f, o, b in zip(frames, outputs, boxes)])  # fmt: skip
        changed.append(bool(difference > 2.0))
    for frame, output, frame_boxes in zip(frames, outputs, boxes):
        untouched = np.ones(frame.shape[:2], bool)
        for which, box in enumerate(frame_boxes):
            if changed[which]:
                untouched[head(box)] = False
        assert np.array_equal(frame[untouched], output[untouched])  # the face not chosen: bit-identical
    return changed


@pytest.fixture(scope="module")
def stub_pipeline(tiny_models, detector):
    settings = LipSyncSettings(resolution=256, num_inference_steps=1, guidance_scale=1.0, num_frames=5)
    return LipSyncPipeline(ZeroNoiseUNet(), tiny_models.whisper, PoolingCodec(), detector, settings)


def test_speaker_forms():
    assert parse_speaker("auto") == SpeakerChoice("auto")
    assert parse_speaker("3") == SpeakerChoice("id", track_id=3)
    assert parse_speaker("point:320,180@1.5") == SpeakerChoice("point", where=(320.0, 180.0), seconds=1.5)
    assert str(parse_speaker("box:1,2,30,40")) == "box:1,2,30,40"
    for bad in ("loudest", "point:1", "box:5,5,1,1", "point:a,b", "-1", "point:1,2@-3"):
        with pytest.raises(ConfigError, match="speaker"):
            parse_speaker(bad)
    with pytest.raises(ConfigError, match="speaker"):
        LipSyncSettings(speaker="nobody")


@pytest.mark.parametrize(
    "speaker, expected",
    [
        ("point:140,140", [True, False]),  # inside demo1's face
        ("point:346,121@0.2", [False, True]),  # inside demo2's face, at 0.2 s
        ("box:300,80,400,170", [False, True]),
        ("0", [True, False]),
        ("all", [True, True]),
        ("largest", [True, False]),
    ],
)
def test_the_chosen_face_changes_and_the_other_stays_bit_identical(stub_pipeline, scene, speaker, expected):
    frames, boxes, tracks = scene
    plan = plan_choice(parse_speaker(speaker), tracks, NUM_FRAMES, FPS)
    features = {None: stub_pipeline.prepare_audio(speech(NUM_FRAMES / 25)[0])}
    assert changed_faces(frames, synced(stub_pipeline, frames, plan, features), boxes) == expected


def test_a_place_without_a_face_is_an_error(scene):
    _, _, tracks = scene
    with pytest.raises(NoFaceError, match="no face at point:5,5"):
        plan_choice(parse_speaker("point:5,5"), tracks, NUM_FRAMES, FPS)
    with pytest.raises(NoFaceError, match="no face track 7; the tracks are 0, 1"):
        plan_choice(parse_speaker("7"), tracks, NUM_FRAMES, FPS)


def test_a_two_voice_map_resyncs_each_face_with_its_voice(tmp_path, tiny_models, detector, scene):
    frames, boxes, tracks = scene
    settings = LipSyncSettings(resolution=256, num_inference_steps=1, guidance_scale=1.0, num_frames=5)
    pipeline = LipSyncPipeline(tiny_models.unet, tiny_models.whisper, tiny_models.vae, detector, settings)
    voices = {"a": speech(NUM_FRAMES / 25)[0], "b": np.random.default_rng(0).normal(0, 0.3, NUM_FRAMES * 640)}
    paths = {name: write_wav(tmp_path / f"{name}.wav", samples[None].astype(np.float32))
             for name, samples in voices.items()}  # fmt: skip
    features = {path: pipeline.prepare_audio(samples) for path, samples in zip(paths.values(), voices.values())}
    entries = [{"face": "0", "audio": "a.wav"}, {"face": "point:346,121", "audio": "b.wav"}]
    (tmp_path / "map.json").write_text(json.dumps({"faces": entries}))
    (tmp_path / "map.csv").write_text('face,audio,start,end\n0,a.wav,,\n"point:346,121",b.wav,,\n')
    assert load_speaker_map(tmp_path / "map.json") == load_speaker_map(tmp_path / "map.csv")
    plan = plan_map(load_speaker_map(tmp_path / "map.json"), tracks, NUM_FRAMES, FPS)
    both = synced(pipeline, frames, plan, {None: None, **features})
    assert changed_faces(frames, both, boxes) == [True, True]

    # each face as the map's only entry with its own voice, and with the other voice
    def alone(face: str, voice: str):
        entries = load_speaker_map(tmp_path / "map.json")
        (entry,) = [e for e in entries if str(e.face) == face]
        entry = type(entry)(entry.face, paths[voice])
        return synced(pipeline, frames, plan_map([entry], tracks, NUM_FRAMES, FPS), features)

    for which, face, own, other in ((0, "0", "a", "b"), (1, "point:346,121", "b", "a")):
        region = [head(b[which]) for b in boxes]
        assert all(np.array_equal(x[r], y[r]) for x, y, r in zip(both, alone(face, own), region))
        assert not all(np.array_equal(x[r], y[r]) for x, y, r in zip(both, alone(face, other), region))


def test_map_times_and_errors(tmp_path, scene):
    _, _, tracks = scene
    (tmp_path / "v.wav").write_bytes(b"")
    (tmp_path / "times.csv").write_text("face,audio,start,end\n0,,0,0.2\n1,,0.2,\n")
    plan = plan_map(load_speaker_map(tmp_path / "times.csv"), tracks, NUM_FRAMES, FPS)
    assert [(v.track.track_id, np.flatnonzero(v.frames).tolist()) for v in plan.voices] == [
        (0, [0, 1, 2, 3, 4]), (1, [5, 6, 7, 8, 9])
    ]  # fmt: skip
    for name, text, message in (
        ("bad.csv", "who,audio\n0,v.wav\n", "needs a 'face'"),
        ("missing.json", '[{"face": "0", "audio": "nope.wav"}]', "does not exist"),
        ("auto.json", '[{"face": "auto"}]', "a face is an ID"),
        ("order.csv", "face,start,end\n0,2,1\n", "must come after"),
        ("empty.json", "[]", "no entries"),
        ("map.txt", "0", ".json or .csv"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_speaker_map(tmp_path / name)
    (tmp_path / "twice.csv").write_text("face,audio\n0,\n0,v.wav\n")
    with pytest.raises(ConfigError, match="two voices at the same time"):
        plan_map(load_speaker_map(tmp_path / "twice.csv"), tracks, NUM_FRAMES, FPS)


def test_speaker_timeline_follows_the_most_confident_face_in_segments():
    starts = np.arange(0, 84, 2)
    # face 0 in sync for the first 40 frames, face 1 after; one stray window of face 1 inside face 0's turn
    first = np.where(starts < 40, 0.3, 0.05)
    second = np.where(starts < 40, 0.1, 0.25)
    second[5] = 0.9
    timeline = speaker_timeline({0: (starts, first), 1: (starts, second)}, 100, window=16, min_segment_frames=25)
    edges = np.flatnonzero(np.diff(timeline)) + 1
    assert timeline[0] == 0 and timeline[-1] == 1 and len(edges) == 1 and 40 <= edges[0] <= 56


def test_active_speaker_scoring_holds_a_bounded_number_of_faces(tiny_models_dir):
    from helpers.pipeline import SyntheticFaceDetector, face_frame

    from latentsync.models.syncnet_loading import load_syncnet
    from latentsync.speaker import ActiveSpeakerScorer

    scorer = ActiveSpeakerScorer(load_syncnet(tiny_models_dir / "stable_syncnet.pt"), FPS, batch_size=2)
    tracker = FaceTrackSet(FaceSearch(SyntheticFaceDetector()))
    most = 0
    for index in range(60):
        frame = face_frame(index, (160, 160))
        tracker.update(frame)
        scorer.push(frame, tracker.tracks)
        most = max(most, scorer.num_buffered_faces)
    assert most < 16 + 2 * 4  # one track: num_frames + batch_size * stride, whatever the clip's length
    starts, confidence = scorer.confidences(speech(60 / 25)[0])[0]
    assert starts.tolist() == list(range(6, 60 - 16 - 6 + 1, 4)) and np.isfinite(confidence).all()


def test_auto_without_a_syncnet_or_sound_is_the_largest_face_and_says_so(scene):
    _, _, tracks = scene
    plan = plan_auto(tracks, NUM_FRAMES, FPS, scorer=None, waveform=np.zeros(6400, np.float32))
    assert [v.track.track_id for v in plan.voices] == [0] and "no SyncNet" in plan.reason
    plan = plan_auto(tracks[:1], NUM_FRAMES, FPS, scorer=None, waveform=None)
    assert "one face" in plan.reason and "largest" in plan.reason


TRAINED_SYNCNET = REPO_ROOT / "tests" / "assets" / "stable_syncnet_tiny_trained.pt"
# The first frames of demo1 and demo2 that the trained SyncNet never saw (the last 30 % of each clip).
HELD_OUT_STARTS = (175, 351)


@pytest.mark.skipif(not TRAINED_SYNCNET.is_file(), reason="tests/assets/stable_syncnet_tiny_trained.pt missing")
@pytest.mark.parametrize("speakers", [(0, 1), (1, 0), (1, 1)])
def test_auto_picks_the_face_whose_voice_plays_and_follows_the_change(assets_dir, detector, speakers):
    """3 s of held-out frames: one face's voice for the first half, the other's after; the SyncNet that learned
    sync (`test_syncnet_trained.py`) tells who speaks when."""
    from latentsync.models.syncnet_loading import load_syncnet
    from latentsync.speaker import ActiveSpeakerScorer

    num_frames = 75
    frames, audio = speaking_in_turns(assets_dir, num_frames, speakers, starts=HELD_OUT_STARTS)
    tracker = FaceTrackSet(FaceSearch(detector))
    scorer = ActiveSpeakerScorer(load_syncnet(TRAINED_SYNCNET, config="syncnet_tiny_trained"), FPS)
    for frame in frames:
        tracker.update(frame)
        scorer.push(frame, tracker.tracks)
    plan = plan_auto(tracker.tracks, num_frames, FPS, scorer, audio)
    demo = {track.track_id: int(track.at(0).box[0] > SIZE[0] / 2) for track in tracker.tracks}  # 0 left, 1 right
    speaking = np.full(num_frames, -1)
    for voice in plan.voices:
        speaking[voice.frames] = demo[voice.track.track_id]
    first, second = speaking[: num_frames // 2], speaking[num_frames // 2 :]
    assert (first == speakers[0]).mean() > 0.75 and (second == speakers[1]).mean() > 0.75, plan.reason


def test_cli_with_a_two_voice_map(tmp_path, tiny_models_dir, scene):
    frames, boxes, _ = scene
    clip = write_scene(tmp_path / "two.mp4", frames, speech(NUM_FRAMES / 25)[0])
    write_wav(tmp_path / "b.wav", np.random.default_rng(0).normal(0, 0.3, (1, NUM_FRAMES * 640)).astype(np.float32))
    (tmp_path / "map.csv").write_text('face,audio\n0,\n"point:346,121",b.wav\n')
    command = [sys.executable, "-m", "latentsync", "lipsync", "--models-dir", str(tiny_models_dir), "--video",
               str(clip), "--output", str(tmp_path / "out.mp4"), "--speaker-map", str(tmp_path / "map.csv"),
               "--steps", "1", "--guidance", "1", "--num-frames", "5"]  # fmt: skip
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "speaker map: face 0 ← the run audio, face 1 ← b.wav" in completed.stderr
    assert "0 without a face kept unchanged" in completed.stdout
    outputs = decode_frames(tmp_path / "out.mp4")
    assert changed_faces_after_coding(decode_frames(clip), outputs, boxes) == [True, True]


def changed_faces_after_coding(sources, outputs, boxes) -> list[bool]:
    """Per face, whether its mouth changed by far more than H.264 coding changes the rest (measured: 2.1 mean abs
    between the heads, random-weight mouths tens)."""
    far = (slice(200, 270), slice(200, 280))  # between and below the heads
    assert np.mean([np.abs(o[far].astype(int) - s[far]).mean() for s, o in zip(sources, outputs)]) < 3
    return [
        bool(np.mean([np.abs(o[mouth(b[w])].astype(int) - s[mouth(b[w])]).mean()
                      for s, o, b in zip(sources, outputs, boxes)]) > 10)  # fmt: skip
        for w in range(2)
    ]


# ----------------------------------------------------------------------------------------------------------
# What the nodes use (nodes/data.py, without ComfyUI)


def test_node_face_tracks_and_speaker_faces(scene):
    from helpers.pack import pack_module

    data = pack_module("nodes.data")
    detectors = pack_module("latentsync.face.detectors")
    errors = pack_module("latentsync.errors")
    frames, boxes, tracks = scene
    detector = detectors.create_face_detector("mediapipe")  # the loader's detector: the reference's 80-px filter
    found = data.FaceTracks.collect(frames, NUM_FRAMES, detector, 32, FPS)
    assert [t.track_id for t in found.tracks] == [0, 1] and found.frame_size == (SIZE[1], SIZE[0])
    preview = list(found.preview(frames))
    assert len(preview) == NUM_FRAMES and preview[0].shape == frames[0].shape and not np.array_equal(preview[0], frames[0])

    faces, reason = data.speaker_faces(frames, found, "point:346,121", FPS, 256, detector)
    assert faces.has_face.all() and "face 1" in reason
    centres = [np.linalg.inv(np.vstack([a, [0, 0, 1]]))[:2] @ [128, 128, 1] for a in faces.affines]
    assert all(np.linalg.norm(c - (b[1][:2] + b[1][2:]) / 2) < 30 for c, b in zip(centres, boxes))  # demo2's face
    with pytest.raises(errors.ConfigError, match="at the same time"):
        data.speaker_faces(frames, found, "all", FPS, 256, detector)
