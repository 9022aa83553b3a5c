"""The working nodes (Audio Encode, Face Tracks, Face Prepare, Speaker Map, the three samplers, Speed, Create Video,
Sync Score) and the VAE codecs, run without ComfyUI (stand-in ``comfy`` modules, `helpers.comfy`) on the tiny models:
inputs are checked, the library computes what the node returns (the same frames, features and scores as calling it
directly), and the outputs have ComfyUI's types."""

from __future__ import annotations

import io as bytes_io
from fractions import Fraction
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.media import pattern_frame, sine
from helpers.pack import pack_module
from helpers.pipeline import SyntheticFaceDetector, face_frame, speech, write_clip

convert = pack_module("nodes.convert")
data = pack_module("nodes.data")
errors = pack_module("latentsync.errors")
lipsync = pack_module("latentsync.pipeline.lipsync")
settings_module = pack_module("latentsync.pipeline.settings")
speed_module = pack_module("latentsync.pipeline.speed")
score_module = pack_module("latentsync.score")
score_plot = pack_module("latentsync.score_plot")
timeline_module = pack_module("latentsync.media.timeline")
media = pack_module("latentsync.media")
vae_module = pack_module("latentsync.models.vae")

SIZE = (160, 160)
FAST = {"num_inference_steps": 1, "guidance_scale": 1.5, "seed": 7, "num_frames": 5}
POLICIES = {"long_audio": "pingpong", "short_audio": "trim", "no_face": "passthrough"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(comfy_nodes):
    """Model, VAE, audio encoder, SyncNet and face detector as their loader nodes output them."""
    loaders = comfy_nodes.loaders
    return {
        "model": loaders.LatentSyncModelLoader.execute("latentsync_unet.pt", "auto", "auto", "auto")[0],
        "vae": loaders.LatentSyncVAELoader.execute("sd-vae-ft-mse", "auto", "auto")[0],
        "audio_encoder": loaders.LatentSyncAudioEncoderLoader.execute("whisper/tiny.pt", "auto")[0],
        "syncnet": loaders.LatentSyncSyncNetLoader.execute("stable_syncnet.pt", "auto")[0],
        "face_detector": loaders.LatentSyncFaceDetectorLoader.execute("mediapipe", "buffalo_l")[0],
    }


def audio_value(samples: np.ndarray, sample_rate: int) -> dict:
    """A core AUDIO of ``(c, n)`` samples."""
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples))[None], "sample_rate": sample_rate}


def images_of(frames: list[np.ndarray]) -> torch.Tensor:
    return convert.frames_to_images(np.stack(frames))


def last_progress_bar(comfy_nodes):
    return comfy_nodes.stubs.modules["comfy.utils"].ProgressBar.instances[-1]


def decoded(video, folder: Path) -> tuple[list[np.ndarray], object]:
    """The frames and the stream info of a VIDEO the nodes output (an encoded file held in memory), saved as
    Save Video would."""
    path = folder / "saved.mp4"
    video.save_to(str(path))
    with media.VideoReader(path) as reader:
        frames = [rgb for _, rgb in reader.frames()]
    return frames, media.probe_video(path)


# ----------------------------------------------------------------------------------------------------------
# Audio Encode, Face Prepare


def test_audio_encode_gives_the_encoders_features_of_16k_mono(comfy_nodes, models):
    encoder = models["audio_encoder"]
    audio = audio_value(speech(0.5, 44100, channels=2), 44100)
    embeds = comfy_nodes.prepare.LatentSyncAudioEncode.execute(encoder, audio, 25.0, 0)[0]
    waveform = convert.model_waveform(audio)
    assert isinstance(embeds, data.AudioEmbeds) and embeds.num_samples == embeds.encoded_samples == 8000
    assert torch.equal(embeds.features, encoder.model.module.encode(waveform))
    assert comfy_nodes.stubs.model_management.loaded[-1] == [encoder]

    # num_frames at fps: silence appended so the features cover 1 s of video
    padded = comfy_nodes.prepare.LatentSyncAudioEncode.execute(encoder, audio, 25.0, 25)[0]
    assert (padded.num_samples, padded.encoded_samples) == (8000, 16000) and padded.duration == Fraction(1, 2)
    assert torch.equal(padded.features, encoder.model.module.encode(np.pad(waveform, (0, 8000))))
    with pytest.raises(errors.MediaError, match="empty"):
        comfy_nodes.prepare.LatentSyncAudioEncode.execute(encoder, audio_value(np.zeros((1, 0), np.float32), 16000),
                                                          25.0, 0)  # fmt: skip


