"""Unified Loaders: files found by what they are, clear errors for missing files, chained loaders reuse models."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import comfy.clip_vision
import folder_paths
import nodes

from harness import executor
from harness.widths import TINY_WIDTHS
from support import tiny_unet
from ipadapter_next.ipadapter import checkpoint, encoders, model_files, presets, unified
from ipadapter_next.ipadapter.presets import PRESETS, PresetFilesMissing, PresetUnsupported, resolve_preset

VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
REFERENCE = "loaders_test_reference.png"
FOLDERS = ("ipadapter", "clip_vision", "loras")


@pytest.fixture(scope="module", autouse=True)
def tiny_encoders_known(models_dir, torch_single_thread):
    """The fixture encoders have tiny widths: let the pack recognise them (as real files are by default)."""
    encoders.register_widths(TINY_WIDTHS)
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 40, 90)).save(Path(folder_paths.get_input_directory()) / REFERENCE)
    yield
    encoders.unregister_widths(TINY_WIDTHS)


@pytest.fixture
def layout(tmp_path, fixture_files):
    """A models layout of our own: ``layout({"ipadapter/x.safetensors": source_path, ...})`` makes those
    folders ComfyUI's only ipadapter / clip_vision / loras folders until the test ends."""
    saved = {name: folder_paths.folder_names_and_paths[name] for name in FOLDERS}

    def make(files: dict[str, Path]) -> Path:
        root = tmp_path / "models"
        for name in FOLDERS:
            (root / name).mkdir(parents=True, exist_ok=True)
            folder_paths.folder_names_and_paths[name] = ([str(root / name)], saved[name][1])
            folder_paths.filename_list_cache.pop(name, None)
        for rel, src in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(src, root / rel)
        return root

    yield make
    for name in FOLDERS:
        folder_paths.folder_names_and_paths[name] = saved[name]
        folder_paths.filename_list_cache.pop(name, None)


def adapter_file(fixture_files, family: str) -> Path:
    return fixture_files.ipadapter[f"{family}.safetensors"]


def rel(path: str, folder: str) -> str:
    return Path(path).relative_to(folder_paths.get_folder_paths(folder)[0]).as_posix()


# --- resolving presets on the fixture models -----------------------------------------------------------
FIXTURE_PRESETS = [(name, arch) for name, p in PRESETS.items() for arch in p.variants
                   if p.loader != "faceid" and name not in ("LIGHT - SD1.5 only (low strength)", "PLUS FACE (portraits)",
                                                              "Composition")]


@pytest.mark.parametrize("preset, arch", FIXTURE_PRESETS)
def test_every_preset_finds_a_file_of_its_family_and_its_encoder(preset, arch):
    r = resolve_preset(preset, arch)
    assert model_files.identify_ipadapter(r.ipadapter_path).family == PRESETS[preset].variants[arch].family
    assert model_files.identify_clip_vision(r.clip_vision_path).key == PRESETS[preset].encoder
    assert r.lora_path is None and r.insightface_model is None


def test_canonical_names_are_preferred_and_safetensors_before_bin():
    r = resolve_preset("STANDARD (medium strength)", "sd15")
    assert rel(r.ipadapter_path, "ipadapter") == "ip-adapter_sd15.safetensors"  # a .bin copy sits beside it
    assert rel(r.clip_vision_path, "clip_vision") == VIT_H  # not sub/model.safetensors, also a ViT-H


def test_clip_vision_in_a_sub_folder_under_its_download_name_is_found_by_its_tensors(layout, fixture_files):
    layout({"ipadapter/ip-adapter-plus_sd15.safetensors": adapter_file(fixture_files, "ip-adapter-plus_sd15"),
            "clip_vision/sub/model.safetensors": fixture_files.clip_vision_sub,
            "clip_vision/CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors": fixture_files.clip_vision["vit-g"]})
    r = resolve_preset("PLUS (high strength)", "sd15")
    assert rel(r.clip_vision_path, "clip_vision") == "sub/model.safetensors"


def test_a_file_named_like_the_encoder_but_holding_another_is_not_used(layout, fixture_files):
    layout({"ipadapter/ip-adapter_sd15.safetensors": adapter_file(fixture_files, "ip-adapter_sd15"),
            "clip_vision/" + VIT_H: fixture_files.clip_vision["vit-g"]})  # renamed wrongly
    with pytest.raises(PresetFilesMissing) as err:
        resolve_preset("STANDARD (medium strength)", "sd15")
    assert f"{VIT_H} (its tensors are CLIP tiny ViT-bigG)" in str(err.value)


