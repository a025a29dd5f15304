"""Every file in example_workflows/ loads as the frontend loads it, fits our nodes, and runs headless.

For each UI-format workflow:
1. its structure is consistent: every link is listed, with the same id and type, by the output it
   leaves and the input it enters; ids are unique; ``extra.info`` says what the workflow shows;
2. converted to an API prompt the way the frontend does (harness.workflow.to_api: ``widgets_values``
   to inputs in INPUT_TYPES order), every node type is registered and every widget value fits our
   INPUT_TYPES: a listed choice, a number of the right type within min/max. Model files are the
   canonical download names; only checkpoints are not in the fixture tree under those names;
3. ComfyUI's own validator and executor run it on the tiny fixture models (checkpoints swapped for
   the tiny ones of the same architecture, 64 px, 4 steps) and it writes what it should. The FaceID
   workflow runs with its InsightFace loader replaced by supplied face embeddings (insightface is not
   installed here; see ``without_insightface``).

dev/make_example_workflows.py makes the files; a test checks they are what it makes now.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import folder_paths
import nodes

from harness import executor, workflow
from support import load_dev_script

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "example_workflows"
FILES = sorted(p.name for p in FOLDER.glob("*.json"))


GENERATOR = load_dev_script("make_example_workflows")


@dataclass(frozen=True)
class Expect:
    """What a run must leave behind."""

    images: dict[str, int] = field(default_factory=dict)  # Save Image filename_prefix -> images saved
    previews: int = 0  # Preview Image nodes that show at least one image
    embeds: str | None = None  # filename prefix of the .ipadpt file written to output/
    size: tuple[int, int] = (64, 64)  # of every saved image
    latents: int = 0  # SaveLatent nodes that wrote a latent


EXPECTED = {
    "ipadapter_simple.json": Expect({"ipadapter_simple": 1}),
    "ipadapter_advanced.json": Expect({"ipadapter_advanced": 1}),
    "ipadapter_weight_types.json": Expect({f"ipadapter_weight_types_{t}": 1
                                           for t in ("linear", "ease_in_out", "style_transfer", "composition")}),
    "ipadapter_combine_embeds.json": Expect({"ipadapter_combine_norm_average": 1, "ipadapter_combine_weighted_embeds": 1}),
    "ipadapter_negative_noise.json": Expect({"ipadapter_negative_noise": 1, "ipadapter_negative_image": 1}),
    "ipadapter_style_composition.json": Expect({"ipadapter_style_composition": 1}),
    "ipadapter_precise_style_composition.json": Expect({"ipadapter_precise_style_composition": 1}),
    "ipadapter_layer_weights.json": Expect({"ipadapter_layer_weights": 1}),
    # One grid of the 18 renders: 6 columns x 3 rows of 64 px cells under 17 px labels, 4 px apart.
    "ipadapter_layer_sweep.json": Expect({"ipadapter_layer_sweep": 1}, size=(6 * 64 + 5 * 4, 3 * (64 + 17) + 2 * 4)),
    "ipadapter_tiled.json": Expect({"ipadapter_tiled": 1}, previews=1),
    # 2 images x 3 frames each ("full batch"): total_frames = 6 sets the latent batch.
    "ipadapter_weights_batch.json": Expect({"ipadapter_weights_batch": 6}),
    "ipadapter_regional_conditioning.json": Expect({"ipadapter_regional_conditioning": 1}),
    "ipadapter_embeds_save.json": Expect(embeds="IP_embeds"),
    "ipadapter_embeds_load.json": Expect({"ipadapter_embeds_load": 1}),
    "ipadapter_faceid.json": Expect({"ipadapter_faceid": 1}, previews=1),
    "ipadapter_train.json": Expect({"ipadapter_train": 1}, previews=1),  # the preview: the loss curve
    # Runs with SaveLatent in place of VAE Decode + Save Image (no tiny Flux VAE): see harness.tiny_dit.
    "ipadapter_flux_xlabs.json": Expect(latents=1),
    "ipadapter_flux_instantx.json": Expect(latents=1),  # SaveLatent too: see harness.tiny_dit
    "ipadapter_sd35_instantx.json": Expect(latents=1),  # SaveLatent too: see harness.tiny_sd3
    "ipadapter_fooocus.json": Expect({"ipadapter_fooocus": 1}),
    "ipadapter_weight_curve.json": Expect({"ipadapter_weight_curve_fade_out": 1, "ipadapter_weight_curve_fade_in": 1}),
}
# Combo inputs whose canonical value is not in the fixture tree: the run swaps it for a tiny stand-in.
SWAPPED = {("CheckpointLoaderSimple", "ckpt_name"): set(workflow.TINY_CHECKPOINTS)}


def input_dir() -> Path:
    return Path(folder_paths.get_input_directory())


def write_picture(name: str, width: int, height: int, seed: int) -> None:
    """A smooth picture with a few shapes (not plain noise), so crops and tiles differ from each other."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin((x * a + y * b) * 6 + p) for a, b, p in rng.uniform(-1, 1, (3, 3))]
    pixels = (np.stack(channels, -1) * 0.5 + 0.5) * 255
    Image.fromarray(pixels.astype(np.uint8)).save(input_dir() / name)