def test_face_prepare_aligns_every_frame_and_marks_the_faceless(comfy_nodes, models):
    frames = [face_frame(index, SIZE, face=index not in (3, 4, 5, 6, 7, 8)) for index in range(10)]
    node = comfy_nodes.prepare.LatentSyncFacePrepare
    faces, aligned = node.execute(SyntheticFaceDetector(), images_of(frames), models["model"], 25.0, -1).args
    assert isinstance(faces, data.PreparedFaces) and faces.num_frames == 10
    assert faces.has_face.tolist() == [index not in range(3, 9) for index in range(10)]
    assert aligned.dtype == torch.float32 and aligned.shape == (10, 256, 256, 3)
    assert np.array_equal(convert.frame_to_uint8(aligned[0]), faces.faces[0]) and not aligned[5].any()
    bar = last_progress_bar(comfy_nodes)
    assert bar.total == 10 and bar.updates[-1][0] == 10

    comfy_nodes.stubs.model_management.interrupt_current_processing()
    with pytest.raises(comfy_nodes.stubs.model_management.InterruptProcessingException):
        node.execute(SyntheticFaceDetector(), images_of(frames), models["model"], 25.0, -1)
    with pytest.raises(errors.ConfigError, match="fps"):
        node.execute(SyntheticFaceDetector(), images_of(frames), models["model"], 0.0, -1)


# ----------------------------------------------------------------------------------------------------------
# LatentSync Sampler (IMAGE)


@pytest.fixture(scope="module")
def image_case(comfy_nodes, models):
    """12 frames (no face in 4..10) at 25 fps, 0.4 s of speech, their embeddings and prepared faces."""
    frames = [face_frame(index, SIZE, face=index not in range(4, 11)) for index in range(12)]
    audio = audio_value(speech(0.4, 16000), 16000)
    embeds = comfy_nodes.prepare.LatentSyncAudioEncode.execute(models["audio_encoder"], audio, 25.0, 0)[0]
    faces = comfy_nodes.prepare.LatentSyncFacePrepare.execute(
        SyntheticFaceDetector(), images_of(frames), models["model"], 25.0, -1
    )[0]
    return frames, embeds, faces


def test_sampler_outputs_the_pipelines_frames(comfy_nodes, models, image_case):
    frames, embeds, faces = image_case
    model = models["model"]
    node = comfy_nodes.sampler.LatentSyncSampler
    images = node.execute(model, models["vae"], embeds, images_of(frames), faces, 25.0, **FAST, **POLICIES)[0]
    # pingpong: 0.4 s of speech at 25 fps is 10 frames of the 12
    assert images.dtype == torch.float32 and images.shape == (10, *SIZE, 3)
    assert 0 <= images.min() and images.max() <= 1

    settings = settings_module.LipSyncSettings(resolution=256, **FAST, **POLICIES)
    codec = vae_module.DiffusersVAE(models["vae"].model.module)
    pipeline = lipsync.LipSyncPipeline(model.unet, None, codec, SyntheticFaceDetector(), settings)
    expected = list(pipeline.sync_frames(((index, frames[index]) for index in range(10)), embeds.features, 25))
    assert all(np.array_equal(convert.frame_to_uint8(got), want) for got, want in zip(images, expected))
    assert not np.array_equal(expected[0], frames[0]) and np.array_equal(expected[5], frames[5])  # no face: as is

    managed = comfy_nodes.stubs.model_management.loaded
    assert [models["vae"], model.patcher] in managed  # the UNet stays loaded while the VAE encodes
    bar = last_progress_bar(comfy_nodes)
    assert bar.updates[-1][:2] == (bar.total, bar.total) and bar.updates[-1][2][0] == "JPEG"  # preview of a face


