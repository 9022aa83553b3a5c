"""The pack's example workflows, built with the real ComfyUI frontend so they are what a user would save.

Each workflow is described here once (nodes with widget values by name, and links). `build` creates it in the
frontend of a running server (headless Chromium, see `ui_workflow_check`), then takes the frontend's own
serialisations: ``app.graph.serialize()`` is the UI file ``workflows/NAME.json`` and ``app.graphToPrompt()`` its API
twin ``workflows/api/NAME.json`` (what "Export (API)" saves and ``POST /prompt`` takes). Rebuild after changing a
node's inputs:

    COMFYUI_PATH=... COMFYUI_PYTHON=... python -m tests.integration.workflow_builder [--url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .comfy_server import REPO_ROOT, start_comfy_server
from .ui_workflow_check import FrontendSession

UI_DIR = REPO_ROOT / "workflows"
API_DIR = UI_DIR / "api"

# What the workflows load; a user replaces these names by their own files.
VIDEO_FILE = "talking_head.mp4"
AUDIO_FILE = "speech.wav"
UNET_FILE = "latentsync_unet.pt"
WHISPER_FILE = "whisper/tiny.pt"
VAE_FILE = "vae-ft-mse-840000-ema-pruned.safetensors"

GENERATION = {"num_inference_steps": 20, "guidance_scale": 1.5, "seed": 1247, "num_frames": 16}
POLICIES = {"long_audio": "pingpong", "short_audio": "trim", "no_face": "passthrough"}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)


@dataclass
class Workflow:
    nodes: list[Node]
    links: list[tuple[int, int, int, str]]  # (from node, output index, to node, input name)


def _loaders(first_id: int, x: int) -> list[Node]:
    return [
        Node(first_id, "LatentSyncModelLoader", (x, 0), {"unet_name": UNET_FILE}),
        Node(first_id + 1, "LatentSyncAudioEncoderLoader", (x, 200), {"whisper_name": WHISPER_FILE}),
        Node(first_id + 2, "LatentSyncFaceDetectorLoader", (x, 340), {"face_detector": "mediapipe"}),
        Node(first_id + 3, "VAELoader", (x, 480), {"vae_name": VAE_FILE}),
    ]


# LoadVideo + LoadAudio -> frames, faces, speech features -> LatentSync Sampler (IMAGE) -> Create Video -> Save Video
BASIC = Workflow(
    nodes=[
        Node(1, "LoadVideo", (0, 0), {"file": VIDEO_FILE}),
        Node(2, "GetVideoComponents", (0, 420)),
        Node(3, "LoadAudio", (0, 560), {"audio": AUDIO_FILE}),
        *_loaders(4, 360),
        Node(8, "LatentSyncAudioEncode", (760, 0), {"fps": 25.0, "num_frames": 0}),
        Node(9, "LatentSyncFacePrepare", (760, 220), {"fps": 25.0, "face_index": -1}),
        Node(10, "LatentSyncSampler", (1160, 0), {"fps": 25.0, **GENERATION, **POLICIES}),
        Node(11, "CreateVideo", (1560, 0), {"fps": 25.0}),
        Node(12, "SaveVideo", (1900, 0), {"filename_prefix": "latentsync/basic"}),
    ],
    links=[
        (1, 0, 2, "video"),
        (5, 0, 8, "audio_encoder"),
        (3, 0, 8, "audio"),
        (2, 2, 8, "fps"),
        (6, 0, 9, "face_detector"),
        (2, 0, 9, "images"),
        (4, 0, 9, "model"),
        (2, 2, 9, "fps"),
        (4, 0, 10, "model"),
        (7, 0, 10, "vae"),
        (8, 0, 10, "audio_embeds"),
        (2, 0, 10, "images"),
        (9, 0, 10, "faces"),
        (2, 2, 10, "fps"),
        (10, 0, 11, "images"),
        (2, 2, 11, "fps"),
        (3, 0, 11, "audio"),
        (11, 0, 12, "video"),
    ],
)

# Long clips: LoadVideo (VIDEO) streams through LatentSync Video Sampler into Save Video; no IMAGE batch.
LONG_VIDEO = Workflow(
    nodes=[
        Node(1, "LoadVideo", (0, 0), {"file": VIDEO_FILE}),
        Node(2, "LoadAudio", (0, 420), {"audio": AUDIO_FILE}),
        *_loaders(3, 360),
        Node(7, "LatentSyncVideoSampler", (760, 0), {**GENERATION, "face_index": -1, **POLICIES}),
        Node(8, "SaveVideo", (1160, 0), {"filename_prefix": "latentsync/long_video"}),
    ],
    links=[
        (3, 0, 7, "model"),
        (6, 0, 7, "vae"),
        (4, 0, 7, "audio_encoder"),
        (5, 0, 7, "face_detector"),
        (1, 0, 7, "video"),
        (2, 0, 7, "audio"),
        (7, 0, 8, "video"),
    ],
)

# The shortest graph: Load Video + Load Audio -> LatentSync LipSync -> Save Video.
ALL_IN_ONE = Workflow(
    nodes=[
        Node(1, "LoadVideo", (0, 0), {"file": VIDEO_FILE}),
        Node(2, "LoadAudio", (0, 420), {"audio": AUDIO_FILE}),
        Node(
            3,
            "LatentSyncLipSync",
            (360, 0),
            {
                "unet_name": UNET_FILE,
                "whisper_name": WHISPER_FILE,
                "vae_name": VAE_FILE,
                "face_detector": "mediapipe",
                **GENERATION,
                "face_index": -1,
                **POLICIES,
            },
        ),
        Node(4, "SaveVideo", (760, 0), {"filename_prefix": "latentsync/all_in_one"}),
    ],
    links=[(1, 0, 3, "video"), (2, 0, 3, "audio"), (3, 0, 4, "video")],
)

WORKFLOWS = {"latentsync_basic": BASIC, "latentsync_long_video": LONG_VIDEO, "latentsync_all_in_one": ALL_IN_ONE}

# Creates the nodes and links of a workflow spec in the frontend; returns its UI and API serialisations.
_BUILD_JS = """async (spec) => {
    const app = window.comfyAPI.app.app;
    app.graph.clear();
    const nodes = {};
    for (const item of spec.nodes) {
        const node = window.LiteGraph.createNode(item.type);
        if (!node) throw new Error(`unknown node type ${item.type}`);
        node.id = item.id;
        node.pos = item.pos;
        app.graph.add(node);
        for (const [name, value] of Object.entries(item.widgets)) {
            const widget = (node.widgets ?? []).find((w) => w.name === name);
            if (!widget) throw new Error(`${item.type} has no widget ${name}`);
            widget.value = value;
            if (name === "seed" || name === "noise_seed") {
                const control = node.widgets.find((w) => w.name === "control_after_generate");
                if (control) control.value = "fixed";
            }
        }
        nodes[item.id] = node;
    }
    for (const [from, output, to, input] of spec.links) {
        const target = nodes[to];
        const slot = target.findInputSlot(input);
        if (slot < 0) throw new Error(`${target.type} has no input ${input}`);
        if (!nodes[from].connect(output, target, slot)) throw new Error(`cannot link ${from}:${output} to ${to}.${input}`);
    }
    app.graph.setDirtyCanvas(true, true);
    const workflow = app.graph.serialize();
    const prompt = await app.graphToPrompt();
    return { workflow, prompt: prompt.output };
}"""


def build(frontend: FrontendSession, workflow: Workflow) -> tuple[dict, dict]:
    """(UI workflow, API prompt) of ``workflow`` as the frontend serialises them."""
    spec = {
        "nodes": [{"id": n.id, "type": n.type, "pos": list(n.pos), "widgets": n.widgets} for n in workflow.nodes],
        "links": [list(link) for link in workflow.links],
    }
    result = frontend.page.evaluate(_BUILD_JS, spec)
    return result["workflow"], result["prompt"]


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running ComfyUI server with this pack (default: start one from $COMFYUI_PATH)")
    args = parser.parse_args(argv)
    server = None
    if args.url is None:
        if not os.environ.get("COMFYUI_PATH"):
            parser.error("give --url, or set COMFYUI_PATH to a ComfyUI checkout")
        server = start_comfy_server(
            Path(os.environ["COMFYUI_PATH"]),
            Path(tempfile.mkdtemp(prefix="workflow-builder-")),
            python=os.environ.get("COMFYUI_PYTHON"),
        )
    try:
        with FrontendSession(args.url or server.url) as frontend:
            for name, workflow in WORKFLOWS.items():
                ui, api = build(frontend, workflow)
                write_json(UI_DIR / f"{name}.json", ui)
                write_json(API_DIR / f"{name}.json", api)
                print(f"wrote {name}: {len(ui['nodes'])} nodes", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
