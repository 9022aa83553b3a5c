"""Start a real ComfyUI server with this pack installed, and stop it again, for integration tests.

The server runs from a ComfyUI checkout (`$COMFYUI_PATH`, the folder holding `main.py`) under the interpreter
`$COMFYUI_PYTHON` (default: the one running the tests), on a free loopback port, with every folder it writes to
inside one temporary base folder:

    base/
        custom_nodes/             ComfyUI's default custom-node folder (left empty; ComfyUI fails without it)
        packs/<repo name>         a link to this repository: the pack as a user installs it
        models/latentsync/ vae/ insightface/
        input/  output/  temp/  user/
        extra_model_paths.yaml    registers packs/ as a custom-node folder and the model folders above
        comfyui.log               everything the server printed

Only the pack is linked in (not its siblings), so nothing else beside the checkout is imported as a custom node.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_FOLDERS = ("latentsync", "vae", "insightface")
STARTUP_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 20.0


class ComfyServerError(RuntimeError):
    """The server could not be started, or answered a request with an error."""


@dataclass
class ComfyServer:
    """A running ComfyUI server; `stop()` ends it (the `comfy` fixture does so at the end of the session)."""

    process: subprocess.Popen
    url: str
    base_dir: Path
    pack_link: Path  # the pack as ComfyUI sees it: base/packs/<repo name>
    log_path: Path
    startup_seconds: float = 0.0
    object_info: dict = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pack_import_line(self) -> str | None:
        """The line of ComfyUI's "Import times for custom nodes" table naming this pack, or None if absent.

        ComfyUI writes `   0.4 seconds: <path>` for a pack that imported and `   0.0 seconds (IMPORT FAILED): <path>`
        for one whose import, or whose `comfy_entrypoint`, raised.
        """
        pattern = re.compile(r"^\s*\d+\.\d+ seconds.*: " + re.escape(str(self.pack_link)) + r"\s*$")
        return next((line for line in self.log_text().splitlines() if pattern.match(line)), None)

    def get_json(self, path: str, **query: str) -> dict:
        return self._request("GET", path, query=query)

    def post_json(self, path: str, payload: dict) -> dict:
        return self._request("POST", path, payload=payload)

    def _request(self, method: str, path: str, *, query: dict | None = None, payload: dict | None = None) -> dict:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        body = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ComfyServerError(
                f"{method} {path} answered {error.code}: {error.read().decode(errors='replace')}"
            ) from None

    def stop(self) -> None:
        """Ctrl-C the server (it then cleans its temp folder), escalating to SIGKILL if it hangs."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_base_dir(base_dir: Path, pack_dir: Path) -> tuple[Path, Path]:
    """Lay out `base_dir` (see the module docstring); return (extra-model-paths yaml, the pack's link)."""
    for name in ("custom_nodes", "packs", "input", "output", "temp", "user", *(f"models/{m}" for m in MODEL_FOLDERS)):
        (base_dir / name).mkdir(parents=True, exist_ok=True)
    pack_link = base_dir / "packs" / pack_dir.name
    pack_link.symlink_to(pack_dir, target_is_directory=True)
    section = {"base_path": str(base_dir), "custom_nodes": "packs", **{m: f"models/{m}" for m in MODEL_FOLDERS}}
    config_path = base_dir / "extra_model_paths.yaml"
    config_path.write_text(json.dumps({"latentsync_tests": section}, indent=2))  # JSON is valid YAML
    return config_path, pack_link


def start_comfy_server(
    comfyui_path: Path,
    base_dir: Path,
    *,
    python: str | None = None,
    pack_dir: Path = REPO_ROOT,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> ComfyServer:
    """Start ComfyUI on CPU with `pack_dir` as its only custom node pack; return once `/object_info` answers.

    Raises ComfyServerError (with the end of the server log) if it exits or does not answer within `timeout_s`.
    """
    comfyui_path = Path(comfyui_path).resolve()
    if not (comfyui_path / "main.py").is_file():
        raise ComfyServerError(f"{comfyui_path} is not a ComfyUI checkout: it has no main.py")
    base_dir = Path(base_dir).resolve()
    config_path, pack_link = prepare_base_dir(base_dir, Path(pack_dir).resolve())
    port = free_loopback_port()
    command = [
        python or sys.executable,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base_dir),
        "--extra-model-paths-config",
        str(config_path),
        "--database-url",
        f"sqlite:///{base_dir / 'user' / 'comfyui.db'}",
    ]
    # One torch thread: on small CPUs the tiny models run ~2.5x faster than with a thread per core fighting the
    # server's other threads.
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    log_path = base_dir / "comfyui.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=comfyui_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    server = ComfyServer(process, f"http://127.0.0.1:{port}", base_dir, pack_link, log_path)
    while True:
        if process.poll() is not None:
            raise ComfyServerError(f"ComfyUI exited with code {process.returncode}:\n{_tail(server.log_text())}")
        try:
            server.object_info = server.get_json("/object_info")
            break
        except (OSError, ComfyServerError):
            if time.monotonic() - started > timeout_s:
                server.stop()
                raise ComfyServerError(f"ComfyUI did not answer within {timeout_s:.0f} s:\n{_tail(server.log_text())}")
            time.sleep(0.5)
    server.startup_seconds = time.monotonic() - started
    return server


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])