def test_sampler_refuses_inputs_that_do_not_belong_together(comfy_nodes, models, image_case):
    frames, embeds, faces = image_case
    node = comfy_nodes.sampler.LatentSyncSampler
    run = dict(model=models["model"], vae=models["vae"], audio_embeds=embeds, faces=faces, fps=25.0, **FAST,
               **POLICIES)  # fmt: skip
    with pytest.raises(errors.MediaError, match="prepared from 12 frames but 11 frames were given"):
        node.execute(images=images_of(frames[:11]), **run)
    wide = data.AudioEmbeds(torch.zeros(20, 10, 384), 6400, 6400)
    with pytest.raises(errors.ConfigError, match="384 wide but the UNet latentsync_unet.pt attends to 24"):
        node.execute(images=images_of(frames), **{**run, "audio_embeds": wide})
    with pytest.raises(errors.MediaError, match="set video_frames to 12 and fps to 25 on LatentSync Audio Encode"):
        node.execute(images=images_of(frames), **{**run, "short_audio": "pad"})
    with pytest.raises(errors.ConfigError, match="long_audio"):
        node.execute(images=images_of(frames), **{**run, "long_audio": "bounce"})


# ----------------------------------------------------------------------------------------------------------
# Video Sampler, LipSync (VIDEO)


def input_folder(comfy_nodes) -> Path:
    """ComfyUI's input folder (where Load Video's files are)."""
    return comfy_nodes.stubs.temp_dir.parent / "input"