def test_missing_files_error_lists_every_file_what_is_accepted_and_the_folders(layout, fixture_files):
    root = layout({"ipadapter/ip-adapter-plus_sd15.safetensors": adapter_file(fixture_files, "ip-adapter-plus_sd15")})
    with pytest.raises(PresetFilesMissing) as err:
        resolve_preset("PLUS FACE (portraits)", "sd15")
    text = str(err.value)
    assert "'PLUS FACE (portraits)' (SD1.5) cannot find 2 of its 2 files" in text
    assert "MISSING ip-adapter-plus-face_sd15.safetensors" in text and str(root / "ipadapter") in text
    assert "MISSING CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in text and str(root / "clip_vision") in text
    assert "plus.face.sd15" in text  # the accepted names
    assert "any file whose tensors are a CLIP ViT-H/14 vision encoder" in text and "model.safetensors" in text
    # the plus file has PLUS FACE's layout, but so has PLUS: only a name tells them apart
    assert "ip-adapter-plus_sd15.safetensors" not in text.split("MISSING ip-adapter-plus-face")[1].split("\n")[0]


def test_an_unshared_layout_is_found_under_any_name(layout, fixture_files):
    layout({"ipadapter/my_download.safetensors": adapter_file(fixture_files, "ip-adapter-full-face_sd15"),
            "ipadapter/model.safetensors": adapter_file(fixture_files, "ip-adapter-plus_sd15"),
            "clip_vision/model.safetensors": fixture_files.clip_vision_sub})
    r = resolve_preset("FULL FACE - SD1.5 only (portraits stronger)", "sd15")
    assert rel(r.ipadapter_path, "ipadapter") == "my_download.safetensors"
    with pytest.raises(PresetFilesMissing, match="MISSING ip-adapter-plus-face_sd15"):
        resolve_preset("PLUS FACE (portraits)", "sd15")  # shared layout: by name only


def test_presets_without_a_model_for_the_architecture_say_what_to_use():
    with pytest.raises(PresetUnsupported) as err:
        resolve_preset("LIGHT - SD1.5 only (low strength)", "sdxl")
    assert "exists for SD1.5 only" in str(err.value)
    assert "For SDXL models use: STANDARD (medium strength), VIT-G (medium strength), PLUS" in str(err.value)
    with pytest.raises(PresetUnsupported, match="neither an SD1.5 nor an SDXL model"):
        resolve_preset("PLUS (high strength)", None)


def test_faceid_presets_resolve_lora_and_insightface(layout, fixture_files):
    layout({"ipadapter/ip-adapter-faceid-plusv2_sd15.bin": fixture_files.ipadapter["ip-adapter-faceid-plusv2_sd15.bin"],
            "clip_vision/" + VIT_H: fixture_files.clip_vision["vit-h"],
            "loras/ip-adapter-faceid-plusv2_sd15_lora.safetensors": fixture_files.clip_vision["vit-h"]})
    r = resolve_preset("FACEID PLUS V2", "sd15")
    assert r.preset.faceid_v2 and r.insightface_model == "buffalo_l"
    assert rel(r.ipadapter_path, "ipadapter") == "ip-adapter-faceid-plusv2_sd15.bin"
    assert rel(r.lora_path, "loras") == "ip-adapter-faceid-plusv2_sd15_lora.safetensors"
    with pytest.raises(PresetFilesMissing) as err:
        resolve_preset("FACEID", "sd15")
    assert "MISSING ip-adapter-faceid_sd15.bin" in str(err.value)
    assert "FaceID LoRA: MISSING ip-adapter-faceid_sd15_lora.safetensors" in str(err.value)


def test_a_missing_faceid_lora_can_be_optional(layout, fixture_files):
    layout({"ipadapter/ip-adapter-faceid_sd15.safetensors": adapter_file(fixture_files, "ip-adapter-faceid_sd15"),
            "clip_vision/" + VIT_H: fixture_files.clip_vision["vit-h"]})
    with pytest.raises(PresetFilesMissing, match="FaceID LoRA: MISSING"):
        resolve_preset("FACEID", "sd15")
    assert resolve_preset("FACEID", "sd15", need_lora=False).lora_path is None


