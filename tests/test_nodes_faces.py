"""The face-track nodes without ComfyUI (stand-in modules, `helpers.comfy`): Face Tracks, Face Prepare with a
speaker, and Speaker Map, on a scene made from the demo clips (demo1 left = face 0, demo2 right = face 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.face_scenes import two_face_scene
from helpers.pack import pack_module

errors = pack_module("latentsync.errors")
detectors = pack_module("latentsync.face.detectors")

SIZE = (480, 270)
NUM_FRAMES = 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(assets_dir):
    frames, _ = two_face_scene(assets_dir, NUM_FRAMES, SIZE, heights=(90, 60))
    return torch.from_numpy(np.stack(frames)).float() / 255.0


@pytest.fixture(scope="module")
def detector():
    return detectors.create_face_detector("mediapipe")


def test_face_tracks_node_numbers_every_face(comfy_nodes, images, detector):
    output = comfy_nodes.prepare.LatentSyncFaceTracks.execute(detector, images, 25.0, 32)
    preview, tracks = output.args
    assert preview.shape == images.shape and not torch.equal(preview, images)  # numbered boxes drawn
    assert [track.track_id for track in tracks.tracks] == [0, 1] and tracks.num_frames == NUM_FRAMES
    table = output.ui.as_dict()["text"][0].splitlines()
    assert any(line.split()[:3] == ["1", "0", str(NUM_FRAMES - 1)] for line in table)


def test_face_prepare_takes_the_face_the_speaker_names(comfy_nodes, images, detector):
    model = comfy_nodes.loaders.LatentSyncModelLoader.execute("latentsync_unet.pt", "auto", "auto", "auto").args[0]
    tracks = comfy_nodes.prepare.LatentSyncFaceTracks.execute(detector, images, 25.0, 32).args[1]
    prepare = comfy_nodes.prepare.LatentSyncFacePrepare.execute
    right = prepare(detector, images, model, 25.0, -1, True, "point:346,121", tracks).args[0]
    left = prepare(detector, images, model, 25.0, -1, True, "0", tracks).args[0]
    largest = prepare(detector, images, model, 25.0, -1).args[0]  # the one-pass tracker, as before
    assert right.has_face.all() and left.has_face.all() and largest.has_face.all()
    centre = lambda faces: np.linalg.inv(np.vstack([faces.affines[0], [0, 0, 1]]))[:2] @ [128, 128, 1]  # noqa: E731
    assert centre(right)[0] > SIZE[0] / 2 > centre(left)[0]
    assert np.abs(centre(largest) - centre(left)).max() < 3  # demo1 is the larger face
    with pytest.raises(errors.ConfigError, match="at the same time"):
        prepare(detector, images, model, 25.0, -1, True, "all", tracks)


def test_speaker_map_node(comfy_nodes):
    voice = {"waveform": torch.zeros(1, 1, 1600), "sample_rate": 16000}
    execute = comfy_nodes.prepare.LatentSyncSpeakerMap.execute
    assert execute("0", voice, "point:1,2", voice).args[0] == [("0", voice), ("point:1,2", voice)]
    assert execute("0", voice, "1", None).args[0] == [("0", voice)]  # a face without a voice is left out
    with pytest.raises(errors.ConfigError, match="speaker must be one of"):
        execute("nobody", voice)