@pytest.fixture(scope="module")
def demo_clip(comfy_nodes, assets_dir):
    """24 frames of demo1 (a 480 x 480 crop around the face) at 25 fps with its sound, in ComfyUI's input folder;
    the frames and the speech at 16 kHz."""
    folder = input_folder(comfy_nodes)
    with media.VideoReader(assets_dir / "demo1_video.mp4") as reader:
        frames = [rgb[480:960, 360:840] for _, rgb in islice(reader.frames(), 24)]
    speech_samples = media.load_audio(assets_dir / "demo1_audio.wav", 16000)[: 16000 * 24 // 25]
    sound = media.AudioArray(speech_samples[None], 16000)
    with media.VideoWriter(folder / "demo.mp4", 25, 480, 480, preset="ultrafast", audio=sound) as writer:
        for frame in frames:
            writer.write_frame(frame)
    return folder / "demo.mp4", frames, speech_samples


def video_settings(**changes) -> dict:
    return {**FAST, "face_index": -1, **POLICIES, **changes}


def assert_lip_synced(frames: list[np.ndarray], sources: list[np.ndarray]) -> None:
    """Every frame got a generated mouth (the tiny random UNet paints noise there) and kept the rest of the frame
    (up to H.264 coding)."""
    for frame, source in zip(frames, sources):
        difference = np.abs(frame.astype(np.int16) - source).max(axis=-1)
        assert difference.max() > 40 and np.median(difference) <= 3


def test_video_sampler_streams_the_video_through_the_pipeline(comfy_nodes, models, demo_clip, tmp_path):
    path, sources, speech_samples = demo_clip
    video_from_file = comfy_nodes.stubs.modules["comfy_api.latest"].InputImpl.VideoFromFile
    node = comfy_nodes.sampler.LatentSyncVideoSampler
    arguments = (models["model"], models["vae"], models["audio_encoder"], models["face_detector"])
    video = node.execute(*arguments, video_from_file(str(path)), **video_settings(speaker="auto"))[0]
    assert isinstance(video, video_from_file)
    frames, info = decoded(video, tmp_path)
    assert (len(frames), info.width, info.height, info.fps, info.has_audio) == (24, 480, 480, 25, True)
    assert_lip_synced(frames, sources)
    # the bar follows the pass that tracks every face (24 frames), then the lip sync on a total of its own
    updates = [(value, total) for value, total, _ in last_progress_bar(comfy_nodes).updates]
    tracking = [update for update in updates if update[1] == 24]
    assert tracking[-1] == (24, 24) and updates[: len(tracking)] == tracking
    syncing = updates[len(tracking) :]
    assert len({total for _, total in syncing}) == 1 and syncing[-1][0] == syncing[-1][1] > 24
    assert list(comfy_nodes.stubs.temp_dir.iterdir()) == []  # the scratch folder is gone
    assert [models["model"].patcher, models["audio_encoder"]] in comfy_nodes.stubs.model_management.loaded

    # a VIDEO held in memory, and the speech from an AUDIO input: the output lasts as long as the speech
    in_memory = video_from_file(bytes_io.BytesIO(path.read_bytes()))
    shorter = node.execute(*arguments, in_memory, audio=audio_value(speech_samples[None, :3200], 16000),
                           **video_settings())[0]  # fmt: skip
    frames, info = decoded(shorter, tmp_path)
    assert len(frames) == 5 and info.has_audio
    with pytest.raises(errors.ConfigError, match="short_audio"):
        node.execute(*arguments, in_memory, **video_settings(short_audio="stretch"))


def test_video_sampler_needs_speech_and_a_file_in_comfyuis_folders(comfy_nodes, models, demo_clip, tmp_path):
    video_from_file = comfy_nodes.stubs.modules["comfy_api.latest"].InputImpl.VideoFromFile
    silent = write_clip(input_folder(comfy_nodes) / "silent.mp4", 4, Fraction(25), SIZE)
    arguments = (models["model"], models["vae"], models["audio_encoder"], models["face_detector"])
    node = comfy_nodes.sampler.LatentSyncVideoSampler
    with pytest.raises(errors.MediaError, match="no audio track and no AUDIO is connected"):
        node.execute(*arguments, video_from_file(str(silent)), **video_settings())
    assert list(comfy_nodes.stubs.temp_dir.iterdir()) == []
    elsewhere = tmp_path / "demo.mp4"
    elsewhere.write_bytes(demo_clip[0].read_bytes())
    with pytest.raises(errors.MediaError):
        node.execute(*arguments, video_from_file(str(elsewhere)), **video_settings())


def run_expansion(comfy_nodes, output) -> object:
    """Run a node expansion (``NodeOutput(..., expand=graph)``) as ComfyUI would: each node of the graph executes
    with its links resolved, and the output the expanding node names is returned."""
    nodes = {node.define_schema().node_id: node for node in comfy_nodes.extension.NODES}
    results = {}
    for node_id, entry in output.expand.items():  # GraphBuilder lists a node after the nodes it links to
        inputs = {
            name: results[value[0]][value[1]] if isinstance(value, list) else value
            for name, value in entry["inputs"].items()
        }
        results[node_id] = nodes[entry["class_type"]].execute(**inputs).args
    node_id, index = output.args[0]
    return results[node_id][index]


def test_lipsync_node_is_the_loaders_and_the_video_sampler(comfy_nodes, demo_clip, tmp_path):
    path, sources, speech_samples = demo_clip
    video = comfy_nodes.stubs.modules["comfy_api.latest"].InputImpl.VideoFromFile(str(path))
    speech_audio = audio_value(speech_samples[None, : 12 * 640], 16000)  # 0.48 s: 12 frames at 25 fps
    node = comfy_nodes.sampler.LatentSyncLipSync
    output = node.execute(video, "latentsync_unet.pt", "whisper/tiny.pt", "sd-vae-ft-mse", "mediapipe",
                          audio=speech_audio, **video_settings())  # fmt: skip
    classes = [entry["class_type"] for entry in output.expand.values()]
    assert classes[-1] == "LatentSyncVideoSampler" and set(classes[:-1]) == {
        "LatentSyncModelLoader", "LatentSyncVAELoader", "LatentSyncAudioEncoderLoader", "LatentSyncFaceDetectorLoader"
    }  # fmt: skip
    frames, info = decoded(run_expansion(comfy_nodes, output), tmp_path)
    assert (len(frames), info.width, info.height) == (12, 480, 480)
    assert_lip_synced(frames, sources)


def test_face_tracks_number_the_faces_for_face_prepare_and_the_speaker_map(comfy_nodes, models, demo_clip):
    _, frames, speech_samples = demo_clip
    images = images_of(frames[:6])
    tracks_node = comfy_nodes.prepare.LatentSyncFaceTracks
    min_face = next(item.default for item in tracks_node.define_schema().inputs if item.id == "min_face_size")
    result = tracks_node.execute(models["face_detector"], images, 25.0, min_face)
    preview, tracks = result.args
    assert preview.shape == images.shape and not torch.equal(preview, images)  # numbered boxes drawn
    assert len(tracks.tracks) == 1 and result.ui.value  # one face, and its table

    speaker = str(tracks.tracks[0].track_id)
    faces, aligned = comfy_nodes.prepare.LatentSyncFacePrepare.execute(
        models["face_detector"], images, models["model"], 25.0, -1, speaker=speaker, tracks=tracks
    ).args
    assert faces.has_face.all() and aligned.shape == (6, 256, 256, 3)

    voice = audio_value(speech_samples[None], 16000)
    speaker_map = comfy_nodes.prepare.LatentSyncSpeakerMap.execute("0", voice, "point:240,200", voice, "", None)[0]
    assert [face for face, _ in speaker_map] == ["0", "point:240,200"] and speaker_map[0][1] is voice
    with pytest.raises(errors.ConfigError):
        comfy_nodes.prepare.LatentSyncSpeakerMap.execute("the left one", voice)


# ----------------------------------------------------------------------------------------------------------
# Speed, Create Video, Sync Score


def test_speed_node_makes_speed_settings_from_its_widgets(comfy_nodes):
    node = comfy_nodes.sampler.LatentSyncSpeed
    defaults = {item.id: item.default for item in node.define_schema().inputs}
    assert node.execute(**defaults)[0] == speed_module.EXACT
    chosen = node.execute(**{**defaults, "deepcache_interval": 3, "window_batch": 2, "vae_batch": 4})[0]
    assert (chosen.deepcache_interval, chosen.window_batch, chosen.vae_batch, chosen.detect_size) == (3, 2, 4, None)
    with pytest.raises(errors.ConfigError, match="deepcache_interval"):
        node.execute(**{**defaults, "deepcache_interval": 0})


def test_create_video_encodes_frames_and_sound_at_the_exact_rate(comfy_nodes, tmp_path):
    node = comfy_nodes.video.LatentSyncCreateVideo
    frames = [pattern_frame(index, 64, 48) for index in range(12)]
    sound = audio_value(sine([440, 660], 0.3, 48000), 48000)
    video = node.execute(images_of(frames), 30000 / 1001, 18, audio=sound)[0]
    got, info = decoded(video, tmp_path)
    assert (len(got), info.width, info.height, info.fps) == (12, 64, 48, Fraction(30000, 1001))
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(got, frames)) < 3
    audio = media.probe_audio(tmp_path / "saved.mp4")
    assert (audio.sample_rate, audio.channels) == (48000, 2)
    assert audio.duration == pytest.approx(12 * 1001 / 30000, abs=1024 / 48000)  # padded to the video, to a frame
    assert list(comfy_nodes.stubs.temp_dir.iterdir()) == []

    silent = node.execute(images_of(frames[:3]), 25.0, 30)[0]
    assert not decoded(silent, tmp_path)[1].has_audio
    with pytest.raises(errors.MediaError, match="RGB IMAGE batch"):
        node.execute(torch.zeros(3, 48, 64), 25.0, 18)


