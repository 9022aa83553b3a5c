"""The example workflows, posted to a real ComfyUI as API prompts, write the videos they promise; bad inputs come
back as node errors, a cancel stops the run and leaves no temporary files.

The API twins in ``workflows/api`` are accepted by ``POST /prompt`` with only file names changed
(`test_api_twins_are_accepted_with_only_file_names_changed`; Load VAE gets the random TAESD of `pack_assets`).
To keep CPU time low, the runs that are timed to completion take one denoising step without guidance (`FAST`)
and load the tiny VAE with LatentSync VAE Loader in place of Load VAE (TAESD costs about 1 s per face here).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from latentsync.conventions import MODEL_SAMPLE_RATE
from latentsync.media.audio import load_audio
from latentsync.media.writer import VideoWriter

from .comfy_server import REPO_ROOT, ComfyServer
from .pack_assets import (
    AUDIO_FILE,
    CLIP_FPS,
    CLIP_SECONDS,
    FACE_CROP,
    LORA_FILE,
    SILENT_VIDEO_FILE,
    TINY_VAE_FOLDER,
    place_clips,
    place_models,
)
from .workflow_builder import UNET_FILE, VAE_FILE, VIDEO_FILE, WORKFLOWS

API_DIR = REPO_ROOT / "workflows" / "api"
DOCS = REPO_ROOT / "docs" / "comfyui.md"
CORE_TEST_VAE = "taesd"
FAST = {"steps": 1, "guidance": 1.0}  # with 16-frame windows: one UNet call per clip
RUN_TIMEOUT_S = 240.0
CLIP_FRAMES = int(CLIP_SECONDS * CLIP_FPS)


@pytest.fixture(scope="session")
def pack_server(comfy: ComfyServer, assets_dir: Path) -> ComfyServer:
    """The server, with the tiny models in its model folders and the test clips in its input folder."""
    place_models(comfy.models_dir, Path(os.environ["COMFYUI_PATH"]), os.environ.get("COMFYUI_PYTHON", sys.executable))
    place_clips(assets_dir, comfy.input_dir)
    return comfy


def api_twin(name: str) -> dict:
    """The API twin ``name`` with the test files' names: Load VAE gets TAESD, the all-in-one the tiny VAE."""
    prompt = json.loads((API_DIR / f"{name}.json").read_text())
    for node in prompt.values():
        if node["inputs"].get("vae_name") == VAE_FILE:
            node["inputs"]["vae_name"] = CORE_TEST_VAE if node["class_type"] == "VAELoader" else TINY_VAE_FOLDER
    return prompt


def api_workflow(name: str) -> dict:
    """The API twin ``name`` as the timed runs post it: `FAST` settings, Load VAE replaced by LatentSync VAE Loader
    with the tiny VAE (same output slot)."""
    prompt = api_twin(name)
    for node in prompt.values():
        if node["class_type"] == "VAELoader":
            node["class_type"] = "LatentSyncVAELoader"
            node["inputs"] = {"vae_name": TINY_VAE_FOLDER, "dtype": "auto", "device": "auto"}
        node["inputs"].update({key: value for key, value in FAST.items() if key in node["inputs"]})
    return prompt


def node_of(prompt: dict, class_type: str) -> str:
    return next(node_id for node_id, node in prompt.items() if node["class_type"] == class_type)


def post(server: ComfyServer, path: str, payload: dict) -> None:
    """POST to an endpoint that answers with no JSON (``/interrupt``, ``/queue``)."""
    request = urllib.request.Request(
        server.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=60).close()


