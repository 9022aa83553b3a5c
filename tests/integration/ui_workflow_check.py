"""Drop a UI-format workflow onto the real ComfyUI frontend in headless Chromium and report what the frontend sees.

The file goes in the way a user drags it onto the page (a `drop` event carrying the file), so it takes the
frontend's own path: `app.handleFile` -> `app.loadGraphData`. The report lists

- `missing_node_types`: node types the frontend does not know, exactly as it passes them to the "missing nodes"
  dialog (through the `afterConfigureGraph` extension hook);
- `widget_mismatches`: known nodes whose saved `widgets_values` has another length than the node saves now; the
  frontend assigns saved values to widgets by position, so any difference shifts or drops settings silently;
- `invalid_combo_values`: dropdown values not among the options the server offers (a shifted value, or a model
  file this server does not have);
- `unloaded_nodes`: nodes of the file that are not in the graph the frontend shows (an empty report is never
  taken for a clean load: the drop is waited for by a token in the file's `extra`, see `_DROP_AND_DESCRIBE_JS`);
- the dialogs the drop opened, and the page's console errors meanwhile.

`FrontendSession.screenshot` saves the canvas as the user sees it right after the drop (the view the file
stores in ``extra.ds``).

Usage (from the repository root):

    python -m tests.integration.ui_workflow_check [--url http://127.0.0.1:8188] workflow.json [...]

Without `--url` it starts its own server from `$COMFYUI_PATH` (see `comfy_server.py`). Exit status 1 if any
workflow has missing node types or widget mismatches. Needs Debian's `chromium` (or `$CHROMIUM`) and the
`websocket-client` package.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import websocket
from typing_extensions import Self  # a dependency of torch

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--remote-debugging-port=0",
)
FRONTEND_TIMEOUT_S = 120.0
VIEWPORT = (1600, 900)  # CSS pixels of the page: a browser window on a 1080p screen

# True once the app has registered the server's node types (the drop handler is added right after).
_APP_READY_JS = """(() => {
    const app = window.comfyAPI?.app?.app;
    return !!(app && app.graph && window.LiteGraph && "PreviewImage" in window.LiteGraph.registered_node_types);
})()"""

# Drops `fileText` as `fileName` on the page, waits until the frontend has configured its graph from that file (the
# graph's `extra` carries the drop's `token`: a graph the frontend loads by itself, such as its start-up workflow,
# never counts), and describes it.
_DROP_AND_DESCRIBE_JS = """async (fileText, fileName, token, timeoutMs) => {
    const app = window.comfyAPI.app.app;
    if (!window.__uiCheckHooked) {
        app.registerExtension({
            name: "tests.UiWorkflowCheck",
            afterConfigureGraph(missingNodeTypes) {
                if (app.graph.extra?.ui_check_token !== window.__uiCheckToken) return;
                window.__uiCheckMissing = missingNodeTypes.map((m) => (typeof m === "string" ? m : m.type));
            },
        });
        window.__uiCheckHooked = true;
    }
    window.__uiCheckToken = token;
    window.__uiCheckMissing = undefined;
    const started = Date.now();
    // Close what earlier drops (or the first-run template browser) left open, so `dialogs` is this drop's only.
    document.querySelectorAll(".p-dialog .p-dialog-close-button").forEach((button) => button.click());
    while (document.querySelector(".p-dialog")) {
        if (Date.now() - started > timeoutMs) throw new Error("the frontend's open dialogs did not close");
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
    let lastDrop = 0;
    while (window.__uiCheckMissing === undefined) {
        if (Date.now() - started > timeoutMs) throw new Error("the frontend did not load the dropped workflow");
        if (Date.now() - lastDrop > 2000) {  // the drop handler may still be on its way in; drop again
            const transfer = new DataTransfer();
            transfer.items.add(new File([fileText], fileName, { type: "application/json" }));
            document.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
            lastDrop = Date.now();
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const known = window.LiteGraph.registered_node_types;
    const plain = (value) => (value === undefined ? null : JSON.parse(JSON.stringify(value)));
    return {
        missing: window.__uiCheckMissing,
        nodes: app.graph.nodes.map((node) => ({
            id: node.id,
            type: node.type,
            known: node.type in known && !node.has_errors,
            saved_widgets_values: plain(node.serialize().widgets_values) ?? [],
            widgets: (node.widgets ?? []).map((w) => ({
                name: w.name,
                type: w.type,
                value: plain(w.value),
                options: Array.isArray(w.options?.values) ? plain(w.options.values) : null,
            })),
        })),
        dialogs: [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText),
    };
}"""


@dataclass
class WorkflowReport:
    name: str
    missing_node_types: list[str]
    widget_mismatches: list[dict]
    invalid_combo_values: list[dict]
    unloaded_nodes: list[str]
    dialogs: list[str]
    console_errors: list[str]
    nodes: list[dict] = field(repr=False)

    @property
    def ok(self) -> bool:
        return not self.missing_node_types and not self.widget_mismatches and not self.unloaded_nodes


class DevToolsPage:
    """One page of a headless Chromium, driven over the Chrome DevTools Protocol."""

    def __init__(self, chromium: str):
        self._profile = tempfile.TemporaryDirectory(prefix="ui-check-chromium-", ignore_cleanup_errors=True)
        self._browser = subprocess.Popen(  # in its own process group, so close() ends its helper processes too
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._next_id = 0
        self.console_errors: list[str] = []
        try:
            self._socket = websocket.create_connection(self._page_socket_url(), suppress_origin=True, timeout=60)
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _page_socket_url(self) -> str:
        # Chromium writes "<port>\n<browser path>" here once its DevTools server listens.
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while len(port_file.read_text().splitlines() if port_file.exists() else []) < 2:
            if self._browser.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]
            self._record_event(message)

    def _record_event(self, message: dict) -> None:
        params = message.get("params", {})
        if message.get("method") == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console_errors.append(details.get("exception", {}).get("description") or details["text"])
        elif message.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))

    def evaluate(self, expression: str, *args) -> object:
        """The value of `expression`, or of the (async) function `expression` applied to the JSON values `args`."""
        if args:
            expression = f"({expression})({', '.join(json.dumps(a) for a in args)})"
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details["text"])
        return result["result"].get("value")

    def close(self) -> None:
        if getattr(self, "_socket", None) is not None:
            self._socket.close()
        with contextlib.suppress(ProcessLookupError):  # the whole group may be gone already
            os.killpg(self._browser.pid, signal.SIGTERM)
        try:
            self._browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._browser.pid, signal.SIGKILL)
            self._browser.wait()
        self._profile.cleanup()


class FrontendSession:
    """The ComfyUI frontend of the server at `url`, open in headless Chromium; `check()` drops workflows on it."""

    def __init__(self, url: str, chromium: str | None = None, timeout_s: float = FRONTEND_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.page = DevToolsPage(chromium or find_chromium())
        try:
            width, height = VIEWPORT
            self.page.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
            self.page.call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout_s
            while not self.page.evaluate(_APP_READY_JS):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the ComfyUI frontend at {url} did not start within {timeout_s:.0f} s")
                time.sleep(0.25)
        except BaseException:
            self.page.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.page.close()

    def check(self, workflow: dict, name: str = "workflow.json") -> WorkflowReport:
        errors_before = len(self.page.console_errors)
        token = secrets.token_hex(8)
        dropped = {**workflow, "extra": {**workflow.get("extra", {}), "ui_check_token": token}}
        seen = self.page.evaluate(_DROP_AND_DESCRIBE_JS, json.dumps(dropped), name, token, self.timeout_s * 1000)
        shown = {(node["id"], node["type"]) for node in seen["nodes"]}
        saved = [(node["id"], node["type"]) for node in workflow.get("nodes", [])]
        unloaded = [f"{node_id} {node_type}" for node_id, node_type in saved if (node_id, node_type) not in shown]
        saved_by_id = {node["id"]: node.get("widgets_values") for node in workflow.get("nodes", [])}
        mismatches, invalid_combos = [], []
        for node in seen["nodes"]:
            if not node["known"]:
                continue
            saved = saved_by_id.get(node["id"])
            if isinstance(saved, list) and len(saved) != len(node["saved_widgets_values"]):
                mismatches.append(
                    {
                        "id": node["id"],
                        "type": node["type"],
                        "saved": len(saved),
                        "expected": len(node["saved_widgets_values"]),
                        "widgets": [w["name"] for w in node["widgets"]],
                    }
                )
            for widget in node["widgets"]:
                if (
                    widget["type"] == "combo"
                    and widget["options"] is not None
                    and widget["value"] not in widget["options"]
                ):
                    invalid_combos.append(
                        {"id": node["id"], "type": node["type"], "widget": widget["name"], "value": widget["value"]}
                    )
        return WorkflowReport(
            name=name,
            missing_node_types=seen["missing"],
            widget_mismatches=mismatches,
            invalid_combo_values=invalid_combos,
            unloaded_nodes=unloaded,
            dialogs=seen["dialogs"],
            console_errors=self.page.console_errors[errors_before:],
            nodes=seen["nodes"],
        )


    def screenshot(self, path: Path) -> Path:
        """Save the page as a PNG, as it shows now (after `check`: the dropped workflow as it opens)."""
        self.page.evaluate("new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))")
        path.write_bytes(base64.b64decode(self.page.call("Page.captureScreenshot", format="png")["data"]))
        return path


def find_chromium() -> str:
    """`$CHROMIUM`, else `chromium` on PATH; raises FileNotFoundError naming the install command."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not path:
        raise FileNotFoundError("Chromium not found: `apt-get install chromium`, or set CHROMIUM to its path")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflows", nargs="+", type=Path, help="UI-format workflow .json files")
    parser.add_argument("--url", help="a running ComfyUI server (default: start one from $COMFYUI_PATH)")
    parser.add_argument("--screenshots", type=Path, help="folder for a PNG of each workflow as it opens")
    args = parser.parse_args(argv)

    server = None
    url = args.url
    if url is None:
        from .comfy_server import start_comfy_server

        if not os.environ.get("COMFYUI_PATH"):
            parser.error("give --url, or set COMFYUI_PATH to a ComfyUI checkout")
        server = start_comfy_server(
            Path(os.environ["COMFYUI_PATH"]),
            Path(tempfile.mkdtemp(prefix="ui-check-comfyui-")),
            python=os.environ.get("COMFYUI_PYTHON"),
        )
        url = server.url
    try:
        with FrontendSession(url) as frontend:
            reports = []
            for path in args.workflows:
                reports.append(frontend.check(json.loads(path.read_text()), path.name))
                if args.screenshots is not None:
                    args.screenshots.mkdir(parents=True, exist_ok=True)
                    frontend.screenshot(args.screenshots / f"{path.stem}.png")
    finally:
        if server is not None:
            server.stop()
    for report in reports:
        summary = {k: v for k, v in asdict(report).items() if k != "nodes"}
        print(json.dumps({"ok": report.ok, **summary}, indent=2))
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