def test_sync_score_node_reports_the_librarys_score(comfy_nodes, models, demo_clip):
    _, frames, speech_samples = demo_clip
    node = comfy_nodes.score.LatentSyncSyncScore
    syncnet, face_detector = models["syncnet"], models["face_detector"]
    audio = audio_value(speech_samples[None], 16000)
    result = node.execute(syncnet, face_detector, images_of(frames), audio, 25.0, 2)
    confidence, min_distance, best_offset, plot = result.args
    assert isinstance(confidence, float) and isinstance(min_distance, float) and isinstance(best_offset, int)
    assert plot.dtype == torch.float32 and plot.shape[0] == 1 and plot.shape[-1] == 3
    assert comfy_nodes.stubs.model_management.loaded[-1] == [syncnet]

    expected = score_module.score_frames(frames, speech_samples, syncnet.model.module, face_detector, fps=25,
                                         max_offset=2)  # fmt: skip
    assert (confidence, min_distance, best_offset) == (expected.confidence, expected.min_distance, expected.best_offset)
    assert result.ui.value.startswith(f"confidence {expected.confidence:.3f}, min distance")
    assert np.array_equal(convert.frame_to_uint8(plot[0]), score_plot.plot_offsets(expected))


# ----------------------------------------------------------------------------------------------------------
# VAE codecs: ComfyUI's VAE and LatentSync VAE Loader's


