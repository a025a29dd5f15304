"""IPAdapter Layer Weights, IPAdapter Layer Sweep and IPAdapter Sweep Grid, run as workflows through ComfyUI's
own validator and executor on the fixture models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import comfy.model_management
import comfy.utils
import folder_paths

from harness import executor
from ipadapter_next.ipadapter import sweep
from ipadapter_next.ipadapter.grid import labelled_grid
from ipadapter_next.node_defs.layer_tools import check_layer_weights

REFERENCE = "reference_layer_tools.png"
SD15_LAYERS = ["input_1", "input_2", "input_4", "input_5", "input_7", "input_8", "middle"] + [
    f"output_{i}" for i in range(3, 12)]


@pytest.fixture(scope="module", autouse=True)
def reference_image(models_dir, torch_single_thread):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(
        Path(folder_paths.get_input_directory()) / REFERENCE)


def base_graph(prefix: str) -> dict:
    """Plain SD1.5 workflow plus the adapter's loaders and the reference image (nodes 10-12)."""
    prompt = executor.workflow_plain_sd15(seed=5, steps=3, filename_prefix=prefix)
    prompt["10"] = {"class_type": "IPAdapterModelLoader",
                    "inputs": {"ipadapter_file": "ip-adapter-plus_sd15.safetensors"}}
    prompt["11"] = {"class_type": "CLIPVisionLoader",
                    "inputs": {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": REFERENCE}}
    return prompt


APPLY = {"weight": 0.9, "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}
ADAPTER = {"model": ["1", 0], "ipadapter": ["10", 0], "image": ["12", 0], "clip_vision": ["11", 0]}


def mad_scientist(layer_weights, prefix: str) -> dict:
    prompt = base_graph(prefix)
    prompt["13"] = {"class_type": "IPAdapterMS", "inputs": {
        **ADAPTER, **APPLY, "weight_faceidv2": 1.0, "weight_type": "linear", "layer_weights": layer_weights}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    return prompt


def sweep_graph(prefix: str, grouping: str, mode: str = "only this group") -> dict:
    """Layer Sweep -> KSampler (once per model) -> VAE Decode -> Save Image (every image) and Sweep Grid -> Save."""
    prompt = base_graph(prefix)
    prompt["13"] = {"class_type": "IPAdapterLayerSweep",
                    "inputs": {**ADAPTER, **APPLY, "grouping": grouping, "mode": mode}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    prompt["14"] = {"class_type": "IPAdapterSweepGrid",
                    "inputs": {"images": ["6", 0], "labels": ["13", 1], "columns": 0, "font_size": 0}}
    prompt["15"] = {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": f"{prefix}_grid"}}
    return prompt


def saved_images(result, node: str) -> list[torch.Tensor]:
    result.raise_for_error()
    folder = Path(folder_paths.get_output_directory())
    return [torch.from_numpy(np.asarray(Image.open(folder / item.get("subfolder", "") / item["filename"])
                                        .convert("RGB"), dtype=np.float32) / 255.0)
            for item in result.outputs[node]["images"]]


# --- IPAdapter Layer Weights ------------------------------------------------------------------------
def test_layer_weights_node_passes_valid_text_on_unchanged():
    assert check_layer_weights("3:1, 6:0.5") == "3:1, 6:0.5"
    assert check_layer_weights("output_1.3:0.5\ninput_8:1") == "output_1.3:0.5\ninput_8:1"  # SDXL only
    assert check_layer_weights("15:1") == "15:1"  # SD1.5 only
    assert check_layer_weights("double_3:1, single_20:0.5") == "double_3:1, single_20:0.5"  # Flux (the sweep's)
    assert check_layer_weights("30:1") == "30:1"  # SD3.5's joint blocks only


def test_layer_weights_node_names_what_is_wrong_for_each_unet():
    with pytest.raises(ValueError) as err:
        check_layer_weights("3:1, 40:0.5")
    message = str(err.value)
    assert "SD1.5:" in message and "SDXL:" in message and "index 40 is out of range" in message
    assert "Flux:" in message and "SD3.5:" in message


def test_layer_weights_wired_into_mad_scientist_equal_the_same_text_typed_in():
    text = "4:0.25, 5:1, 9:0.5"
    typed = saved_images(executor.run_prompt(mad_scientist(text, "ms_typed")), "7")[0]
    wired = mad_scientist(["20", 0], "ms_wired")
    wired["20"] = {"class_type": "IPAdapterLayerWeights", "inputs": {"layer_weights": text}}
    assert torch.equal(saved_images(executor.run_prompt(wired), "7")[0], typed)
    plain = saved_images(executor.run_prompt(executor.workflow_plain_sd15(seed=5, steps=3, filename_prefix="p")), "7")
    assert (typed - plain[0]).abs().mean() > 0.005  # the layers chosen do change the image


# --- IPAdapter Layer Sweep ----------------------------------------------------------------------------
def test_sweep_entries_list_the_references_then_every_group_in_execution_order():
    entries = sweep.sweep_entries("sd15", "each layer", "only this group")
    assert [e.label for e in entries] == ["no adapter", "all layers"] + [f"only {n}" for n in SD15_LAYERS]
    assert entries[4].layers == (2,) and entries[4].layer_weights() == "2:1"
    sections = sweep.sweep_entries("sdxl", "input / middle / output", "all but this group")
    assert [(e.label, e.layers) for e in sections[2:]] == [
        ("all but input", tuple(range(4, 11))), ("all but middle", (0, 1, 2, 3, *range(5, 11))),
        ("all but output", (0, 1, 2, 3, 4))]
    assert len(sweep.sweep_entries("sdxl")) == 2 + 11


def test_sweep_renders_every_entry_and_each_equals_its_own_single_run():
    result = executor.run_prompt(sweep_graph("sweep_sections", "input / middle / output"))
    images = saved_images(result, "7")
    assert len(images) == 5  # no adapter, all layers, input, middle, output
    plain = saved_images(executor.run_prompt(executor.workflow_plain_sd15(seed=5, steps=3, filename_prefix="p2")), "7")
    assert torch.equal(images[0], plain[0])
    every = saved_images(executor.run_prompt(mad_scientist(", ".join(f"{t}:1" for t in range(16)), "ms_all")), "7")
    assert torch.equal(images[1], every[0])
    output_only = saved_images(executor.run_prompt(mad_scientist(
        ", ".join(f"{t}:1" for t in range(7, 16)), "ms_out")), "7")
    assert torch.equal(images[4], output_only[0])
    assert len({tuple(img.flatten()[:4096].tolist()) for img in images}) == 5  # five different pictures


def test_sweep_grid_of_the_sweep_holds_each_image_under_its_label():
    result = executor.run_prompt(sweep_graph("sweep_grid", "input / middle / output", "all but this group"))
    images = saved_images(result, "7")
    (grid,) = saved_images(result, "15")
    expected = labelled_grid([img[None] for img in images],
                             ["no adapter", "all layers", "all but input", "all but middle", "all but output"])
    assert grid.shape == expected[0].shape == (2 * (64 + 17) + 4, 3 * 64 + 2 * 4, 3)  # 10 px font, 17 px strips
    torch.testing.assert_close(grid, expected[0], rtol=0, atol=1.01 / 255)  # SaveImage truncates, the grid rounds


def test_labelled_grid_draws_labels_in_a_strip_above_each_cell():
    red = torch.zeros(1, 32, 48, 3)
    red[..., 0] = 1
    blue = torch.zeros(2, 32, 48, 3)
    blue[..., 2] = 1
    grid = labelled_grid([red, blue], ["red", "blue"], columns=2, font_size=12)[0]
    strip = 12 * 3 // 2 + 2
    assert grid.shape == (2 * (32 + strip) + 4, 2 * 48 + 4, 3)
    assert torch.equal(grid[strip:strip + 32, :48], red[0])  # the first cell, under its strip
    assert torch.equal(grid[strip:strip + 32, 52:], blue[0])  # a batch's images get a cell each
    label = grid[:strip, :48]
    assert (label < 0.5).any() and (label == 1).float().mean() > 0.5  # dark text on white
    assert (grid[:strip, 52:] < 0.5).any()
    assert (grid[strip + 32 + 4:, 52:] == 1).all()  # three cells in two columns: the last one stays blank


def test_sweep_reports_progress_and_stops_when_interrupted():
    calls = []

    def hook(value, total, preview, node_id=None):
        calls.append((value, total))
        comfy.model_management.interrupt_current_processing(True)  # the first model done: the user cancels

    before = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        result = executor.run_prompt(sweep_graph("sweep_cancel", "each layer"))
    finally:
        comfy.utils.set_progress_bar_global_hook(before)
        comfy.model_management.interrupt_current_processing(False)
    assert calls == [(1, 18)]  # one step per model: no adapter, all layers, 16 layers
    assert not result.success and result.error["event"] == "execution_interrupted"
    assert result.error["node_type"] == "IPAdapterLayerSweep"