def test_community_presets(layout, fixture_files):
    layout({"ipadapter/ip_plus_composition_sd15.safetensors": adapter_file(fixture_files, "ip-adapter-plus_sd15"),
            "ipadapter/Kolors-IP-Adapter-Plus.safetensors": adapter_file(fixture_files, "Kolors-IP-Adapter-Plus"),
            "clip_vision/a.safetensors": fixture_files.clip_vision["vit-h"],
            "clip_vision/b.safetensors": fixture_files.clip_vision["vit-l-336"]})
    assert rel(resolve_preset("Composition", "sd15").ipadapter_path, "ipadapter") == "ip_plus_composition_sd15.safetensors"
    kolors = resolve_preset("Kolors", "sdxl")
    assert rel(kolors.clip_vision_path, "clip_vision") == "b.safetensors"
    with pytest.raises(PresetUnsupported, match="Kolors models only"):
        resolve_preset("Kolors", "sd15")


# --- reading only headers, cached -----------------------------------------------------------------------
def test_identification_reads_only_the_header(tmp_path, layout, fixture_files, monkeypatch):
    src = fixture_files.clip_vision["vit-h"]
    data = src.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    blank = tmp_path / "blank.safetensors"
    blank.write_bytes(data[: 8 + header_len] + b"\xff" * (len(data) - 8 - header_len))  # tensor data all NaN
    assert model_files.identify_clip_vision(blank).key == "vit-h"  # the data is never looked at
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: 8 + header_len])  # but a file cut short (the header promises more) is not taken
    assert model_files.identify_clip_vision(cut) is None
    with pytest.raises(checkpoint.CheckpointError, match="cut.safetensors is truncated"):
        model_files.tensor_shapes(cut)

    root = layout({"ipadapter/a.safetensors": adapter_file(fixture_files, "ip-adapter-plus_sd15"),
                   "ipadapter/b.safetensors": adapter_file(fixture_files, "ip-adapter-full-face_sd15"),
                   "clip_vision/x.safetensors": fixture_files.clip_vision["vit-g"],
                   "clip_vision/y/model.safetensors": fixture_files.clip_vision["vit-h"]})

    def refuse(*args, **kwargs):
        raise AssertionError("tensor data was read")

    import safetensors

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    model_files.clear_cache()
    r = resolve_preset("FULL FACE - SD1.5 only (portraits stronger)", "sd15")  # no name matches: all are examined
    assert (Path(r.ipadapter_path).name, Path(r.clip_vision_path).parent.name) == ("b.safetensors", "y")
    assert {Path(k[0]) for k in model_files._cache} == {p.resolve() for p in root.rglob("*.safetensors")}


def test_shapes_are_cached_by_path_mtime_and_size(tmp_path, fixture_files, monkeypatch):
    path = tmp_path / "enc.safetensors"
    shutil.copy(fixture_files.clip_vision["vit-g"], path)
    reads = []
    real = model_files.read_safetensors_header
    monkeypatch.setattr(model_files, "read_safetensors_header", lambda p: reads.append(p) or real(p))
    assert model_files.identify_clip_vision(path).key == "vit-g"
    assert model_files.identify_clip_vision(path).key == "vit-g"
    assert len(reads) == 1
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    model_files.identify_clip_vision(path)
    assert len(reads) == 2


def test_open_clip_layout_and_non_encoders(tmp_path, fixture_files):
    import safetensors.torch

    hf = model_files.tensor_shapes(fixture_files.clip_vision["vit-h"])
    hidden = hf["vision_model.embeddings.class_embedding"][0]
    proj = hf["visual_projection.weight"][0]
    tokens = hf["vision_model.embeddings.position_embedding.weight"][0]
    open_clip = {"visual.class_embedding": torch.zeros(hidden), "visual.positional_embedding": torch.zeros(tokens, hidden),
                 "visual.proj": torch.zeros(hidden, proj), "visual.transformer.resblocks.0.ln_1.weight": torch.zeros(hidden)}
    safetensors.torch.save_file(open_clip, str(tmp_path / "open_clip.safetensors"))
    assert model_files.identify_clip_vision(tmp_path / "open_clip.safetensors").key == "vit-h"
    assert model_files.identify_clip_vision(adapter_file(fixture_files, "ip-adapter_sd15")) is None
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    assert model_files.identify_clip_vision(tmp_path / "junk.safetensors") is None


# --- the nodes -------------------------------------------------------------------------------------------
def loader(key="IPAdapterUnifiedLoader"):
    return nodes.NODE_CLASS_MAPPINGS[key]()