class CoreVAE:
    """Stands in for ``comfy.sd.VAE`` over a diffusers ``AutoencoderKL`` of the SD layout: ComfyUI's attribute
    names, ``encode`` of ``(n, h, w, 3)`` in [0, 1] to the posterior mean, ``decode`` back to [0, 1]."""

    latent_dim, downscale_ratio, vae_dtype, device = 2, 8, torch.float32, torch.device("cpu")

    def __init__(self, autoencoder, regularizer, latent_channels: int = 4):
        self.autoencoder = autoencoder
        self.latent_channels = latent_channels
        self.first_stage_model = torch.nn.Module()
        self.first_stage_model.encoder = autoencoder.encoder
        self.first_stage_model.quant_conv = autoencoder.quant_conv
        self.first_stage_model.regularization = regularizer
        self.patcher = object()

    def memory_used_encode(self, shape, dtype) -> int:
        return 0

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.autoencoder.decode(latents).sample + 1) / 2).clamp(0, 1).movedim(1, -1)


def test_core_vae_codec_samples_the_posterior_as_diffusers_does(comfy_nodes, models):
    autoencoder = models["vae"].model.module
    regularizer = comfy_nodes.stubs.modules["comfy.ldm.models.autoencoder"].DiagonalGaussianRegularizer()
    decoded_batches = []
    codec = comfy_nodes.vae_codecs.vae_codec(CoreVAE(autoencoder, regularizer), keep_loaded=["unet"],
                                             on_decoded=decoded_batches.append)  # fmt: skip
    assert type(codec).__name__ == "ComfyVAECodec"
    pixels = torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = vae_module.DiffusersVAE(autoencoder)
    with torch.no_grad():
        expected = reference.encode(pixels, torch.Generator().manual_seed(3))
        latents = codec.encode(pixels, torch.Generator().manual_seed(3))  # two slices of 8 and 2 images
        torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(codec.decode(latents), reference.decode(latents).clamp(-1, 1), atol=1e-5, rtol=0)
    assert len(decoded_batches) == 1 and decoded_batches[0].shape == (10, 3, 64, 64)
    assert comfy_nodes.stubs.model_management.loaded[-1][1:] == ["unet"]

    mean_only = comfy_nodes.vae_codecs.vae_codec(CoreVAE(autoencoder, None))  # e.g. TAESD: no posterior to sample
    with torch.no_grad():
        mean = autoencoder.encode(pixels).latent_dist.mean * autoencoder.config.scaling_factor
        torch.testing.assert_close(mean_only.encode(pixels, torch.Generator().manual_seed(3)), mean)
    with pytest.raises(errors.ConfigError, match="16 latent channels .* LatentSync needs the SD 1.5 VAE"):
        comfy_nodes.vae_codecs.vae_codec(CoreVAE(autoencoder, regularizer, latent_channels=16))


def test_managed_vae_codec_is_the_librarys_vae(comfy_nodes, models):
    codec = comfy_nodes.vae_codecs.vae_codec(models["vae"], keep_loaded=["unet"])
    assert type(codec).__name__ == "ManagedVAECodec"
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = vae_module.DiffusersVAE(models["vae"].model.module)
    with torch.no_grad():
        latents = codec.encode(pixels, torch.Generator().manual_seed(1))
        assert torch.equal(latents, reference.encode(pixels, torch.Generator().manual_seed(1)))
        assert torch.equal(codec.decode(latents), reference.decode(latents).float())
    assert comfy_nodes.stubs.model_management.loaded[-2] == [models["vae"], "unet"]
