"""The example workflows on disk are what `workflow_builder` makes in the real frontend: the UI graphs and their
API twins cannot drift apart, and both follow the nodes' current inputs."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("websocket", reason="building workflows needs the websocket-client package")

from .comfy_server import ComfyServer
from .ui_workflow_check import FrontendSession, find_chromium
from .workflow_builder import API_DIR, UI_DIR, WORKFLOWS, build


@pytest.fixture(scope="module")
def builder_frontend(comfy: ComfyServer) -> FrontendSession:
    try:
        chromium = find_chromium()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    with FrontendSession(comfy.url, chromium) as session:
        yield session


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_files_are_what_the_builder_makes(builder_frontend: FrontendSession, name: str) -> None:
    ui, api = build(builder_frontend, WORKFLOWS[name])
    rebuild = "rebuild them: python -m tests.integration.workflow_builder"
    assert json.loads((UI_DIR / f"{name}.json").read_text()) == ui, f"workflows/{name}.json is stale; {rebuild}"
    assert json.loads((API_DIR / f"{name}.json").read_text()) == api, f"workflows/api/{name}.json is stale; {rebuild}"
