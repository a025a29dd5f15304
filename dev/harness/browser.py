"""Drive ComfyUI's real frontend in headless Chromium (Debian's ``chromium``, through Playwright's Python
package; no browser download), against a ``harness.server.ComfyServer`` on loopback.

    with ComfyServer.start(base) as srv, Browser() as browser:
        page = browser.open(srv)                      # frontend loaded, app ready, console recorded
        page.load_workflow(path)                      # the frontend's own "Open workflow" file input
        page.js("() => app.graph.serialize()")        # ``app`` is the frontend's ComfyApp

Before the page loads, settings are written through the server's settings API: readable text at any zoom
(``LiteGraph.Canvas.MinFontSizeForLOD`` 0, for screenshots) and no first-run templates dialog.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
SETTINGS = {
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
    "Comfy.TutorialCompleted": True,
    "Comfy.Validation.Workflows": True,
}
# The frontend's app object in both tested versions (1.32.9 and 1.49.6 keep window.app for extensions).
APP = "(window.comfyAPI?.app?.app ?? window.app)"


def chromium_path() -> str:
    """The system Chromium (``CHROMIUM`` overrides); RuntimeError saying how to install it when absent."""
    for candidate in (os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("no Chromium found: `apt-get install -y chromium` (make setup does it as root), "
                       "or set CHROMIUM to a Chromium executable")


def write_settings(server_url: str, settings: dict = SETTINGS) -> None:
    for key, value in settings.items():
        request = urllib.request.Request(f"{server_url}/api/settings/{key}", data=json.dumps(value).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()


class Page:
    """One frontend tab; ``console`` holds (type, text) of every console message and page error."""

    def __init__(self, page, server):
        self.page = page
        self.server = server
        self.console: list[tuple[str, str]] = []
        self.responses: list[tuple[int, str]] = []  # (status, url) of every response
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        page.on("response", lambda r: self.responses.append((r.status, r.url)))

    def js(self, script: str, arg=None):
        """Evaluate ``script`` (a JS function taking ``app`` and ``arg``) in the page."""
        return self.page.evaluate(f"([arg]) => ({script})({APP}, arg)", [arg])

    def errors(self, since: int = 0) -> list[str]:
        """Console errors and page errors, from message ``since`` on."""
        return [text for kind, text in self.console[since:] if kind in ("error", "pageerror")]

    def wait_ready(self, timeout_ms: int = 60000) -> None:
        self.page.wait_for_function(f"() => {APP}?.graph && {APP}.extensionManager && "
                                    "window.LiteGraph?.registered_node_types?.IPAdapterMS", timeout=timeout_ms)

    def load_workflow(self, path: Path) -> None:
        """Open ``path`` as a user does with Workflow > Open: through the frontend's file input."""
        self.js("(app) => { app.graph.extra ??= {}; app.graph.extra.harness_loading = true; }")
        self.page.set_input_files("#comfy-file-input", str(path))
        self.page.wait_for_function(f"() => !{APP}.graph.extra?.harness_loading && {APP}.graph.nodes.length > 0",
                                    timeout=60000)

    def use_tiny_models(self, size: int = 64, steps: int = 4) -> None:
        """What ``harness.workflow.use_tiny_models`` does to a prompt, done to the graph's widgets here."""
        from harness.workflow import TINY_CHECKPOINTS

        self.js("""(app, [tiny, size, steps]) => {
          for (const node of app.graph.nodes) {
            const w = (name) => node.widgets?.find((x) => x.name === name);
            if (node.type === 'CheckpointLoaderSimple') w('ckpt_name').value = tiny[w('ckpt_name').value];
            if (node.type === 'EmptyLatentImage') { w('width').value = size; w('height').value = size; }
            if (node.type === 'KSampler') w('steps').value = Math.min(w('steps').value, steps);
          }
        }""", [TINY_CHECKPOINTS, size, steps])

    def queue_and_wait(self, timeout: float = 120.0) -> dict:
        """Queue the graph as the Run button does (the Comfy.QueuePrompt command); its finished history entry."""
        before = set(self.server.get_json("/history"))
        self.js("(app) => app.extensionManager.command.execute('Comfy.QueuePrompt')")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key, entry in self.server.get_json("/history").items():
                status = entry.get("status", {})
                if key not in before and (status.get("completed") or status.get("status_str") == "error"):
                    return entry
            time.sleep(0.3)
        raise TimeoutError(f"no finished prompt within {timeout:.0f} s:\n{self.server.log_tail()}")

    def visible_dialog_text(self) -> str:
        return self.page.evaluate("() => [...document.querySelectorAll('[role=dialog], .p-dialog')]"
                                  ".filter(d => d.offsetParent !== null).map(d => d.innerText).join('\\n')")


class Browser:
    """Headless Chromium for the tests (a context manager)."""

    def __init__(self, viewport=(1400, 900)):
        self.viewport = viewport

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        return self

    def open(self, server, ready_timeout_ms: int = 90000, settings: dict | None = None) -> Page:
        """A new tab on ``server`` with SETTINGS and ``settings`` written first (they stay on the server)."""
        write_settings(server.url, {**SETTINGS, **(settings or {})})
        context = self._browser.new_context(viewport={"width": self.viewport[0], "height": self.viewport[1]})
        page = Page(context.new_page(), server)
        page.page.goto(server.url, wait_until="domcontentloaded", timeout=ready_timeout_ms)
        page.wait_ready(ready_timeout_ms)
        return page

    def __exit__(self, *exc) -> None:
        self._browser.close()
        self._playwright.stop()
