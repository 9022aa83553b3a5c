"""The pack loads into a real ComfyUI server and describes every node input and output for the user."""

from __future__ import annotations

from .comfy_server import REPO_ROOT, ComfyServer

NODE_PREFIX = "LatentSync"
EXPECTED_NODES = {
    "LatentSyncModelLoader",
    "LatentSyncLoRA",
    "LatentSyncVAELoader",
    "LatentSyncAudioEncoderLoader",
    "LatentSyncAudioEncode",
    "LatentSyncFaceDetectorLoader",
    "LatentSyncFacePrepare",
    "LatentSyncFaceTracks",
    "LatentSyncSpeakerMap",
    "LatentSyncSampler",
    "LatentSyncVideoSampler",
    "LatentSyncLipSync",
    "LatentSyncSpeed",
    "LatentSyncCreateVideo",
    "LatentSyncSyncNetLoader",
    "LatentSyncSyncScore",
}


def pack_nodes(comfy: ComfyServer) -> dict[str, dict]:
    return {name: info for name, info in comfy.object_info.items() if name.startswith(NODE_PREFIX)}


def test_server_answers_object_info(comfy: ComfyServer) -> None:
    assert "LoadVideo" in comfy.object_info and "VAELoader" in comfy.object_info


def test_pack_imported_without_error(comfy: ComfyServer) -> None:
    line = comfy.pack_import_line()
    assert line is not None, f"ComfyUI did not try to import {comfy.pack_link}; log:\n{comfy.log_text()[-4000:]}"
    assert "IMPORT FAILED" not in line, f"the pack failed to import; log:\n{comfy.log_text()[-4000:]}"


def test_pack_registers_every_node_in_its_category(comfy: ComfyServer) -> None:
    nodes = pack_nodes(comfy)
    assert set(nodes) == EXPECTED_NODES
    for name, info in nodes.items():
        assert info["category"] == "LatentSync", name
        assert info["display_name"].startswith("LatentSync "), name
        assert info["description"], name


def test_example_workflows_are_listed_without_their_api_twins(comfy: ComfyServer) -> None:
    templates = comfy.get_json("/workflow_templates")
    assert sorted(templates[comfy.pack_link.name]) == sorted(
        path.stem for path in (REPO_ROOT / "workflows").glob("*.json")
    )


def test_pack_nodes_come_from_the_pack(comfy: ComfyServer) -> None:
    module = f"custom_nodes.{comfy.pack_link.name}"
    for name, info in pack_nodes(comfy).items():
        assert info["python_module"] == module, f"{name} is registered by {info['python_module']}, not {module}"


def test_every_input_and_output_has_a_tooltip(comfy: ComfyServer) -> None:
    missing = []
    for name, info in pack_nodes(comfy).items():
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                if not options.get("tooltip"):
                    missing.append(f"{name} input {input_name}")
        for output_name, tooltip in zip(
            info["output_name"], info.get("output_tooltips") or [None] * len(info["output"])
        ):
            if not tooltip:
                missing.append(f"{name} output {output_name}")
    assert not missing, "no tooltip on: " + ", ".join(missing)


def test_inputs_are_shown_by_names_that_say_what_they_hold(comfy: ComfyServer) -> None:
    # The frontend labels inputs by name, not display_name: a display_name would show only in some places, and one
    # name must not mean two things (the Sampler's window length vs Audio Encode's video length).
    renamed, names = [], {}
    for node, info in pack_nodes(comfy).items():
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                if options.get("display_name", input_name) != input_name:
                    renamed.append(f"{node}.{input_name} shown as {options['display_name']}")
                names.setdefault(input_name, set()).add(node)
    assert not renamed
    assert "num_frames" not in names
    assert {"LatentSyncSampler", "LatentSyncVideoSampler", "LatentSyncLipSync"} <= names["window_frames"]
    assert names["video_frames"] == {"LatentSyncAudioEncode"}
