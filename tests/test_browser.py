"""The pack in ComfyUI's real frontend, in headless Chromium: ComfyUI's server (main.py, loopback) with this pack
and the runtime's own frontend package (1.32.9 on ComfyUI 0.3.75, 1.49.6 on 0.33.0), driven through Playwright
(harness.browser; Debian's chromium, installed by `make setup`).

What a new user does: open every example workflow (Workflow > Open: the frontend's file input), find them in the
templates dialog, run one, and tune layer weights in the editor. One server and one browser for the module
(about 10 s to start); the module takes 25-60 s on two shared CPU cores (README, Tests).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nodes

from harness import browser, server, workflow

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "example_workflows"
FILES = sorted(p.name for p in FOLDER.glob("*.json"))
EDITOR_BUTTON = "edit layer weights"
# The pack's own problems: a console error naming the pack, its extension, or a widget value. (The frontend's
# look-ups of node names in the comfy.org registry also name our nodes: offline, they are refused, not ours.)
OURS = ("ipadapter", "layer_weights", "widget")
OFFLINE = "api.comfy.org"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, models_dir):
    base = server.prepare_server_base(tmp_path_factory.mktemp("browser-base"))
    srv = server.ComfyServer.start(base, timeout=120)
    try:
        with browser.Browser() as chromium:
            yield srv, chromium
    finally:
        srv.shutdown()


@pytest.fixture(scope="module")
def page(comfy):
    srv, chromium = comfy
    return chromium.open(srv)


def our_errors(page, since: int = 0) -> list[str]:
    return [e for e in page.errors(since) if any(word in e.lower() for word in OURS) and OFFLINE not in e]


def save_node(wf: dict) -> str:
    return next(str(n["id"]) for n in wf["nodes"] if n["type"] == "SaveImage")


def saved_pixels(srv, entry: dict, node_id: str) -> np.ndarray:
    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = entry["outputs"][node_id]["images"]
    return np.asarray(Image.open(srv.base / "output" / image["subfolder"] / image["filename"]).convert("RGB"))


def headless_pixels(srv, wf: dict, node_id: str, change=None) -> np.ndarray:
    """The same workflow sent as an API prompt (no browser): what a script or `comfy run` gets."""
    prompt = workflow.use_tiny_models(workflow.to_api(wf, nodes.NODE_CLASS_MAPPINGS))
    if change:
        change(prompt)
    return saved_pixels(srv, srv.run_prompt(prompt, timeout=120), node_id)


@pytest.mark.parametrize("name", FILES)
def test_every_example_loads_through_the_frontend_and_saves_back_unchanged(page, name):
    saved = json.loads((FOLDER / name).read_text())
    before = len(page.console)
    page.load_workflow(FOLDER / name)
    assert "missing" not in page.visible_dialog_text().lower()
    loaded = page.js("(app) => app.graph.serialize()")
    types = page.js("(app) => Object.keys(LiteGraph.registered_node_types)")
    assert {n["type"] for n in saved["nodes"]} <= set(types)  # every node known: nothing shows as missing
    by_id = {n["id"]: n for n in loaded["nodes"]}
    for node in saved["nodes"]:  # load-then-save gives the file's widget values, node by node
        again = by_id[node["id"]]
        assert again["type"] == node["type"]
        # (1.49.6 leaves out an empty list, 1.32.9 writes it)
        assert again.get("widgets_values", []) == node["widgets_values"], f"node {node['id']} ({node['type']})"
    widgets = page.js("(app) => Object.fromEntries(app.graph.nodes.filter((n) => n.type.startsWith('IPA'))"
                      ".map((n) => [n.id, (n.widgets ?? []).map((w) => w.name)]))")
    for node in saved["nodes"]:
        if node["type"].startswith("IPA"):
            assert len(widgets[str(node["id"])]) >= len(node["widgets_values"])
    assert our_errors(page, before) == []


def test_the_templates_dialog_lists_every_example_under_the_pack(page):
    page.js("(app) => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.page.get_by_text("ipadapter_next", exact=True).first.click()
    page.page.get_by_text("ipadapter_simple", exact=True).first.wait_for(timeout=15000)
    shown = page.page.inner_text("body")
    for name in FILES:
        assert Path(name).stem in shown
    # The cards' thumbnails: the shipped <name>.jpg files, fetched and drawn (400 px wide, as made).
    page.page.wait_for_function("() => [...document.querySelectorAll('img')].some((i) => i.naturalWidth === 400)",
                                timeout=15000)
    fetched = {(status, Path(url).name) for status, url in page.responses
               if "/workflow_templates/ipadapter_next/" in url}
    assert fetched and {status for status, _ in fetched} == {200}
    assert {name for _, name in fetched} <= {Path(f).with_suffix(".jpg").name for f in FILES}
    page.page.keyboard.press("Escape")


def test_a_workflow_run_from_the_page_gives_the_headless_image(page, comfy):
    srv, _ = comfy
    wf = json.loads((FOLDER / "ipadapter_simple.json").read_text())
    page.load_workflow(FOLDER / "ipadapter_simple.json")
    page.use_tiny_models()
    entry = page.queue_and_wait()
    pixels = saved_pixels(srv, entry, save_node(wf))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1
    assert np.array_equal(pixels, headless_pixels(srv, wf, save_node(wf)))


def test_layer_weights_editor_writes_the_text_that_runs_like_typed_text(page, comfy):
    srv, _ = comfy
    wf = json.loads((FOLDER / "ipadapter_layer_weights.json").read_text())
    page.load_workflow(FOLDER / "ipadapter_layer_weights.json")
    page.use_tiny_models()
    ms = next(n["id"] for n in wf["nodes"] if n["type"] == "IPAdapterMS")
    page.js("(app, id) => app.graph.getNodeById(id).widgets.find((w) => w.name === 'edit layer weights')"
            ".callback()", ms)
    dialog = page.page.locator(".ipa-lw-dialog")
    dialog.wait_for(timeout=10000)
    assert dialog.locator(".ipa-lw-block").count() == 16  # SD1.5 (read from the checkpoint name): 16 layers
    assert dialog.locator("button[data-arch=sd15].on").count() == 1
    dialog.locator("input[type=range][data-key='6']").fill("0.75")  # the middle block, off in the file
    text = page.js("(app, id) => app.graph.getNodeById(id).widgets.find((w) => w.name === 'layer_weights')"
                   ".value", ms)
    assert text == "4:0.25, 5:1, 6:0.75, 9:0.5, 10:0.5, 11:0.5"
    dialog.locator(".ipa-lw-close").click()
    entry = page.queue_and_wait()
    from_editor = saved_pixels(srv, entry, save_node(wf))

    def typed(prompt):
        prompt[str(ms)]["inputs"]["layer_weights"] = "4:0.25, 5:1.0, 6:0.75, 9:0.5, 10:0.5, 11:0.5"

    assert np.array_equal(from_editor, headless_pixels(srv, wf, save_node(wf), typed))
    assert not np.array_equal(from_editor, headless_pixels(srv, wf, save_node(wf)))  # the slider did change the picture
    assert our_errors(page) == []


TEXTS = {
    "sd15": ["3:1, 6:0.5", "input_7:1\nmiddle:0.3, output_3:2", "0:0", "15:-0.5,"],
    "sdxl": ["6.2:0.5, output_1.3:0.25", "3:1, 3.1:0", "input_8:1, 6:0.8, 6.0:0", "10:1"],
}


def per_block(arch: str, text: str) -> dict[str, list[float]]:
    """The Python parser's reading of ``text``: {transformer index: [weight of each block]}."""
    from ipadapter_next.ipadapter.layers import layer_map
    from ipadapter_next.ipadapter.weights import parse_layer_weights, resolve_layer_weights

    weights = resolve_layer_weights(arch, layer_weights=parse_layer_weights(text, arch))
    out: dict[str, list[float]] = {}
    for site in layer_map(arch):
        layer = weights.get(site.key)
        out.setdefault(str(site.transformer_index), []).append(float(layer.weight) if layer else 0.0)
    return out