@pytest.fixture(scope="module", autouse=True)
def reference_images(models_dir, torch_single_thread):
    """The images the workflows load: a wide reference (Tiled cuts it into tiles), a second one, a face."""
    write_picture(GENERATOR.REFERENCE, 128, 96, seed=1)
    write_picture(GENERATOR.REFERENCE_2, 96, 96, seed=2)
    write_picture(GENERATOR.FACE, 96, 112, seed=3)


@pytest.fixture(scope="module", autouse=True)
def tiny_encoders_are_known():
    """The Unified Loaders find encoders by their tensors' widths: let them know the fixture's tiny ones."""
    from harness.widths import TINY_WIDTHS
    from ipadapter_next.ipadapter import encoders

    with encoders.widths_registered(TINY_WIDTHS):
        yield


def prompt_of(name: str) -> dict:
    return workflow.to_api(workflow.load(FOLDER / name), nodes.NODE_CLASS_MAPPINGS)


# --- 1. structure ---------------------------------------------------------------------------------
def structure_problems(wf: dict) -> list[str]:
    problems = []
    by_id = {node["id"]: node for node in wf["nodes"]}
    if len(by_id) != len(wf["nodes"]):
        problems.append("node ids repeat")
    link_ids = [link[0] for link in wf["links"]]
    if len(set(link_ids)) != len(link_ids):
        problems.append("link ids repeat")
    if wf["last_node_id"] < max(by_id) or wf["last_link_id"] < max(link_ids, default=0):
        problems.append("last_node_id / last_link_id are below the ids used")
    for link_id, origin, origin_slot, target, target_slot, kind in wf["links"]:
        if origin not in by_id or target not in by_id:
            problems.append(f"link {link_id} joins a node that does not exist")
            continue
        outputs, inputs = by_id[origin]["outputs"], by_id[target].get("inputs", [])
        if not (0 <= origin_slot < len(outputs) and 0 <= target_slot < len(inputs)):
            problems.append(f"link {link_id} joins a slot that does not exist")
            continue
        output, entry = outputs[origin_slot], inputs[target_slot]
        if link_id not in (output.get("links") or []):
            problems.append(f"link {link_id} is not listed by node {origin}'s output {output['name']}")
        if entry.get("link") != link_id:
            problems.append(f"link {link_id} is not the link of node {target}'s input {entry['name']}")
        if output["type"] != kind:
            problems.append(f"link {link_id} has type {kind}, its output {output['type']}")
        if entry["type"] != kind and "*" not in (entry["type"], kind):
            problems.append(f"link {link_id} ({kind}) enters node {target}'s {entry['name']} ({entry['type']})")
    listed = {link_id for node in wf["nodes"] for out in node["outputs"] for link_id in (out.get("links") or [])}
    entered = {entry["link"] for node in wf["nodes"] for entry in node.get("inputs", []) if entry.get("link") is not None}
    if listed - set(link_ids) or entered - set(link_ids):
        problems.append(f"nodes name links that do not exist: {sorted((listed | entered) - set(link_ids))}")
    return problems


