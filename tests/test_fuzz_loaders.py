"""The loaders against corrupted files: every one gives a clear error naming the file, writes nothing, runs no
code from the file, and a good file saved under the same name right after loads.

Each case turns the bytes of a good file into a damaged one (truncated, garbage, a huge header length,
wrong dtypes, missing sections, NaN values, pickles carrying code in the zip and the legacy format, ...)
and feeds it to the IP-Adapter loaders (Model Loader, Unified Loader) and the embeds / face-embeds loaders.
"""
from __future__ import annotations

import io
import os
import pathlib
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import folder_paths
import nodes

from harness import adapter_factory
from harness.widths import TINY_WIDTHS
from support import tiny_unet
from ipadapter_next.ipadapter import encoders

FAMILY = "ip-adapter_sd15"
MARKER = Path(folder_paths.get_temp_directory()).parent / "fuzz_code_ran"  # a pickle's code would create it


@pytest.fixture(scope="module", autouse=True)
def _tiny(models_dir, torch_single_thread):
    encoders.register_widths(TINY_WIDTHS)
    yield
    encoders.unregister_widths(TINY_WIDTHS)


class CodeCarrier:
    """Unpickling this calls Path.touch(MARKER): a stand-in for any code a malicious file would run."""

    def __reduce__(self):
        return pathlib.Path.touch, (MARKER,)


def adapter_sections() -> dict:
    return adapter_factory.adapter_state_dict(FAMILY, scale="tiny")


def flat(sections: dict) -> dict:
    return {f"{s}.{k}": t.contiguous() for s, tensors in sections.items() for k, t in tensors.items()}


def torch_bytes(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def good_adapter() -> bytes:
    return safetensors_bytes(flat(adapter_sections()))


def with_nan() -> bytes:
    sections = adapter_sections()
    sections["ip_adapter"]["1.to_k_ip.weight"][0, 0] = float("nan")
    return safetensors_bytes(flat(sections))


def with_int_weights() -> bytes:
    sections = adapter_sections()
    sections["ip_adapter"] = {k: (v * 100).to(torch.int32) for k, v in sections["ip_adapter"].items()}
    return safetensors_bytes(flat(sections))


def without(section: str) -> bytes:
    sections = adapter_sections()
    del sections[section]
    return safetensors_bytes(flat(sections))


def huge_header() -> bytes:
    return struct.pack("<Q", 2**62) + b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'


def header_garbage() -> bytes:
    body = b"{not json at all" + b" " * 40
    return struct.pack("<Q", len(body)) + body + b"\0" * 64


# name -> (file bytes, a phrase the message must hold). Lambdas: the bytes are made when the case runs.
ADAPTER_CASES = {
    "truncated safetensors": (lambda: good_adapter()[: len(good_adapter()) // 2], "truncated"),
    "truncated torch zip": (lambda: torch_bytes(adapter_sections())[:3000], "could not be read"),
    "truncated legacy torch": (lambda: torch_bytes(adapter_sections(), legacy=True)[:3000], "could not be read"),
    "random garbage": (lambda: os.urandom(4096).replace(b"PK", b"pk").lstrip(b"\x80") or b"x", "not a tensor file"),
    "empty file": (lambda: b"", "the file is empty"),
    "huge header length": (huge_header, "no valid safetensors header"),
    "unreadable header": (header_garbage, "unreadable safetensors header"),
    "html page": (lambda: b"<!DOCTYPE html><title>404</title>", "HTML page"),
    "git lfs pointer": (lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n", "Git LFS"),
    "integer weights": (with_int_weights, "not floating point"),
    "nan values": (with_nan, "NaN or infinite"),
    "no image_proj section": (lambda: without("image_proj"), "'image_proj' section is missing"),
    "no ip_adapter section": (lambda: without("ip_adapter"), "'ip_adapter' section is missing"),
    "no tensors at all": (lambda: safetensors_bytes({"other.weight": torch.ones(2)}), "not an IP-Adapter"),
    "code in a zip pickle": (lambda: torch_bytes({"image_proj": CodeCarrier()}), "needs code to load"),
    "code in a legacy pickle": (lambda: torch_bytes({"image_proj": CodeCarrier()}, legacy=True), "needs code to load"),
    "a list, not a dict": (lambda: torch_bytes([torch.ones(2)]), "not an IP-Adapter checkpoint"),
}


def snapshot(root: Path, skip: Path) -> dict[str, int]:
    """Every file under ComfyUI's base directory (and the marker's folder) with its size, but ``skip``."""
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file() and p != skip}


def check_refused(load, path: Path, phrase: str) -> None:
    base = Path(folder_paths.base_path)
    before = snapshot(base, path)
    with pytest.raises(ValueError) as err:
        load()
    message = str(err.value)
    assert path.name in message, message
    assert phrase.lower() in message.lower(), message
    assert snapshot(base, path) == before  # nothing written (no cache file, no partial output)
    assert not MARKER.exists(), "the file's code ran"


def put(folder: str, name: str, data: bytes) -> Path:
    path = Path(folder_paths.get_folder_paths(folder)[0]) / name
    path.write_bytes(data)
    folder_paths.filename_list_cache.pop(folder, None)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_model_loader_refuses_a_corrupt_file_then_loads_a_good_one_under_the_same_name(case, suffix):
    make, phrase = ADAPTER_CASES[case]
    name = f"fuzz_adapter{suffix}"
    path = put("ipadapter", name, make())
    load = nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model
    check_refused(lambda: load(name), path, phrase)
    put("ipadapter", name, good_adapter())
    adapter = load(name)[0]
    assert adapter.spec.family == FAMILY
    assert torch.equal(adapter.sections["image_proj"]["norm.weight"], adapter_sections()["image_proj"]["norm.weight"])


@pytest.mark.parametrize("case", ["truncated safetensors", "nan values", "code in a zip pickle", "html page"])
def test_unified_loader_names_a_corrupt_file_it_had_to_skip(case, tmp_path):
    make, phrase = ADAPTER_CASES[case]
    saved = folder_paths.folder_names_and_paths["ipadapter"]
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(tmp_path)], saved[1])
    folder_paths.filename_list_cache.pop("ipadapter", None)
    try:
        path = put("ipadapter", "ip-adapter_sd15.safetensors", make())
        loader = nodes.NODE_CLASS_MAPPINGS["IPAdapterUnifiedLoader"]()
        model = tiny_unet("sd15")
        if case == "nan values":  # only the shapes are read to find the file; the values at load
            check_refused(lambda: loader.load_models(model, "STANDARD (medium strength)"), path, phrase)
        else:
            check_refused(lambda: loader.load_models(model, "STANDARD (medium strength)"), path, "not used")
        put("ipadapter", path.name, good_adapter())
        assert loader.load_models(model, "STANDARD (medium strength)")[1]["ipadapter"]["model"].spec.family == FAMILY
    finally:
        folder_paths.folder_names_and_paths["ipadapter"] = saved
        folder_paths.filename_list_cache.pop("ipadapter", None)


EMBEDS_CASES = {
    "truncated": (lambda: torch_bytes(torch.randn(1, 257, 40))[:700], "could not be read"),
    "garbage": (lambda: b"\x00garbage" * 50, "not a tensor file"),
    "huge header length": (huge_header, "no valid safetensors header"),
    "nan values": (lambda: torch_bytes(torch.full((1, 4), float("nan"))), "NaN or infinite"),
    "integer values": (lambda: torch_bytes(torch.ones(1, 4, dtype=torch.int64)), "not floating point"),
    "code in a zip pickle": (lambda: torch_bytes(CodeCarrier()), "needs code to load"),
    "code in a legacy pickle": (lambda: torch_bytes(CodeCarrier(), legacy=True), "needs code to load"),
}


def input_file(name: str, data: bytes) -> Path:
    path = Path(folder_paths.get_input_directory()) / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(EMBEDS_CASES))
