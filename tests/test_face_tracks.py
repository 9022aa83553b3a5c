"""Every face of a clip: small faces (tiles, zoomed passes), stable track ids, the track table and the faces CLI.

Scenes are made from the real demo clips (`helpers.face_scenes`): demo1 and demo2 side by side at different sizes,
demo2 leaving the frame and coming back.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers.face_scenes import Placement, compose, head_frames, two_face_scene, write_scene
from helpers.files import REPO_ROOT

from latentsync.errors import ConfigError
from latentsync.face.detectors import Face, FaceFilter, create_face_detector
from latentsync.face.search import FaceSearch, box_iou, merge_faces, tile_origins
from latentsync.face.tracks import FaceTrackSet, track_table

SIZE = (480, 270)
NUM_FRAMES = 40


@pytest.fixture(scope="module")
def search():
    return FaceSearch(create_face_detector("mediapipe", face_filter=FaceFilter.for_min_height(32)))


@pytest.fixture(scope="module")
def demo1_head(assets_dir):
    return head_frames(assets_dir, "demo1", 1)


def test_tiles_cover_the_frame_with_overlap():
    for length, size in ((1920, 640), (1080, 640), (641, 640), (5000, 512)):
        starts = tile_origins(length, size, size // 4)
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - size // 4 for a, b in zip(starts, starts[1:]))  # overlap at least a quarter
    assert tile_origins(600, 640, 160) == [0]


def test_merge_keeps_the_best_of_overlapping_faces():
    def face(box, score):
        return Face(np.array(box, np.float64), score, np.zeros((3, 2)))

    faces = [face((0, 0, 10, 10), 0.6), face((1, 1, 11, 11), 0.9), face((50, 50, 80, 80), 0.7)]
    merged = merge_faces(faces)
    assert [f.score for f in merged] == [0.7, 0.9]  # largest first; the 0.6 duplicate is gone


def test_tiles_find_a_small_face_the_whole_frame_pass_misses(search, demo1_head):
    # a 50-px face in a 1920 x 1080 frame is 5 px for the 192-px detector: missed whole, found in a 640-px tile
    frame, (truth,) = compose((1920, 1080), [(demo1_head.frames[0], demo1_head, Placement(50, (1500, 300)))])
    assert not any(box_iou(f.box, truth) > 0.3 for f in search.find(frame, tiles=False))
    found = search.find(frame, tiles=True)
    assert len(found) == 1 and box_iou(found[0].box, truth) > 0.5
    near = search.find_near(frame, truth)  # the zoomed pass around where the face was
    assert len(near) == 1 and box_iou(near[0].box, truth) > 0.5


def test_a_closeup_gets_no_tiles(search, demo1_head, monkeypatch):
    frame, _ = compose((1920, 1080), [(demo1_head.frames[0], demo1_head, Placement(400, (900, 500)))])
    calls = []
    detect = search.detector.detect
    monkeypatch.setattr(search.detector, "detect", lambda image, *a: calls.append(image.shape) or detect(image, *a))
    assert len(search.find(frame, tiles=True)) == 1
    assert calls == [frame.shape]  # the whole frame, once


def test_the_reference_filter_drops_small_faces_and_for_min_height_keeps_them():
    face = Face(np.array([0, 0, 40, 40], np.float64), 0.9, np.zeros((3, 2)))
    assert not FaceFilter().accepts(face)
    assert FaceFilter.for_min_height(40).accepts(face)
    assert FaceFilter.for_min_height(40) == FaceFilter(min_width=25, min_height=40)


@pytest.fixture(scope="module")
def scene(assets_dir):
    """demo1 90 px tall on the left, demo2 60 px on the right; demo2 is away for frames 12-25 (longer than a short
    miss) and missing for frames 31-33 (a short one)."""
    absent = [*range(12, 26), *range(31, 34)]
    return two_face_scene(assets_dir, NUM_FRAMES, SIZE, heights=(90, 60), absent=absent)


def test_every_face_keeps_its_id_through_a_short_miss_and_a_longer_absence(search, scene):
    frames, truths = scene
    tracker = FaceTrackSet(search)
    for frame in frames:
        tracker.update(frame)
    tracks = tracker.tracks
    assert [t.track_id for t in tracks] == [0, 1]
    left, right = tracks
    assert (left.first_frame, left.last_frame, left.num_frames) == (0, NUM_FRAMES - 1, NUM_FRAMES)
    # demo2: away 12-25 (no points), back with the same id; the 3-frame miss 31-33 is bridged
    assert [p.frame for p in right.points] == [*range(12), *range(26, NUM_FRAMES)]
    assert [p.frame for p in right.points if not p.detected] == [31, 32, 33]
    for track, which in ((left, 0), (right, 1)):
        for point in track.points:
            assert box_iou(point.box, truths[point.frame][which] if truths[point.frame][which] is not None
                           else truths[0][which]) > 0.4  # fmt: skip
    rows = [t.row() for t in tracks]
    assert rows[0]["mean_x"] < SIZE[0] / 2 < rows[1]["mean_x"]
    assert 80 < rows[0]["mean_height"] < 100 and 50 < rows[1]["mean_height"] < 70
    table = track_table(tracks).splitlines()
    assert table[0].split() == ["id", "first", "last", "frames", "height", "x", "y"] and len(table) == 3


def test_a_face_coming_back_elsewhere_is_a_new_track(search, assets_dir):
    head = head_frames(assets_dir, "demo2", 1)
    tracker = FaceTrackSet(search, max_gap_frames=2)
    for centre in [(100, 130)] * 3 + [None] * 5 + [(380, 130)] * 3:
        placement = Placement(None) if centre is None else Placement(70, centre)
        tracker.update(compose(SIZE, [(head.frames[0], head, placement)])[0])
    assert [(t.first_frame, t.last_frame) for t in tracker.tracks] == [(0, 2), (8, 10)]


def test_tracker_options_are_checked(search):
    with pytest.raises(ConfigError, match="max_gap_frames"):
        FaceTrackSet(search, max_gap_frames=-1)
    with pytest.raises(ConfigError, match="tile_size"):
        FaceSearch(search.detector, tile_size=16)


@pytest.mark.slow
def test_faces_cli_prints_the_table_and_writes_a_sheet(tmp_path, scene):
    frames, _ = scene
    clip = write_scene(tmp_path / "two.mp4", frames[:20], None)
    completed = subprocess.run(
        [sys.executable, "-m", "latentsync", "faces", str(clip), "--sheet", str(tmp_path / "sheet.png"),
         "--json", str(tmp_path / "tracks.json"), "--sheet-frames", "4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "2 face tracks" in completed.stdout
    rows = json.loads((tmp_path / "tracks.json").read_text())["tracks"]
    assert [(r["id"], r["first_frame"], r["last_frame"]) for r in rows] == [(0, 0, 19), (1, 0, 11)]
    import cv2

    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (202, 4 * 360 + 3 * 4, 3)  # thumbnails of 360 px on the longer side, 4 px apart