def wait_for_idle(server: ComfyServer, timeout_s: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        queue = server.get_json("/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        assert time.monotonic() < deadline, f"the queue did not empty: {queue}"
        time.sleep(0.2)


def post_prompt(server: ComfyServer, prompt: dict) -> tuple[int, dict]:
    """``POST /prompt``: (status, JSON answer); a validation failure is status 400, not an exception."""
    request = urllib.request.Request(
        server.url + "/prompt",
        data=json.dumps({"prompt": prompt}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(server: ComfyServer, prompt_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """The ``/history`` entry of a prompt once it has finished (successfully or not)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None and entry["status"].get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout_s:.0f} s:\n{server.log_text()[-3000:]}")


def run(server: ComfyServer, prompt: dict) -> dict:
    status, answer = post_prompt(server, prompt)
    assert status == 200, answer
    return wait_for(server, answer["prompt_id"])


def messages(entry: dict) -> dict[str, dict]:
    return {kind: data for kind, data in entry["status"]["messages"]}


def describe_error(entry: dict) -> str:
    error = messages(entry).get("execution_error") or {}
    return f"{error.get('node_type')}: {error.get('exception_message')}\n{''.join(error.get('traceback', []))}"


def saved_video(server: ComfyServer, entry: dict, tmp_path: Path) -> Path:
    """The one video a finished prompt saved, fetched through ``/view``."""
    assert entry["status"]["status_str"] == "success", describe_error(entry)
    files = [item for output in entry["outputs"].values() for item in output.get("images", [])]
    assert len(files) == 1, entry["outputs"]
    query = urllib.parse.urlencode({key: files[0][key] for key in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=60) as response:
        path = tmp_path / files[0]["filename"]
        path.write_bytes(response.read())
    return path


def check_video(path: Path, frames: int = CLIP_FRAMES, fps: int = CLIP_FPS) -> None:
    """``path`` is an H.264 video of ``frames`` frames of the test clip's size at ``fps``, with an AAC track that
    lasts as long as the video (within one AAC frame)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", FACE_CROP[2], FACE_CROP[2])
        assert Fraction(video.average_rate) == fps
        assert container.streams.audio, "the video has no audio track"
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        assert sum(1 for _ in container.decode(video=0)) == frames
        container.seek(0)
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(samples / audio.rate - frames / fps) < 1024 / audio.rate + 1e-6


def node_error(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", entry["status"]
    return messages(entry)["execution_error"]


def pack_temp_folders(server: ComfyServer) -> list[Path]:
    return sorted((server.base_dir / "temp").glob("latentsync-*"))


# ----------------------------------------------------------------------------------------------------------
# The example workflows


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_api_workflow_writes_the_video(pack_server: ComfyServer, name: str, tmp_path: Path) -> None:
    check_video(saved_video(pack_server, run(pack_server, api_workflow(name)), tmp_path))
    assert not pack_temp_folders(pack_server)


def test_all_in_one_models_live_in_comfys_cache(pack_server: ComfyServer, tmp_path: Path) -> None:
    # A changed setting reuses the loaded models; "free memory" drops them, so they are loaded once more. The server
    # takes the /free request between two prompts: before the third run or after it, so two runs follow it.
    def unet_loads() -> int:
        return pack_server.log_text().count("LatentSync UNet latentsync_unet.pt")

    prompt = api_workflow("latentsync_all_in_one")
    lipsync = prompt[node_of(prompt, "LatentSyncLipSync")]["inputs"]
    loads = []
    for seed in (101, 102, 103, 104):
        if seed == 103:
            post(pack_server, "/free", {"unload_models": True, "free_memory": True})
        lipsync["seed"] = seed
        check_video(saved_video(pack_server, run(pack_server, prompt), tmp_path))
        loads.append(unet_loads())
    assert loads[1] == loads[0] and loads[3] == loads[1] + 1


def test_video_sampler_with_the_videos_own_sound_a_lora_and_deepcache(pack_server: ComfyServer, tmp_path: Path) -> None:
    prompt = api_workflow("latentsync_long_video")
    sampler = prompt[node_of(prompt, "LatentSyncVideoSampler")]
    del sampler["inputs"]["audio"]
    prompt["90"] = {
        "class_type": "LatentSyncLoRA",
        "inputs": {"model": sampler["inputs"]["model"], "lora_name": LORA_FILE, "strength": 0.8},
    }
    switches = {"deepcache_interval": 2, "deepcache_branch": 0, "cfg_batch": True, "compile": False, "vae_batch": 0}
    switches.update({"window_batch": 2, "detect_size": 0, "io_overlap": True})
    prompt["91"] = {"class_type": "LatentSyncSpeed", "inputs": switches}
    sampler["inputs"].update({"model": ["90", 0], "speed": ["91", 0], "steps": 2})
    # The output lasts as the sound decodes: AAC adds its padding, so this may be one frame more than the clip.
    sound = load_audio(pack_server.input_dir / VIDEO_FILE, MODEL_SAMPLE_RATE)
    frames = math.floor(Fraction(len(sound), MODEL_SAMPLE_RATE) * CLIP_FPS + Fraction(1, 2))
    check_video(saved_video(pack_server, run(pack_server, prompt), tmp_path), frames=frames)


def create_video_prompt() -> dict:
    """Load Video → Get Video Components → LatentSync Create Video (with the speech) → Save Video."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": VIDEO_FILE}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": AUDIO_FILE}},
        "4": {
            "class_type": "LatentSyncCreateVideo",
            "inputs": {"images": ["2", 0], "fps": ["2", 2], "crf": 23, "audio": ["3", 0]},
        },
        "5": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["4", 0], "filename_prefix": "test/create", "format": "auto", "codec": "auto"},
        },
    }


def test_create_video_and_sync_score(pack_server: ComfyServer, tmp_path: Path) -> None:
    prompt = {
        **create_video_prompt(),
        "6": {
            "class_type": "LatentSyncSyncNetLoader",
            "inputs": {"syncnet_name": "stable_syncnet.pt", "device": "auto"},
        },
        "7": {
            "class_type": "LatentSyncFaceDetectorLoader",
            "inputs": {"face_detector": "mediapipe", "insightface_model": "buffalo_l"},
        },
        "8": {
            "class_type": "LatentSyncSyncScore",
            "inputs": {
                "syncnet": ["6", 0],
                "face_detector": ["7", 0],
                "images": ["2", 0],
                "audio": ["3", 0],
                "fps": ["2", 2],
                "max_offset": 0,
            },
        },
    }
    entry = run(pack_server, prompt)
    check_video(saved_video(pack_server, entry, tmp_path))
    summary = entry["outputs"]["8"]["text"][0]
    assert summary.startswith("confidence ") and "best offset" in summary


def test_face_tracks_and_face_prepare_with_a_speaker(pack_server: ComfyServer) -> None:
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": VIDEO_FILE}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {
            "class_type": "LatentSyncFaceDetectorLoader",
            "inputs": {"face_detector": "mediapipe", "insightface_model": "buffalo_l"},
        },
        "4": {
            "class_type": "LatentSyncFaceTracks",
            "inputs": {"face_detector": ["3", 0], "images": ["2", 0], "fps": ["2", 2], "min_face_size": 32},
        },
        "5": {
            "class_type": "LatentSyncModelLoader",
            "inputs": {"unet_name": UNET_FILE, "resolution": "auto", "dtype": "auto", "device": "auto"},
        },
        "6": {
            "class_type": "LatentSyncFacePrepare",
            "inputs": {
                "face_detector": ["3", 0], "images": ["2", 0], "model": ["5", 0], "fps": ["2", 2], "face_index": -1,
                "speaker": "0", "tracks": ["4", 1],
            },
        },  # fmt: skip
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 1]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    entry = run(pack_server, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    table = entry["outputs"]["4"]["text"][0].splitlines()
    assert table[0].split() == ["id", "first", "last", "frames", "height", "x", "y"]
    assert [row.split()[:3] for row in table[1:]] == [["0", "0", str(CLIP_FRAMES - 1)]]  # one face, all frames
    assert len(entry["outputs"]["7"]["images"]) == CLIP_FRAMES and len(entry["outputs"]["8"]["images"]) == CLIP_FRAMES


def test_video_sampler_with_a_speaker_map(pack_server: ComfyServer, tmp_path: Path) -> None:
    prompt = api_workflow("latentsync_long_video")
    sampler = prompt[node_of(prompt, "LatentSyncVideoSampler")]
    prompt["90"] = {
        "class_type": "LatentSyncSpeakerMap",
        "inputs": {"face_1": "0", "audio_1": sampler["inputs"]["audio"]},
    }
    sampler["inputs"]["speaker_map"] = ["90", 0]
    check_video(saved_video(pack_server, run(pack_server, prompt), tmp_path))


def documented_python() -> dict:
    """The namespace of the first Python block of the headless section of docs/comfyui.md (its helpers)."""
    section = DOCS.read_text().split("## Headless use", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102  (the documented example, as a reader runs it)
    return namespace


def test_documented_api_example_runs(pack_server: ComfyServer, tmp_path: Path) -> None:
    helpers = documented_python()
    files = helpers["run_workflow"](pack_server.url, create_video_prompt(), timeout_s=RUN_TIMEOUT_S)
    check_video(helpers["download"](pack_server.url, files[0], tmp_path))
    bad = api_workflow("latentsync_all_in_one")
    bad[node_of(bad, "LatentSyncLipSync")]["inputs"]["unet_name"] = "no_such_unet.pt"
    with pytest.raises(RuntimeError, match="no_such_unet.pt"):
        helpers["run_workflow"](pack_server.url, bad)


# ----------------------------------------------------------------------------------------------------------
# Errors users see


def refused_inputs(server: ComfyServer, prompt: dict) -> dict[str, set[tuple[str, str]]]:
    """``{node id: {(input name, error type)}}`` of a prompt that validation refuses (HTTP 400)."""
    status, answer = post_prompt(server, prompt)
    assert status == 400, answer
    return {
        node: {(error["extra_info"]["input_name"], error["type"]) for error in errors["errors"]}
        for node, errors in answer["node_errors"].items()
    }


def test_missing_model_file_fails_validation(pack_server: ComfyServer) -> None:
    prompt = api_workflow("latentsync_basic")
    loader = node_of(prompt, "LatentSyncModelLoader")
    prompt[loader]["inputs"]["unet_name"] = "no_such_unet.pt"
    assert refused_inputs(pack_server, prompt) == {loader: {("unet_name", "value_not_in_list")}}


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_insightface_model_is_a_listed_name_never_a_path(pack_server: ComfyServer, tmp_path: Path, where) -> None:
    # A folder outside the model folders holding files with InsightFace's names: loading them must not even be tried,
    # and the answer must be the same as for a folder that does not exist (no probing of the server's disk).
    planted = tmp_path / "planted"
    planted.mkdir()
    for name in ("det_10g.onnx", "2d106det.onnx"):
        (planted / name).write_bytes(b"not a model")
    models = pack_server.models_dir / "insightface" / "models"
    name = str(planted) if where == "absolute" else os.path.relpath(planted, models)
    prompt = api_workflow("latentsync_basic")
    loader = node_of(prompt, "LatentSyncFaceDetectorLoader")
    answers = []
    for value in (name, name + "_missing"):
        prompt[loader]["inputs"].update(face_detector="insightface", insightface_model=value)
        answers.append(refused_inputs(pack_server, prompt))
    assert answers[0] == answers[1] == {loader: {("insightface_model", "value_not_in_list")}}


def test_unknown_values_flag_only_their_own_inputs(pack_server: ComfyServer) -> None:
    prompt = api_workflow("latentsync_all_in_one")
    lipsync = node_of(prompt, "LatentSyncLipSync")
    prompt[lipsync]["inputs"].update(vae_name="no_such_vae", long_audio="no_such_policy")
    expected = {("vae_name", "value_not_in_list"), ("long_audio", "value_not_in_list")}
    assert refused_inputs(pack_server, prompt) == {lipsync: expected}


def combo_options(server: ComfyServer, node: str, name: str) -> list[str]:
    spec = server.object_info[node]["input"]["required"][name]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_each_loader_offers_the_files_of_its_kind(pack_server: ComfyServer) -> None:
    pack_server.object_info = pack_server.get_json("/object_info")  # after the models were placed
    assert combo_options(pack_server, "LatentSyncModelLoader", "unet_name") == ["latentsync_unet.pt"]
    assert combo_options(pack_server, "LatentSyncAudioEncoderLoader", "whisper_name") == ["whisper/tiny.pt"]
    assert combo_options(pack_server, "LatentSyncSyncNetLoader", "syncnet_name") == ["stable_syncnet.pt"]
    assert combo_options(pack_server, "LatentSyncLipSync", "unet_name") == ["latentsync_unet.pt"]
    assert combo_options(pack_server, "LatentSyncLipSync", "whisper_name") == ["whisper/tiny.pt"]


def test_video_files_outside_comfys_folders_are_refused(pack_server: ComfyServer, tmp_path: Path) -> None:
    outside = tmp_path / "private.mp4"
    shutil.copy(pack_server.input_dir / VIDEO_FILE, outside)
    for name in (str(outside), os.path.relpath(outside, pack_server.input_dir)):
        prompt = api_workflow("latentsync_long_video")
        prompt[node_of(prompt, "LoadVideo")]["inputs"]["file"] = name
        error = node_error(run(pack_server, prompt))
        assert error["node_type"] == "LatentSyncVideoSampler"
        assert "outside ComfyUI's input, output and temp folders" in error["exception_message"]


def test_a_run_without_any_face_says_so_on_the_node(pack_server: ComfyServer) -> None:
    with VideoWriter(pack_server.input_dir / "no_face.mp4", CLIP_FPS, 64, 64) as writer:
        for _ in range(CLIP_FRAMES):
            writer.write_frame(np.full((64, 64, 3), 128, np.uint8))
    prompt = api_workflow("latentsync_long_video")
    prompt[node_of(prompt, "LoadVideo")]["inputs"]["file"] = "no_face.mp4"
    entry = run(pack_server, prompt)
    assert entry["status"]["status_str"] == "success", describe_error(entry)
    (notice,) = entry["outputs"][node_of(prompt, "LatentSyncVideoSampler")]["text"]
    assert notice.startswith("No face was found in any frame, so the video is unchanged.")


def test_wrong_checkpoint_is_a_node_error(pack_server: ComfyServer) -> None:
    folder = pack_server.models_dir / "latentsync"
    shutil.copy(folder / "whisper" / "tiny.pt", folder / "not_a_unet.pt")  # a Whisper file named like a UNet
    try:
        prompt = api_workflow("latentsync_basic")
        loader = node_of(prompt, "LatentSyncModelLoader")
        prompt[loader]["inputs"]["unet_name"] = "not_a_unet.pt"
        error = node_error(run(pack_server, prompt))
    finally:
        (folder / "not_a_unet.pt").unlink()
    assert error["node_type"] == "LatentSyncModelLoader"
    assert "is not a LatentSync 1.5/1.6 UNet checkpoint" in error["exception_message"]


def test_video_without_sound_and_no_audio_is_a_node_error(pack_server: ComfyServer) -> None:
    prompt = api_workflow("latentsync_long_video")
    prompt[node_of(prompt, "LoadVideo")]["inputs"]["file"] = SILENT_VIDEO_FILE
    del prompt[node_of(prompt, "LatentSyncVideoSampler")]["inputs"]["audio"]
    entry = run(pack_server, prompt)
    error = node_error(entry)
    assert error["node_type"] == "LatentSyncVideoSampler"
    assert "no audio track and no AUDIO is connected" in error["exception_message"]
    assert entry["outputs"] == {} and not pack_temp_folders(pack_server)
    assert "LoadVideo" in pack_server.get_json("/object_info/LoadVideo")  # the server lives on


def test_mismatched_frame_counts_are_a_node_error(pack_server: ComfyServer) -> None:
    prompt = api_workflow("latentsync_basic")
    prepare = prompt[node_of(prompt, "LatentSyncFacePrepare")]
    prompt["90"] = {
        "class_type": "ImageFromBatch",
        "inputs": {"image": prepare["inputs"]["images"], "batch_index": 0, "length": 10},
    }
    prepare["inputs"]["images"] = ["90", 0]
    error = node_error(run(pack_server, prompt))
    assert error["node_type"] == "LatentSyncSampler"
    assert f"prepared from 10 frames but {CLIP_FRAMES} frames were given" in error["exception_message"]


def test_api_twins_are_accepted_and_a_cancel_stops_the_run_and_removes_its_files(pack_server: ComfyServer) -> None:
    # 1. A run to cancel (20 steps, as shipped), in its video sampler
    prompt = api_workflow("latentsync_long_video")
    prompt[node_of(prompt, "LatentSyncVideoSampler")]["inputs"]["steps"] = 20
    status, answer = post_prompt(pack_server, prompt)
    assert status == 200, answer
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not pack_temp_folders(pack_server):
        assert time.monotonic() < deadline, "the video sampler never started"
        time.sleep(0.1)

    # 2. Meanwhile the API twins, with only file names changed, pass validation (and are taken off the queue)
    queued = []
    for name in sorted(WORKFLOWS):
        status, twin = post_prompt(pack_server, api_twin(name))
        assert status == 200 and twin["node_errors"] == {}, (name, twin)
        queued.append(twin["prompt_id"])
    post(pack_server, "/queue", {"delete": queued})

    # 3. Cancel: the run ends as interrupted, with no output and no temporary files
    post(pack_server, "/interrupt", {})
    wait_for_idle(pack_server)
    entry = pack_server.get_json(f"/history/{answer['prompt_id']}")[answer["prompt_id"]]
    assert "execution_interrupted" in messages(entry)
    assert entry["outputs"] == {} and not pack_temp_folders(pack_server)
