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

GENERATION = {"steps": 20, "guidance": 1.5, "seed": 1247, "window_frames": 16}
POLICIES = {"long_audio": "pingpong", "short_audio": "trim", "no_face": "passthrough"}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]  # of the body's top-left corner; the title bar sits above it
    widgets: dict = field(default_factory=dict)
    width: int | None = None  # wider than the frontend's own size, so long file names show


@dataclass
class Workflow:
    nodes: list[Node]
    links: list[tuple[int, int, int, str]]  # (from node, output index, to node, input name)


# Layout: the graph reads left to right in columns COLUMN apart; the loaders stack at the top of the first column,
# in the order the samplers take their models, with the media loaders below them, so every wire leaves a column
# to the right and none crosses the loaders. `build` stores a view that shows the whole graph.
COLUMN = 400
# Room below Load Video for its preview, which the frontend adds once the file is there (a square or landscape
# clip's fits; a portrait clip's reaches over Load Audio). More would shrink the stored view below the zoom at
# which the frontend still draws node text (0.6).
VIDEO_PREVIEW = 330


def _loaders(first_id: int) -> list[Node]:
    return [
        Node(first_id, "LatentSyncModelLoader", (0, 0), {"unet_name": UNET_FILE}),
        Node(first_id + 1, "VAELoader", (0, 210), {"vae_name": VAE_FILE}, width=340),
        Node(first_id + 2, "LatentSyncAudioEncoderLoader", (0, 330), {"whisper_name": WHISPER_FILE}),
        Node(first_id + 3, "LatentSyncFaceDetectorLoader", (0, 470), {"face_detector": "mediapipe"}),
    ]


# LoadVideo + LoadAudio -> frames, faces, speech features -> LatentSync Sampler (IMAGE) -> Create Video -> Save Video
BASIC = Workflow(
    nodes=[
        *_loaders(4),
        Node(1, "LoadVideo", (0, 640), {"file": VIDEO_FILE}),
        Node(3, "LoadAudio", (0, 640 + VIDEO_PREVIEW), {"audio": AUDIO_FILE}),
        Node(2, "GetVideoComponents", (COLUMN, 640)),
        Node(8, "LatentSyncAudioEncode", (2 * COLUMN, 240), {"fps": 25.0, "video_frames": 0}),
        Node(9, "LatentSyncFacePrepare", (2 * COLUMN, 420), {"fps": 25.0, "face_index": -1}),
        Node(10, "LatentSyncSampler", (3 * COLUMN, 0), {"fps": 25.0, **GENERATION, **POLICIES}),
        Node(11, "CreateVideo", (4 * COLUMN, 0), {"fps": 25.0}),
        Node(12, "SaveVideo", (5 * COLUMN, 0), {"filename_prefix": "latentsync/basic"}),
    ],
    links=[
        (1, 0, 2, "video"),
        (6, 0, 8, "audio_encoder"),
        (3, 0, 8, "audio"),
        (2, 2, 8, "fps"),
        (7, 0, 9, "face_detector"),
        (2, 0, 9, "images"),
        (4, 0, 9, "model"),
        (2, 2, 9, "fps"),
        (4, 0, 10, "model"),
        (5, 0, 10, "vae"),
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
        *_loaders(3),
        Node(1, "LoadVideo", (0, 640), {"file": VIDEO_FILE}),
        Node(2, "LoadAudio", (0, 640 + VIDEO_PREVIEW), {"audio": AUDIO_FILE}),
        Node(7, "LatentSyncVideoSampler", (COLUMN + 120, 0), {**GENERATION, "face_index": -1, **POLICIES}),
        Node(8, "SaveVideo", (2 * COLUMN + 120, 0), {"filename_prefix": "latentsync/long_video"}),
    ],
    links=[
        (3, 0, 7, "model"),
        (4, 0, 7, "vae"),
        (5, 0, 7, "audio_encoder"),
        (6, 0, 7, "face_detector"),
        (1, 0, 7, "video"),
        (2, 0, 7, "audio"),
        (7, 0, 8, "video"),
    ],
)

# The shortest graph: Load Video + Load Audio -> LatentSync LipSync -> Save Video.
ALL_IN_ONE = Workflow(
    nodes=[
        Node(1, "LoadVideo", (0, 0), {"file": VIDEO_FILE}),
        Node(2, "LoadAudio", (0, VIDEO_PREVIEW), {"audio": AUDIO_FILE}),
        Node(
            3,
            "LatentSyncLipSync",
            (COLUMN, 0),
            {
                "unet_name": UNET_FILE,
                "whisper_name": WHISPER_FILE,
                "vae_name": VAE_FILE,
                "face_detector": "mediapipe",
                **GENERATION,
                "face_index": -1,
                **POLICIES,
            },
            width=460,
        ),
        Node(4, "SaveVideo", (COLUMN + 520, 0), {"filename_prefix": "latentsync/all_in_one"}),
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
        if (item.width) node.setSize([item.width, node.size[1]]);
        nodes[item.id] = node;
    }
    for (const [from, output, to, input] of spec.links) {
        const target = nodes[to];
        const slot = target.findInputSlot(input);
        if (slot < 0) throw new Error(`${target.type} has no input ${input}`);
        if (!nodes[from].connect(output, target, slot)) throw new Error(`cannot link ${from}:${output} to ${to}.${input}`);
    }
    // The view the file opens with: the whole graph, below the frontend's top bars and right of its side bar.
    const margin = { left: 80, top: 90, right: 40, bottom: 20 };
    const bounds = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of app.graph.nodes) {
        bounds[0] = Math.min(bounds[0], node.pos[0]);
        bounds[1] = Math.min(bounds[1], node.pos[1] - window.LiteGraph.NODE_TITLE_HEIGHT);
        bounds[2] = Math.max(bounds[2], node.pos[0] + node.size[0]);
        bounds[3] = Math.max(bounds[3], node.pos[1] + node.size[1]);
    }
    const canvas = app.canvas.canvas;
    const scale = Math.min(
        1,
        (canvas.clientWidth - margin.left - margin.right) / (bounds[2] - bounds[0]),
        (canvas.clientHeight - margin.top - margin.bottom) / (bounds[3] - bounds[1]),
    );
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [margin.left / scale - bounds[0], margin.top / scale - bounds[1]];
    app.graph.setDirtyCanvas(true, true);
    const workflow = app.graph.serialize();
    const prompt = await app.graphToPrompt();
    return { workflow, prompt: prompt.output };
}"""


def build(frontend: FrontendSession, workflow: Workflow) -> tuple[dict, dict]:
    """(UI workflow, API prompt) of ``workflow`` as the frontend serialises them."""
    spec = {
        "nodes": [
            {"id": n.id, "type": n.type, "pos": list(n.pos), "widgets": n.widgets, "width": n.width}
            for n in workflow.nodes
        ],
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