@pytest.mark.parametrize("name", FILES)
def test_workflow_structure_is_consistent(name):
    wf = workflow.load(FOLDER / name)
    assert structure_problems(wf) == []
    assert isinstance(wf["extra"]["info"], str) and len(wf["extra"]["info"]) > 40, "extra.info explains the workflow"


def test_every_workflow_has_expectations_and_every_topic_a_workflow():
    assert set(FILES) == set(EXPECTED)


def test_the_files_are_what_the_generator_makes():
    made = GENERATOR.build_all()
    assert sorted(made) == FILES
    stale = [name for name, text in made.items() if (FOLDER / name).read_text() != text]
    assert not stale, f"run dev/make_example_workflows.py; out of date: {stale}"


def test_the_running_comfyui_accepts_every_pinned_core_node():
    """The example files are written from a pinned table of ComfyUI's own nodes (the same files on every
    runtime); the ComfyUI running now must still offer each pinned input, choice and output."""
    from harness import core_nodes

    pinned = core_nodes.pinned()
    used = {node["type"] for name in FILES for node in workflow.load(FOLDER / name)["nodes"]}
    core = used - set(GENERATOR.interface_nodes()) - set(GENERATOR.pack_nodes())  # the pack's new nodes are not pinned
    assert core == set(pinned), "re-pin: dev/make_example_workflows.py --pin-core-nodes"
    problems = [p for kind, entry in pinned.items()
                for p in core_nodes.incompatibilities(kind, entry, core_nodes.interface_entry(nodes.NODE_CLASS_MAPPINGS[kind]))]
    assert problems == []


def test_the_compatibility_check_catches_what_would_break_a_saved_workflow():
    from harness import core_nodes

    entry = {"required": [["seed", {"type": "INT"}], ["sampler", {"choices": ["euler", "ddim"]}],
                          ["model", {"type": "MODEL"}]], "optional": [], "return_types": ["LATENT"]}
    newer = {"required": [["seed", {"type": "INT"}], ["sampler", {"choices": ["euler", "ddim", "new"]}],
                          ["model", {"type": "MODEL"}], ["extra", {"type": "FLOAT"}]],
             "optional": [], "return_types": ["LATENT", "IMAGE"]}
    assert core_nodes.incompatibilities("K", entry, newer) == []
    dropped = dict(newer, required=[["seed", {"type": "INT"}], ["sampler", {"choices": ["euler"]}]])
    assert core_nodes.incompatibilities("K", entry, dropped) == ["K.sampler no longer offers ['ddim']", "K.model is gone"]
    swapped = dict(newer, required=[["sampler", {"choices": ["euler", "ddim"]}], ["seed", {"type": "INT"}],
                                    ["model", {"type": "MODEL"}]], return_types=["IMAGE"])
    assert core_nodes.incompatibilities("K", entry, swapped) == [
        "K widgets were ['seed', 'sampler'], are now ordered ['sampler', 'seed']", "K output 0 was LATENT, is now ['IMAGE']"]


def test_v3_combo_inputs_read_as_choices():
    from harness import core_nodes

    assert core_nodes.input_spec("operation", ("COMBO", {"options": ["multiply", "add"], "default": "add"})) == \
        {"default": "add", "choices": ["multiply", "add"]}
    assert core_nodes.input_spec("operation", (["multiply", "add"],)) == {"choices": ["multiply", "add"]}
    assert core_nodes.input_spec("ckpt_name", (["a.safetensors"],)) == {"choices": []}


