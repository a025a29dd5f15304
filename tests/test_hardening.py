"""Faults a demanding user hits, each refused at its root with a clear message, through the real runtime.

Damaged adapter files (wrong shapes, NaN values, a format the extension does not say), NaN or infinite
inputs, empty image batches, rewritten files re-read by the loaders, and saves that never leave a
half-written file or write outside output/. (Memory: test_memory_loop.py; corrupt files of every kind:
test_fuzz_loaders.py.)
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import folder_paths
import nodes

from harness import adapter_factory, executor
from harness.widths import TINY_WIDTHS
from support import tiny_unet
from ipadapter_next.ipadapter import checkpoint, encoders, faceid, files

REFERENCE = "hardening_reference.png"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
PLUS = "ip-adapter-plus_sd15"


@pytest.fixture(scope="module", autouse=True)
def reference_image(models_dir, torch_single_thread):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        Path(folder_paths.get_input_directory()) / REFERENCE)
    encoders.register_widths(TINY_WIDTHS)  # the Unified Loader must recognise the tiny encoders
    yield
    encoders.unregister_widths(TINY_WIDTHS)


def ipadapter_dir() -> Path:
    return Path(folder_paths.get_folder_paths("ipadapter")[0])


def write_adapter(name: str, sections: dict, *, mtime: float | None = None) -> Path:
    """Save ``sections`` as models/ipadapter/<name> (.safetensors: flat keys; else torch.save)."""
    path = ipadapter_dir() / name
    if path.suffix == ".safetensors":
        save_file({f"{s}.{k}": t.contiguous() for s, tensors in sections.items() for k, t in tensors.items()}, str(path))
    else:
        torch.save(sections, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    folder_paths.filename_list_cache.pop("ipadapter", None)
    return path


def plus_sections(seed: int = 0) -> dict:
    return adapter_factory.adapter_state_dict(PLUS, scale="tiny", seed=seed)


def graph(ipadapter_file: str, prefix: str, weight=0.8, start_at=0.0, end_at=1.0, loader=None) -> dict:
    prompt = executor.workflow_plain_sd15(seed=4, steps=2, filename_prefix=prefix)
    # A fresh copy: ComfyUI stores its IS_CHANGED result in the prompt's node dict.
    prompt["10"] = copy.deepcopy(loader) or {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ipadapter_file}}
    prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": VIT_H}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": REFERENCE}}
    prompt["13"] = {"class_type": "IPAdapterAdvanced", "inputs": {
        "model": ["1", 0], "ipadapter": ["10", 0] if loader is None else ["10", 1], "image": ["12", 0],
        "clip_vision": ["11", 0], "weight": weight, "weight_type": "linear", "combine_embeds": "concat",
        "start_at": start_at, "end_at": end_at, "embeds_scaling": "V only"}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    return prompt


def failure(prompt: dict) -> tuple[str, str]:
    result = executor.run_prompt(prompt)
    assert not result.success, "the workflow ran: the fault was not caught"
    return result.error["exception_type"], result.error["exception_message"]


def image(prompt: dict) -> torch.Tensor:
    return executor.run_prompt(prompt).raise_for_error().image_tensors()[0]


# --- 1. tensors of the wrong shape fail at load, naming file, tensor, shapes and family --------------------
@pytest.mark.parametrize("section, key, shape", [
    ("ip_adapter", "3.to_k_ip.weight", None),  # one layer's rows (its width) wrong: used to fail inside sampling
    ("image_proj", "layers.1.0.to_out.weight", None),  # a Resampler tensor
    ("image_proj", "proj_out.bias", None),
])
def test_a_tensor_of_the_wrong_shape_fails_at_load_naming_file_tensor_and_shapes(section, key, shape):
    sections = plus_sections()
    good = tuple(sections[section][key].shape)
    wrong = (good[0] + 8, *good[1:])
    sections[section][key] = torch.randn(wrong)
    write_adapter("hardening_bad_shape.safetensors", sections)
    kind, message = failure(graph("hardening_bad_shape.safetensors", "bad_shape"))
    assert kind.endswith("TensorShapeError")
    assert "hardening_bad_shape.safetensors" in message
    assert f"{section}.{key} is {list(wrong)}, expected {list(good)}" in message
    assert PLUS in message and "download it again" in message


def test_a_proj_tensor_of_the_wrong_shape_names_the_file():
    sections = adapter_factory.adapter_state_dict("ip-adapter_sd15", scale="tiny")
    sections["image_proj"]["proj.bias"] = torch.randn(sections["image_proj"]["proj.bias"].shape[0] - 2)
    path = write_adapter("hardening_bad_proj.safetensors", sections)
    with pytest.raises(checkpoint.CheckpointError) as err:
        nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model(path.name)
    assert "hardening_bad_proj.safetensors" in str(err.value) and "image_proj.proj.bias" in str(err.value)
    assert "ip-adapter_sd15" in str(err.value)


# --- 2. NaN / Inf: in a file at load, in an input at apply --------------------------------------------------
def test_an_adapter_file_with_nan_values_is_refused_at_load():
    sections = plus_sections()
    sections["ip_adapter"]["5.to_v_ip.weight"][0, 0] = float("nan")
    sections["image_proj"]["latents"][0, 0, 0] = float("inf")
    write_adapter("hardening_nan.safetensors", sections)
    kind, message = failure(graph("hardening_nan.safetensors", "nan_file"))
    assert kind.endswith("CheckpointError")
    assert "hardening_nan.safetensors" in message and "NaN or infinite" in message
    assert "image_proj.latents" in message and "ip_adapter.5.to_v_ip.weight" in message


@pytest.mark.parametrize("name", ["weight", "start_at", "end_at"])
def test_a_nan_input_is_refused_at_apply_with_its_name(name):
    # ComfyUI's validation lets NaN through (it is neither below min nor above max).
    values = {"weight": 0.8, "start_at": 0.0, "end_at": 1.0, name: float("nan")}
    kind, message = failure(graph(f"{PLUS}.safetensors", f"nan_{name}", **values))
    assert kind.endswith("ValueError") and f"the {name} input is nan" in message


def test_infinite_strengths_are_refused_when_called_directly(fixture_files):
    model = tiny_unet("sd15")
    adapter = nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model(f"{PLUS}.safetensors")[0]
    clip_vision = nodes.NODE_CLASS_MAPPINGS["CLIPVisionLoader"]().load_clip(VIT_H)[0]
    node = nodes.NODE_CLASS_MAPPINGS["IPAdapterAdvanced"]()
    with pytest.raises(ValueError, match="the weight input is inf"):
        node.apply_ipadapter(model, adapter, torch.rand(1, 64, 64, 3), weight=float("inf"), weight_type="linear",
                             combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                             clip_vision=clip_vision)
    with pytest.raises(ValueError, match="the weight input is nan"):  # a frame-weight list with a NaN in it
        nodes.NODE_CLASS_MAPPINGS["IPAdapterBatch"]().apply_ipadapter(
            model, adapter, torch.rand(2, 64, 64, 3), weight=[0.5, float("nan")], weight_type="linear",
            start_at=0.0, end_at=1.0, embeds_scaling="V only", encode_batch_size=0, clip_vision=clip_vision)
    faceid_adapter = nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model(
        "ip-adapter-faceid_sd15.safetensors")[0]
    with pytest.raises(ValueError, match="the strength input is -inf"):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterFaceIDLoRA"]().apply_lora(model, faceid_adapter, float("-inf"))


# --- 4. a rewritten file is read again -----------------------------------------------------------------
def test_the_model_loader_runs_again_when_its_file_is_rewritten():
    name = "hardening_rewritten.safetensors"
    write_adapter(name, plus_sections(seed=0), mtime=time.time() - 100)
    first = image(graph(name, "rewrite_a"))
    assert torch.equal(image(graph(name, "rewrite_b")), first)  # unchanged: served from the cache
    write_adapter(name, plus_sections(seed=1))  # same size, other weights, new modification time
    second = image(graph(name, "rewrite_c"))
    assert (second - first).abs().mean() > 1e-3
    write_adapter("hardening_seed1.safetensors", plus_sections(seed=1))
    assert torch.equal(second, image(graph("hardening_seed1.safetensors", "rewrite_d")))


def test_the_unified_loader_runs_again_when_its_file_is_rewritten(tmp_path):
    saved = folder_paths.folder_names_and_paths["ipadapter"]
    folder = tmp_path / "ipadapter"
    folder.mkdir()
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(folder)], saved[1])
    folder_paths.filename_list_cache.pop("ipadapter", None)
    try:
        loader = {"class_type": "IPAdapterUnifiedLoader", "inputs": {"model": ["1", 0], "preset": "PLUS (high strength)"}}
        path = write_adapter("ip-adapter-plus_sd15.safetensors", plus_sections(seed=0), mtime=time.time() - 100)
        first = image(graph("", "unified_a", loader=loader))
        write_adapter(path.name, plus_sections(seed=2))
        assert (image(graph("", "unified_b", loader=loader)) - first).abs().mean() > 1e-3
        before = nodes.NODE_CLASS_MAPPINGS["IPAdapterUnifiedLoaderFaceID"].IS_CHANGED(preset="FACEID PORTRAIT (style transfer)")
        write_adapter("ip-adapter-faceid-portrait-v11_sd15.safetensors",
                      adapter_factory.adapter_state_dict("ip-adapter-faceid-portrait_sd15", scale="tiny"))
        after = nodes.NODE_CLASS_MAPPINGS["IPAdapterUnifiedLoaderFaceID"].IS_CHANGED(preset="FACEID PORTRAIT (style transfer)")
        assert after != before and "ip-adapter-faceid-portrait-v11_sd15.safetensors@" in after
    finally:
        folder_paths.folder_names_and_paths["ipadapter"] = saved
        folder_paths.filename_list_cache.pop("ipadapter", None)


def test_every_loader_node_tells_comfyui_when_its_files_change():
    keys = ("IPAdapterModelLoader", "IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderCommunity",
            "IPAdapterUnifiedLoaderFaceID", "IPAdapterLoadEmbeds", "IPAdapterFaceEmbedsLoad")
    assert all(callable(getattr(nodes.NODE_CLASS_MAPPINGS[k], "IS_CHANGED", None)) for k in keys)


# --- 5. the format comes from the bytes, not the extension ---------------------------------------------------
def test_a_safetensors_file_named_bin_and_a_torch_file_named_safetensors_load():
    sections = plus_sections()
    (ipadapter_dir() / "hardening_st.safetensors").unlink(missing_ok=True)
    st = write_adapter("hardening_st.safetensors", sections)
    as_bin = ipadapter_dir() / "hardening_really_safetensors.bin"
    as_bin.write_bytes(st.read_bytes())
    pickle_named_st = write_adapter("hardening_pickle.bin", sections)
    renamed = pickle_named_st.with_name("hardening_really_pickle.safetensors")
    pickle_named_st.rename(renamed)
    folder_paths.filename_list_cache.pop("ipadapter", None)
    load = nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model
    for name in (as_bin.name, renamed.name):
        adapter = load(name)[0]
        assert adapter.spec.family == PLUS
        assert torch.equal(adapter.sections["image_proj"]["latents"], sections["image_proj"]["latents"])


def test_the_format_test_tells_a_safetensors_header_length_from_the_torch_magic_bytes(tmp_path):
    # A header length whose first byte is 0x80 (a pickle opcode) or that reads "PK" is still safetensors.
    for first in (b"\x80\x00", b"PK"):
        path = tmp_path / "x.bin"
        path.write_bytes(first + b"\x00" * 6 + b'{"__metadata__": {}}')
        assert files.tensor_file_kind(path) == "safetensors"
    torch.save({"a": torch.ones(1)}, tmp_path / "zip.safetensors")
    torch.save({"a": torch.ones(1)}, tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False)
    assert files.tensor_file_kind(tmp_path / "zip.safetensors") == "zip"
    assert files.tensor_file_kind(tmp_path / "legacy.safetensors") == "pickle"


def test_an_unreadable_file_says_what_its_bytes_look_like():
    page = ipadapter_dir() / "hardening_page.bin"
    page.write_bytes(b"<!DOCTYPE html><html><body>Sign in to download</body></html>")
    folder_paths.filename_list_cache.pop("ipadapter", None)
    with pytest.raises(checkpoint.CheckpointError, match="hardening_page.bin is not a tensor file .*an HTML page"):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model(page.name)


# --- 6. an empty image batch ------------------------------------------------------------------------------
def test_an_empty_image_batch_is_refused_naming_the_input():
    model = tiny_unet("sd15")
    adapter = nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model(f"{PLUS}.safetensors")[0]
    clip_vision = nodes.NODE_CLASS_MAPPINGS["CLIPVisionLoader"]().load_clip(VIT_H)[0]
    empty = torch.zeros(0, 64, 64, 3)
    with pytest.raises(ValueError, match="the image input is empty"):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterAdvanced"]().apply_ipadapter(
            model, adapter, empty, weight=1.0, weight_type="linear", combine_embeds="concat", start_at=0.0,
            end_at=1.0, embeds_scaling="V only", clip_vision=clip_vision)
    with pytest.raises(ValueError, match="the image_negative input is empty"):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterAdvanced"]().apply_ipadapter(
            model, adapter, torch.rand(1, 64, 64, 3), weight=1.0, weight_type="linear", combine_embeds="concat",
            start_at=0.0, end_at=1.0, embeds_scaling="V only", clip_vision=clip_vision, image_negative=empty)
    with pytest.raises(ValueError, match="the image input is empty"):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterEncoder"]().encode(adapter, empty, 1.0, clip_vision=clip_vision)
    with pytest.raises(ValueError, match="the image input is empty"):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterTiled"]().apply_tiled(
            model, adapter, empty, weight=1.0, weight_type="linear", combine_embeds="concat", start_at=0.0,
            end_at=1.0, sharpening=0.0, embeds_scaling="V only", clip_vision=clip_vision)


# --- saves: atomic, inside output/ ------------------------------------------------------------------------
def output_listing() -> set[str]:
    root = Path(folder_paths.get_output_directory())
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_an_interrupted_save_leaves_no_file_under_the_final_name(monkeypatch):
    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10) if hasattr(f, "truncate") else None
        raise KeyboardInterrupt  # the user stopped ComfyUI mid-write

    before = output_listing()
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterSaveEmbeds"]().save(torch.randn(1, 257, 40), "hardening/interrupted")
    monkeypatch.undo()
    assert {p for p in output_listing() - before if not p.endswith("hardening")} == set()

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        raise KeyboardInterrupt

    monkeypatch.setattr(faceid, "save_file", half_written)
    with pytest.raises(KeyboardInterrupt):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterFaceEmbedsSave"]().save(
            faceid.FaceEmbeds(torch.randn(1, 512), None), "hardening/face")
    assert {p for p in output_listing() - before if not p.endswith("hardening")} == set()


@pytest.mark.parametrize("prefix", ["../escaped", "sub/../../escaped", "/tmp/escaped"])
def test_saves_never_write_outside_the_output_folder(prefix):
    outside = Path(folder_paths.get_output_directory()).parent
    before = set(outside.iterdir()) | set(Path("/tmp").glob("escaped*"))
    with pytest.raises(ValueError, match="leads outside ComfyUI's output folder"):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterSaveEmbeds"]().save(torch.randn(1, 4), prefix)
    with pytest.raises(ValueError, match="leads outside ComfyUI's output folder"):
        nodes.NODE_CLASS_MAPPINGS["IPAdapterFaceEmbedsSave"]().save(faceid.FaceEmbeds(torch.randn(1, 512), None), prefix)
    assert set(outside.iterdir()) | set(Path("/tmp").glob("escaped*")) == before
