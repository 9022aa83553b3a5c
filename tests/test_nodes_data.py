"""What the nodes pass to each other (`nodes/data.py`), without ComfyUI: audio coverage, prepared faces and their
replay through the pipeline, progress counting, model file kinds and the widgets made from the settings table."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers.pipeline import PoolingCodec, SyntheticFaceDetector, ZeroNoiseUNet, face_frame
from helpers.pack import pack_module

data = pack_module("nodes.data")
errors = pack_module("latentsync.errors")
faces_module = pack_module("latentsync.pipeline.faces")
lipsync = pack_module("latentsync.pipeline.lipsync")
settings_module = pack_module("latentsync.pipeline.settings")
timeline_module = pack_module("latentsync.media.timeline")

SIZE = (160, 160)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------------------
# Audio embeddings


def embeds(speech_samples: int, encoded_samples: int) -> object:
    return data.AudioEmbeds(torch.zeros(encoded_samples // 320, 5, 24), speech_samples, encoded_samples)


def test_embeddings_cover_the_speech_policies():
    speech = embeds(16000, 16000)  # 1 s
    for long_audio, short_audio, video_frames in [("pingpong", "trim", 10), ("loop", "trim", 40), ("hold", "pad", 20)]:
        timeline = timeline_module.plan_timeline(video_frames, speech.duration, 25, long_audio, short_audio)
        speech.check_covers(timeline)  # the output never outlasts the speech (up to rounding)


def test_pad_needs_silence_from_audio_encode():
    timeline = timeline_module.plan_timeline(40, Fraction(1), 25, "pingpong", "pad")
    with pytest.raises(errors.MediaError, match="set video_frames to 40 and fps to 25 on LatentSync Audio Encode"):
        embeds(16000, 16000).check_covers(timeline)
    padded = data.padded_length(16000, 40, Fraction(25))
    assert padded == 25600
    embeds(16000, padded).check_covers(timeline)
    assert data.padded_length(16000, 10, Fraction(25)) == 16000  # never shorter than the speech


# ----------------------------------------------------------------------------------------------------------
# Prepared faces


def prepared_faces(frames: list[np.ndarray], resolution: int = 256):
    detector = SyntheticFaceDetector()
    preparer = faces_module.FacePreparer(detector, resolution, fps=25)
    return data.PreparedFaces.collect(
        preparer.prepare(iter(frames)), len(frames), frames[0].shape[:2], resolution, detector
    )


def clip(num_frames: int, faceless: range = range(0)) -> list[np.ndarray]:
    return [face_frame(index, SIZE, face=index not in faceless) for index in range(num_frames)]


def test_faces_are_stored_per_frame():
    faces = prepared_faces(clip(14, faceless=range(4, 11)))  # a gap longer than the tracker bridges (5 frames)
    assert faces.num_frames == 14 and faces.faces.shape == (14, 256, 256, 3)
    assert faces.has_face.tolist() == [index not in range(4, 11) for index in range(14)]
    assert faces.face(5) is None and np.isnan(faces.affines[5]).all() and not faces.faces[5].any()
    first = faces.face(0)
    assert first.face.shape == (256, 256, 3) and first.affine.shape == (2, 3)


def test_boxes_are_the_frame_regions_of_the_crops():
    faces = prepared_faces(clip(3))
    boxes = faces.boxes()
    height, width = pack_module("latentsync.face.align").crop_size(256)
    for affine, box in zip(faces.affines, boxes):
        corner = np.linalg.inv(np.vstack([affine, [0, 0, 1]])) @ np.array([width / 2, height / 2, 1])
        assert box[0] < corner[0] < box[2] and box[1] < corner[1] < box[3]  # the crop centre lies inside
        centre = (box[:2] + box[2:]) / 2
        np.testing.assert_allclose(centre, corner[:2], atol=1e-6)  # a similarity maps the centre to the centre
    faceless = prepared_faces(clip(2) + clip(7, faceless=range(7)))
    assert np.isnan(faceless.boxes()[-1]).all()


def test_faces_must_fit_the_frames_and_the_model():
    faces = prepared_faces(clip(4))
    faces.check_fits(4, SIZE, 256)
    for args, message in [
        ((5, SIZE, 256), "prepared from 4 frames but 5 frames were given"),
        ((4, (160, 170), 256), "prepared from 160x160 frames but the frames given are 170x160"),
        ((4, SIZE, 512), "aligned at 256 px but the model works at 512 px"),
    ]:
        with pytest.raises(errors.MediaError, match=message):
            faces.check_fits(*args)


def test_collect_needs_every_frame():
    detector = SyntheticFaceDetector()
    pairs = faces_module.FacePreparer(detector, 256).prepare(iter(clip(3)))
    with pytest.raises(errors.MediaError, match="returned 3 frames for 4 input frames"):
        data.PreparedFaces.collect(pairs, 4, SIZE, 256, detector)


@pytest.mark.parametrize("long_audio", ["pingpong", "loop"])
def test_replayed_faces_give_the_pipelines_own_result(long_audio):
    """The sampler's pipeline (faces from Face Prepare) equals the detecting pipeline, replays of the clip and
    frames without a face included."""
    frames = clip(12, faceless=range(3, 10))
    settings = settings_module.LipSyncSettings(
        resolution=256, num_inference_steps=2, guidance_scale=1.0, num_frames=5, long_audio=long_audio
    )
    timeline = timeline_module.plan_timeline(len(frames), Fraction(20, 25), 25, long_audio, "trim")
    assert timeline.num_output_frames > len(frames)  # some frames are shown twice
    features = torch.randn(100, 5, 24, generator=torch.Generator().manual_seed(0))

    def run(preparer=None) -> list[np.ndarray]:
        stream = ((index, frames[index]) for index in timeline.source_indices())
        pipeline = lipsync.LipSyncPipeline(ZeroNoiseUNet(), None, PoolingCodec(), SyntheticFaceDetector(), settings)
        return list(pipeline.sync_frames(stream, features, Fraction(25), preparer=preparer))

    expected, got = run(), run(prepared_faces(frames).preparer())
    assert len(got) == timeline.num_output_frames
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))
    assert any(not np.array_equal(out, frames[index]) for out, index in zip(got, timeline.source_indices()))


def test_replay_refuses_more_frames_than_prepared():
    replay = prepared_faces(clip(2)).preparer()
    with pytest.raises(errors.MediaError, match="More frames than the 2"):
        list(replay.prepare(iter(clip(3))))


# ----------------------------------------------------------------------------------------------------------
# Cache, widgets


@pytest.mark.parametrize(
    "name, kind",
    [
        ("latentsync_unet.pt", "unet"),
        ("1.6/latentsync_unet.pt", "unet"),
        ("finetune/unet.safetensors", "unet"),
        ("whisper/tiny.pt", "whisper"),
        ("Whisper-small.pt", "whisper"),
        ("whisper\\small.pt", "whisper"),
        ("stable_syncnet.pt", "syncnet"),
        ("runs/syncnet.safetensors", "syncnet"),
        ("auxiliary/vgg16-397923af.pth", None),
    ],
)
def test_each_loader_is_offered_the_files_of_its_kind(name, kind):
    assert data.latentsync_file_kind(name) == kind


def test_widgets_come_from_the_settings_table():
    specs, defaults = settings_module.SETTING_SPECS, settings_module.DEFAULT_SETTINGS
    steps = data.setting_widget("num_inference_steps")
    assert (steps["default"], steps["min"], steps["max"]) == (
        defaults.num_inference_steps,
        specs["num_inference_steps"].minimum,
        specs["num_inference_steps"].maximum,
    )
    assert steps["tooltip"].startswith("DDIM denoising steps")
    assert data.setting_widget("long_audio")["options"] == list(specs["long_audio"].choices)
    face_index = data.setting_widget("face_index")
    assert (face_index["default"], face_index["min"]) == (-1, -1)
    assert [data.face_index_setting(v) for v in (-1, 0, 3)] == ["largest", 0, 3]
    assert data.face_index_widget("largest") == -1 and data.face_index_widget(2) == 2


def test_speed_widgets_come_from_the_speed_table():
    speed = pack_module("latentsync.pipeline.speed")
    interval = data.setting_widget("deepcache_interval", speed.SPEED_SPECS, speed.EXACT)
    spec = speed.SPEED_SPECS["deepcache_interval"]
    assert (interval["default"], interval["min"], interval["max"]) == (1, spec.minimum, spec.maximum)
    assert interval["tooltip"].startswith("DeepCache")
    # A switch is a boolean widget; an optional number is an integer where 0 stands for None (automatic)
    assert data.setting_widget("io_overlap", speed.SPEED_SPECS, speed.EXACT)["default"] is True
    assert data.setting_widget("compile", speed.SPEED_SPECS, speed.EXACT)["default"] is False
    vae_batch = data.setting_widget("vae_batch", speed.SPEED_SPECS, speed.EXACT)
    assert (vae_batch["default"], vae_batch["min"], vae_batch["max"]) == (0, 0, speed.SPEED_SPECS["vae_batch"].maximum)


def test_notices_say_when_nothing_was_synced_or_the_video_mostly_replays():
    plan = timeline_module.plan_timeline
    # 10 s of speech over a 2 s clip: 80% of the output replays the clip
    looped = data.run_notices(plan(50, Fraction(10), Fraction(25), "loop", "trim"), num_generated=250)
    assert len(looped) == 1 and "80% of the output replays the video (long_audio = loop)" in looped[0]
    # 3 s over 2 s replays a third: no notice; and nothing generated is always said
    assert data.run_notices(plan(50, Fraction(3), Fraction(25), "pingpong", "trim"), num_generated=75) == []
    (faceless,) = data.run_notices(plan(50, Fraction(2), Fraction(25), "loop", "trim"), num_generated=0)
    assert faceless.startswith("No face was found in any frame")


def test_ambiguous_settings_get_input_names_that_say_what_they_are():
    names = {field: data.setting_input_name(field) for field in ("num_inference_steps", "num_frames", "seed")}
    assert names == {"num_inference_steps": "steps", "num_frames": "window_frames", "seed": "seed"}
    assert data.setting_fields({"steps": 3, "guidance": 1.0, "window_frames": 8, "seed": 1}) == {
        "num_inference_steps": 3,
        "guidance_scale": 1.0,
        "num_frames": 8,
        "seed": 1,
    }
