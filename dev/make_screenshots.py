"""Write README's pictures with the browser tests' tooling (harness.server + harness.browser): the layer
weights editor open on the example workflow's Mad Scientist (SD1.5, then SDXL with one layer opened to its
transformer blocks) and the grid IPAdapter Sweep Grid makes from the layer sweep example run from the page.

    make screenshots        # = .venv/bin/python dev/make_screenshots.py

Runs on the fixture models (tiny random UNets), so the sweep's pictures are noise: what the images show is
the layout, the labels and the editor, not what a real model draws.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO_ROOT, browser, runtime, server

OUT = REPO_ROOT / "docs" / "images"
WORKFLOWS = REPO_ROOT / "example_workflows"


def open_editor(page, node_type: str) -> None:
    page.js("(app, type) => app.graph.nodes.find((n) => n.type === type).widgets"
            ".find((w) => w.name === 'edit layer weights').callback()", node_type)
    page.page.locator(".ipa-lw-dialog").wait_for(timeout=10000)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    runtime.boot(Path(tempfile.mkdtemp(prefix="ipadapter-shots-runtime-")))  # for the fixture models' loaders
    base = server.prepare_server_base(Path(tempfile.mkdtemp(prefix="ipadapter-shots-")))
    with server.ComfyServer.start(base, timeout=120) as srv, browser.Browser(viewport=(1500, 1000)) as chromium:
        page = chromium.open(srv)
        page.load_workflow(WORKFLOWS / "ipadapter_layer_weights.json")
        open_editor(page, "IPAdapterMS")
        page.page.locator(".ipa-lw-dialog").screenshot(path=str(OUT / "layer_weights_editor.png"))
        page.page.locator("button[data-arch=sdxl]").click()
        page.page.locator("button[data-preset='style transfer']").click()
        page.page.locator("button.ipa-lw-expand[data-layer='6']").click()
        time.sleep(0.3)
        page.page.locator(".ipa-lw-dialog").screenshot(path=str(OUT / "layer_weights_editor_sdxl.png"))
        page.page.locator(".ipa-lw-close").click()

        page.load_workflow(WORKFLOWS / "ipadapter_layer_sweep.json")
        page.use_tiny_models(size=96)
        entry = page.queue_and_wait(timeout=300)
        (grid,) = next(out["images"] for out in entry["outputs"].values())
        shutil.copyfile(srv.base / "output" / grid["subfolder"] / grid["filename"], OUT / "layer_sweep_grid.png")
        page.page.screenshot(path=str(OUT / "layer_sweep_workflow.png"))
    for path in sorted(OUT.glob("*.png")):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
