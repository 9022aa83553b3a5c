"""UI-format workflows, dropped onto the real ComfyUI frontend in headless Chromium, load without missing nodes
or shifted widget values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("websocket", reason="the UI check needs the websocket-client package")

from .comfy_server import REPO_ROOT, ComfyServer
from .ui_workflow_check import FrontendSession, find_chromium

PACK_WORKFLOWS = sorted(REPO_ROOT.glob("example_workflows/*.json")) + sorted(REPO_ROOT.glob("workflows/*.json"))


@pytest.fixture(scope="session")
def frontend(comfy: ComfyServer) -> FrontendSession:
    try:
        chromium = find_chromium()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    with FrontendSession(comfy.url, chromium) as session:
        yield session


def ui_workflow(*nodes: dict, links: tuple[list, ...] = ()) -> dict:
    """A UI-format (litegraph) workflow; each `links` row is [id, from_node, from_slot, to_node, to_slot, type]."""
    return {
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": max((link[0] for link in links), default=0),
        "nodes": list(nodes),
        "links": list(links),
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def ui_node(node_id: int, node_type: str, widgets_values: list, inputs=(), outputs=()) -> dict:
    return {
        "id": node_id,
        "type": node_type,
        "pos": [300 * node_id, 0],
        "size": [300, 120],
        "flags": {},
        "order": node_id,
        "mode": 0,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "properties": {"Node name for S&R": node_type},
        "widgets_values": widgets_values,
    }


def empty_image_to_preview(empty_image_values: list, *extra_nodes: dict) -> dict:
    source = ui_node(1, "EmptyImage", empty_image_values, outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]}])
    preview = ui_node(2, "PreviewImage", [], inputs=[{"name": "images", "type": "IMAGE", "link": 1}])
    return ui_workflow(source, preview, *extra_nodes, links=([1, 1, 0, 2, 0, "IMAGE"],))


def test_core_workflow_loads_cleanly(frontend: FrontendSession) -> None:
    report = frontend.check(empty_image_to_preview([64, 48, 1, 0]), "core.json")
    assert report.ok, report
    assert {n["type"] for n in report.nodes} == {"EmptyImage", "PreviewImage"}
    width = next(w for n in report.nodes if n["type"] == "EmptyImage" for w in n["widgets"] if w["name"] == "width")
    assert width["value"] == 64


def test_unknown_node_type_is_reported_missing(frontend: FrontendSession) -> None:
    unknown = ui_node(3, "LatentSyncNoSuchNode", [1, "x"])
    report = frontend.check(empty_image_to_preview([64, 48, 1, 0], unknown), "unknown.json")
    assert report.missing_node_types == ["LatentSyncNoSuchNode"]
    assert not report.ok
    assert any("LatentSyncNoSuchNode" in dialog for dialog in report.dialogs), report.dialogs


def test_widget_count_mismatch_is_reported(frontend: FrontendSession) -> None:
    report = frontend.check(empty_image_to_preview([64, 48]), "short.json")
    assert report.widget_mismatches == [
        {
            "id": 1,
            "type": "EmptyImage",
            "saved": 2,
            "expected": 4,
            "widgets": ["width", "height", "batch_size", "color"],
        }
    ]


@pytest.mark.parametrize("path", PACK_WORKFLOWS, ids=[p.name for p in PACK_WORKFLOWS])
def test_pack_workflow_loads_cleanly(frontend: FrontendSession, path: Path) -> None:
    workflow = json.loads(path.read_text())
    report = frontend.check(workflow, path.name)
    assert report.ok, report
    # The graph shown is the file's: every node, nothing else (not the frontend's start-up graph, not an empty one)
    assert sorted((n["id"], n["type"]) for n in report.nodes) == sorted((n["id"], n["type"]) for n in workflow["nodes"])
    assert report.nodes


def test_a_graph_the_frontend_loads_by_itself_is_not_taken_for_the_drop(frontend: FrontendSession) -> None:
    # While the drop is awaited the frontend loads another graph, as it does with its start-up workflow, and the
    # dropped file never loads (it is not a workflow): the check must keep waiting for the file, not describe the
    # other graph.
    frontend.page.evaluate(
        "(graph) => { setTimeout(() => window.comfyAPI.app.app.loadGraphData(graph), 500); }",
        empty_image_to_preview([32, 32, 1, 0]),
    )
    timeout_s, frontend.timeout_s = frontend.timeout_s, 5.0
    try:
        with pytest.raises(RuntimeError, match="did not load the dropped workflow"):
            frontend.check({"not": "a workflow"}, "dropped.json")
    finally:
        frontend.timeout_s = timeout_s