def test_the_editor_reads_and_writes_text_as_the_node_parses_it(page):
    """The editor's parser and writer (web/layer_weights.js, loaded as the frontend loaded it) against the
    node's own parser, on both UNets, SDXL single blocks included."""
    result = page.js("""async (app, texts) => {
      const m = await import('/extensions/ipadapter_next/layer_weights.js');
      const table = await (await fetch('/extensions/ipadapter_next/layer_table.json')).json();
      const out = {};
      for (const [arch, list] of Object.entries(texts)) {
        out[arch] = list.map((t) => { const v = m.parseLayerWeights(t, table[arch]);
                                      return [v, m.formatLayerWeights(v, table[arch])]; });
      }
      out.errors = ['3:x', '40:1', 'output_0:1', '3', '3:1:2', '3:'].map((t) => {
        try { m.parseLayerWeights(t, table.sd15); return null; } catch (e) { return e.message; } });
      return out;
    }""", TEXTS)
    for arch, texts in TEXTS.items():
        for text, (values, written) in zip(texts, result[arch]):
            assert values == per_block(arch, text), (arch, text)
            assert per_block(arch, written) == per_block(arch, text), (arch, text, written)
    assert all(result["errors"]), result["errors"]


def test_the_editor_in_the_vue_node_mode_opens_from_its_button_and_updates_the_text_field(comfy):
    """Nodes 2.0 (the frontend's Vue node rendering, setting Comfy.VueNodes.Enabled): the widgets are DOM
    there, so the button is clicked as a user clicks it and the text field shows what the editor wrote."""
    srv, chromium = comfy
    page = chromium.open(srv, settings={"Comfy.VueNodes.Enabled": True})
    try:
        page.load_workflow(FOLDER / "ipadapter_layer_weights.json")
        page.page.get_by_role("button", name=EDITOR_BUTTON).first.click()
        dialog = page.page.locator(".ipa-lw-dialog")
        dialog.locator("input[type=range][data-key='6']").fill("0.75")
        dialog.locator(".ipa-lw-close").click()
        expected = "4:0.25, 5:1, 6:0.75, 9:0.5, 10:0.5, 11:0.5"
        fields = page.page.evaluate("() => [...document.querySelectorAll('textarea')].map((a) => a.value)")
        assert fields.count(expected) == 1  # the node's own text field, drawn by the frontend
        assert our_errors(page) == []
    finally:
        browser.write_settings(srv.url, {"Comfy.VueNodes.Enabled": False})
        page.page.context.close()