def test_the_builder_refuses_what_the_frontend_would_not_load():
    from harness.workflow_builder import Workflow

    wf = Workflow("a workflow used to test the builder's checks, never saved")
    ckpt = wf.node("CheckpointLoaderSimple", ckpt_name=GENERATOR.SD15)  # a file list: any name goes
    with pytest.raises(ValueError, match="not one of"):
        wf.node("IPAdapterNoise", type="smudge")
    with pytest.raises(ValueError, match="outside"):
        wf.node("IPAdapterNoise", strength=2.0)
    with pytest.raises(KeyError, match="no widget"):
        wf.node("IPAdapterNoise", sharpness=1.0)
    with pytest.raises(TypeError, match="cannot feed"):
        wf.node("VAEDecode", samples=ckpt.out("VAE"))
    with pytest.raises(ValueError, match="no default"):
        wf.node("CLIPVisionLoader")  # a file name has to be given
    assert [node.kind for node in wf.nodes] == ["CheckpointLoaderSimple"], "a refused node is not added"


def test_structure_check_catches_a_dangling_link():
    wf = workflow.load(FOLDER / "ipadapter_simple.json")
    wf["links"][0][4] += 1  # the first link now claims another input slot
    assert structure_problems(wf)


# --- 2. conversion and inputs ---------------------------------------------------------------------
def misfit(spec, value) -> str | None:
    """Why ``value`` does not fit the input ``spec`` (None when it does)."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, (list, tuple)):
        return None if value in kind else f"{value!r} is not one of its {len(kind)} choices {list(kind)[:8]}"
    expected = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}.get(kind)
    if expected is None:
        return None
    if isinstance(value, bool) and kind != "BOOLEAN" or not isinstance(value, expected):
        return f"{value!r} is not a {kind}"
    if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
        return f"{value!r} is outside [{opts.get('min')}, {opts.get('max')}]"
    return None


def widget_problems(prompt: dict) -> list[str]:
    problems = []
    for node_id, node in prompt.items():
        kind = node["class_type"]
        types = nodes.NODE_CLASS_MAPPINGS[kind].INPUT_TYPES()
        for name, spec, _ in workflow.widget_inputs(nodes.NODE_CLASS_MAPPINGS[kind]):
            value = node["inputs"].get(name)
            if value is None:
                if name in types.get("required", {}):
                    problems.append(f"node {node_id} ({kind}): required widget {name} has no value")
                continue
            if isinstance(value, list):  # a widget converted to an input and linked
                continue
            if (kind, name) in SWAPPED:
                why = None if value in SWAPPED[kind, name] else f"{value!r} is not a canonical name"
            else:
                why = misfit(spec, value)
            if why:
                problems.append(f"node {node_id} ({kind}).{name}: {why}")
    return problems


def test_widget_check_catches_a_value_out_of_range():
    prompt = prompt_of("ipadapter_simple.json")
    prompt["6"]["inputs"]["weight"] = 9.0
    prompt["5"]["inputs"]["crop_position"] = "middle"
    assert len(widget_problems(prompt)) == 2


@pytest.fixture(scope="module")
def saved_embeds():
    """ipadapter_embeds_load.json reads what ipadapter_embeds_save.json writes, moved to input/ by the user."""
    executor.run_prompt(workflow.use_tiny_models(prompt_of("ipadapter_embeds_save.json"))).raise_for_error()
    written = sorted(Path(folder_paths.get_output_directory()).glob("IP_embeds*.ipadpt"), key=lambda p: p.stat().st_mtime)
    assert written, "IPAdapter Save Embeds wrote no .ipadpt file to output/"
    shutil.copy(written[-1], input_dir() / GENERATOR.SAVED_EMBEDS)


def prepare(name: str, request) -> None:
    """Files a workflow expects the user to have put in place, beyond the reference images."""
    if name == "ipadapter_embeds_load.json":
        request.getfixturevalue("saved_embeds")
    if name == "ipadapter_flux_xlabs.json":
        from harness import tiny_dit

        tiny_dit.install_flux_fixtures(request.getfixturevalue("models_dir"))
    if name == "ipadapter_flux_instantx.json":
        from harness import tiny_dit

        tiny_dit.install_instantx_flux_example(request.getfixturevalue("models_dir"), input_dir())
    if name == "ipadapter_sd35_instantx.json":
        from harness import tiny_sd3

        tiny_sd3.install_sd3_example_fixtures(request.getfixturevalue("models_dir"), input_dir())
    if name == "ipadapter_fooocus.json":  # Fooocus's negative, a synthetic one of the real layout
        from harness import fooocus_negative

        fooocus_negative.write_negative(Path(folder_paths.get_folder_paths("ipadapter")[0]) / GENERATOR.FOOOCUS_NEGATIVE)


@pytest.mark.parametrize("name", FILES)
def test_workflow_converts_and_every_value_fits_our_inputs(name, request):
    prepare(name, request)
    prompt = prompt_of(name)  # raises KeyError naming an unregistered node type
    assert widget_problems(prompt) == []


# --- 3. headless run ------------------------------------------------------------------------------
FACE_EMBEDS_FILE = "ipadapter_face.face.safetensors"


def without_insightface(prompt: dict) -> dict:
    """insightface and its buffalo_l models are not installed here, so the FaceID run takes the face from
    supplied face embeddings (the FaceID nodes' ``face_embeds`` input, from IPAdapter Load Face Embeds)
    instead of IPAdapter InsightFace Loader; every other node runs as the workflow has it."""
    from harness.dims import TINY_FACE_EMBED
    from ipadapter_next.ipadapter import faceid

    face = torch.randn(1, TINY_FACE_EMBED, generator=torch.Generator().manual_seed(0))
    faceid.save_face_embeds(faceid.FaceEmbeds.from_tensor(face), input_dir() / FACE_EMBEDS_FILE)
    loaders = [i for i, node in prompt.items() if node["class_type"] == "IPAdapterInsightFaceLoader"]
    for node in prompt.values():
        if node["inputs"].get("insightface", [None])[0] in loaders:
            del node["inputs"]["insightface"]
            node["inputs"]["face_embeds"] = ["face_embeds", 0]
    for i in loaders:
        del prompt[i]
    prompt["face_embeds"] = {"class_type": "IPAdapterFaceEmbedsLoad", "inputs": {"face_embeds": FACE_EMBEDS_FILE}}
    return prompt


@pytest.mark.parametrize("name", FILES)
def test_workflow_runs_headless_on_the_fixture_models(name, request):
    prepare(name, request)
    prompt = workflow.use_tiny_models(prompt_of(name))
    if name == "ipadapter_faceid.json":
        prompt = without_insightface(prompt)
    if name in ("ipadapter_flux_xlabs.json", "ipadapter_flux_instantx.json"):
        from harness import tiny_dit

        prompt = tiny_dit.tiny_flux_prompt(prompt)
    if name == "ipadapter_sd35_instantx.json":
        from harness import tiny_sd3

        prompt = tiny_sd3.tiny_sd3_prompt(prompt)
    result = executor.run_prompt(prompt).raise_for_error()
    expect = EXPECTED[name]
    by_kind = {}
    for node_id, ui in result.outputs.items():
        by_kind.setdefault(prompt[node_id]["class_type"], []).append((node_id, ui.get("images") or []))
    saved = {prompt[node_id]["inputs"]["filename_prefix"]: len(images) for node_id, images in by_kind.get("SaveImage", [])}
    assert saved == expect.images
    assert len([images for _, images in by_kind.get("PreviewImage", []) if images]) == expect.previews
    output_dir = Path(folder_paths.get_output_directory())
    pictures = {}
    for node_id, images in by_kind.get("SaveImage", []):
        for item in images:
            with Image.open(output_dir / item["subfolder"] / item["filename"]) as image:
                assert image.size == expect.size
                pictures.setdefault(node_id, np.asarray(image.convert("RGB"), dtype=np.float32))
    for node_id, pixels in pictures.items():
        assert pixels.std() > 1, f"node {node_id} saved a constant image"
    # Branches of one workflow differ only in their IP-Adapter settings, so their images differ too.
    first = list(pictures.values())
    for i, a in enumerate(first):
        for b in first[i + 1:]:
            assert np.abs(a - b).mean() > 2, "two branches with different settings gave the same image"
    assert len([i for i, _ in by_kind.get("SaveLatent", []) if result.outputs[i].get("latents")]) == expect.latents
    if expect.embeds:
        assert list(output_dir.glob(f"{expect.embeds}*.ipadpt")), f"no {expect.embeds}*.ipadpt in output/"
