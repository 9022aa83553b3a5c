"""The `comfy` fixture: one real ComfyUI server with this pack installed, shared by the integration tests.

Needs a ComfyUI checkout in `$COMFYUI_PATH` and, when its requirements live in another environment, that
environment's interpreter in `$COMFYUI_PYTHON`; without `$COMFYUI_PATH` every test here skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .comfy_server import ComfyServer, start_comfy_server


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> ComfyServer:
    comfyui_path = os.environ.get("COMFYUI_PATH")
    if not comfyui_path:
        pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI checkout (and COMFYUI_PYTHON at its interpreter)")
    server = start_comfy_server(
        Path(comfyui_path), tmp_path_factory.mktemp("comfyui"), python=os.environ.get("COMFYUI_PYTHON")
    )
    yield server
    server.stop()