def test_load_embeds_refuses_a_corrupt_file_then_loads_a_good_one(case):
    make, phrase = EMBEDS_CASES[case]
    path = input_file("fuzz.ipadpt", make())
    load = nodes.NODE_CLASS_MAPPINGS["IPAdapterLoadEmbeds"]().load
    check_refused(lambda: load("fuzz.ipadpt"), path, phrase)
    good = torch.randn(1, 257, 40)
    input_file("fuzz.ipadpt", torch_bytes(good))
    assert torch.equal(load("fuzz.ipadpt")[0], good)


FACE_CASES = {
    "truncated": (lambda: safetensors_bytes({"normed": torch.randn(1, 512)})[:100], "truncated"),
    "garbage": (lambda: b"\x00garbage" * 50, "not a tensor file"),
    "huge header length": (huge_header, "no valid safetensors header"),
    "nan values": (lambda: safetensors_bytes({"normed": torch.full((1, 512), float("nan"))}), "NaN or infinite"),
    "integer values": (lambda: safetensors_bytes({"normed": torch.ones(1, 512, dtype=torch.int32)}), "not floating point"),
    "code in a zip pickle": (lambda: torch_bytes({"normed": CodeCarrier()}), "needs code to load"),
    "code in a legacy pickle": (lambda: torch_bytes({"normed": CodeCarrier()}, legacy=True), "needs code to load"),
}


@pytest.mark.parametrize("case", list(FACE_CASES))
def test_load_face_embeds_refuses_a_corrupt_file_then_loads_a_good_one(case):
    make, phrase = FACE_CASES[case]
    path = input_file("fuzz.face_embeds.safetensors", make())
    load = nodes.NODE_CLASS_MAPPINGS["IPAdapterFaceEmbedsLoad"]().load
    check_refused(lambda: load(path.name), path, phrase)
    good = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    input_file(path.name, safetensors_bytes({"normed": good}))
    assert torch.equal(load(path.name)[0].normed, good)
