"""The node layer's shared pieces: the Unified Loader pipeline read as the plain dict other packs index,
the one table of combine methods behind both node lists, and the one table of input specs."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

import nodes

from support import tiny_adapter
from ipadapter_next.ipadapter import encode, unified
from ipadapter_next.node_defs import specs

ADAPTER_FILE, CLIP_FILE = "/models/ipadapter/ip-adapter-plus_sd15.safetensors", "/models/clip_vision/vit-h.safetensors"


@pytest.fixture
def built(monkeypatch):
    """build_pipeline with the file loads replaced by markers: (pipeline, adapter, clip vision)."""
    adapter, clip = tiny_adapter("ip-adapter-plus_sd15"), object()
    monkeypatch.setattr(unified, "load_adapter", lambda path: adapter)
    monkeypatch.setattr(unified, "load_clip_vision", lambda path: clip)
    resolved = SimpleNamespace(ipadapter_path=ADAPTER_FILE, clip_vision_path=CLIP_FILE)
    return unified.build_pipeline(resolved), adapter, clip, resolved


def test_the_pipeline_reads_as_the_plain_dict_other_packs_index(built):
    pipeline, adapter, clip, _ = built
    assert isinstance(pipeline, dict)
    assert list(pipeline) == ["ipadapter", "clipvision", "insightface"]  # no faceid_v2 outside the FaceID loader
    assert dict(pipeline) == {"ipadapter": {"file": ADAPTER_FILE, "model": adapter},
                              "clipvision": {"file": CLIP_FILE, "model": clip},
                              "insightface": {"provider": None, "model": None}}
    assert all(type(value) is dict for value in pipeline.values())
    assert pipeline["ipadapter"]["model"] is adapter and pipeline.get("clipvision", {}).get("model") is clip
    assert copy.copy(pipeline) == pipeline


def test_the_faceid_version_is_one_more_key_only_when_given(built):
    _, _, _, resolved = built
    pipeline = unified.build_pipeline(resolved, faceid_v2=True)
    assert list(pipeline) == ["ipadapter", "clipvision", "insightface", "faceid_v2"] and pipeline["faceid_v2"] is True
    assert pipeline.faceid_version("auto from file name") == "v2" and pipeline.faceid_version("v1") == "v1"


def test_a_plain_dict_pipeline_is_read_like_ours(built):
    pipeline, adapter, clip, resolved = built
    plain = {key: dict(value) for key, value in pipeline.items()}  # as another pack might pass one on
    assert unified.adapter_and_encoder(plain) == (adapter, clip)
    other = object()
    assert unified.adapter_and_encoder(plain, other) == (adapter, other)  # a connected encoder wins
    assert unified.adapter_and_encoder(adapter) == (adapter, None)
    chained = unified.build_pipeline(resolved, plain)
    assert chained["ipadapter"]["model"] is adapter and chained["insightface"] == plain["insightface"]
    with pytest.raises(TypeError, match="must come from IPAdapter Model Loader or a Unified Loader"):
        unified.adapter_and_encoder({"model": adapter})


def test_a_failed_insightface_load_is_raised_where_a_face_is_needed(built):
    pipeline, _, _, _ = built
    pipeline["insightface"] = {"provider": "CPU", "name": "buffalo_l", "model": None, "error": ImportError("no")}
    assert pipeline.insightface(raise_load_error=False) is None
    with pytest.raises(ImportError, match="no"):
        pipeline.insightface()


def test_one_combine_table_serves_the_apply_nodes_and_combine_embeds():
    assert encode.COMBINE_METHODS == ("concat", "add", "subtract", "average", "norm average")
    assert encode.EMBEDS_COMBINE_METHODS == encode.COMBINE_METHODS + ("max", "min")
    for key, cls in nodes.NODE_CLASS_MAPPINGS.items():
        for section in cls.INPUT_TYPES().values():
            if "combine_embeds" in section:
                assert section["combine_embeds"][0] == list(encode.COMBINE_METHODS), key
    method = nodes.NODE_CLASS_MAPPINGS["IPAdapterCombineEmbeds"].INPUT_TYPES()["required"]["method"]
    assert method[0] == list(encode.EMBEDS_COMBINE_METHODS)
    x = torch.tensor([[1.0, -2.0], [5.0, 4.0]])
    assert torch.equal(encode.combine_embeds(x[:1], "no such method"), x[:1])  # one embedding: nothing to combine


def test_spec_items_change_only_what_they_name():
    types = specs.input_types([("weight", {"max": 3})], [("extra", ("INT", {"tooltip": "t"}))])
    assert types["required"]["weight"] == ("FLOAT", {**specs.SPECS["weight"][1], "max": 3})
    assert types["optional"] == {"extra": ("INT", {"tooltip": "t"})}
    assert "optional" not in specs.input_types(["model"])


def test_every_node_function_accepts_every_input_it_declares():
    """An input the UI offers but the function does not take fails only when a user connects it."""
    import inspect

    from harness import runtime

    pack = __import__(runtime.PACK_NAME)
    missing = {}
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        declared = cls.INPUT_TYPES()
        names = set(declared.get("required", {})) | set(declared.get("optional", {}))
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        if names - set(params):
            missing[key] = sorted(names - set(params))
    assert missing == {}