def test_chained_loaders_reuse_what_upstream_loaded(monkeypatch):
    model = tiny_unet("sd15")
    _, first = loader().load_models(model, "PLUS (high strength)")
    calls = []
    monkeypatch.setattr(unified, "load_clip_vision", lambda p: calls.append(p))
    monkeypatch.setattr(unified, "load_adapter", lambda p: calls.append(p) or "new adapter")
    out_model, second = loader().load_models(model, "STANDARD (medium strength)", ipadapter=first)
    assert out_model is model
    assert second["clipvision"]["model"] is first["clipvision"]["model"]  # same ViT-H file: not loaded again
    assert second["ipadapter"]["model"] == "new adapter"  # another adapter file: only that one is loaded
    assert calls == [second["ipadapter"]["file"]] and second["ipadapter"]["file"] != first["ipadapter"]["file"]
    assert first["ipadapter"]["model"] is not None and first["ipadapter"]["file"].endswith("ip-adapter-plus_sd15.safetensors")


def test_chaining_the_same_preset_returns_the_same_models(monkeypatch):
    model = tiny_unet("sdxl")
    _, first = loader().load_models(model, "VIT-G (medium strength)")
    monkeypatch.setattr(comfy.clip_vision, "load", lambda p: pytest.fail("loaded again"))
    _, second = loader().load_models(model, "VIT-G (medium strength)", ipadapter=first)
    assert second["ipadapter"]["model"] is first["ipadapter"]["model"]
    assert second["clipvision"]["model"] is first["clipvision"]["model"]
    assert second["insightface"] == first["insightface"] and second["insightface"] is not first["insightface"]


def test_unified_loader_workflow_with_the_encoder_in_a_sub_folder(layout, fixture_files):
    layout({"ipadapter/ip-adapter-plus_sd15.safetensors": adapter_file(fixture_files, "ip-adapter-plus_sd15"),
            "clip_vision/sub/model.safetensors": fixture_files.clip_vision_sub})
    prompt = executor.workflow_plain_sd15(seed=5, steps=2, filename_prefix="unified_sub")
    prompt["10"] = {"class_type": "IPAdapterUnifiedLoader", "inputs": {"model": ["1", 0], "preset": "PLUS (high strength)"}}
    prompt["11"] = {"class_type": "IPAdapterUnifiedLoader",  # chained: reuses the encoder
                    "inputs": {"model": ["10", 0], "preset": "PLUS (high strength)", "ipadapter": ["10", 1]}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": REFERENCE}}
    prompt["13"] = {"class_type": "IPAdapter", "inputs": {"model": ["11", 0], "ipadapter": ["11", 1], "image": ["12", 0],
                                                          "weight": 1.0, "start_at": 0.0, "end_at": 1.0,
                                                          "weight_type": "standard"}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    result = executor.run_prompt(prompt).raise_for_error()
    assert len(result.images) == 1


def test_unified_loader_workflow_reports_missing_files(layout):
    root = layout({})
    prompt = executor.workflow_plain_sd15(seed=5, steps=1)
    prompt["10"] = {"class_type": "IPAdapterUnifiedLoaderCommunity", "inputs": {"model": ["1", 0], "preset": "Composition"}}
    prompt["13"] = {"class_type": "IPAdapter", "inputs": {"model": ["10", 0], "ipadapter": ["10", 1], "image": ["12", 0],
                                                          "weight": 1.0, "start_at": 0.0, "end_at": 1.0,
                                                          "weight_type": "standard"}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": REFERENCE}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    result = executor.run_prompt(prompt)
    assert not result.success
    message = result.error["exception_message"]
    assert result.error["exception_type"].endswith("PresetFilesMissing")
    assert "ip_plus_composition_sd15.safetensors" in message and str(root / "ipadapter") in message
    assert VIT_H in message and str(root / "clip_vision") in message


def test_chaining_a_model_loader_output_is_refused_clearly(fixture_files):
    adapter = nodes.NODE_CLASS_MAPPINGS["IPAdapterModelLoader"]().load_ipadapter_model("ip-adapter_sd15.safetensors")[0]
    with pytest.raises(TypeError, match="must come from another Unified Loader"):
        loader().load_models(tiny_unet("sd15"), "STANDARD (medium strength)", ipadapter=adapter)


def test_preset_lists_come_from_the_table():
    assert presets.preset_names("standard") == list(loader().INPUT_TYPES()["required"]["preset"][0])
    assert presets.preset_names("community") == ["Composition", "Kolors"]
    faceid = presets.preset_names("faceid")
    assert faceid == ["FACEID", "FACEID PLUS - SD1.5 only", "FACEID PLUS V2", "FACEID PORTRAIT (style transfer)",
                      "FACEID PORTRAIT UNNORM - SDXL only (strong)"]
