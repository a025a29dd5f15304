"""Every node registered here that the old extension had keeps its interface, so saved workflows load unchanged.

The reference is ComfyUI_IPAdapter_plus 2.0.0's interface (tests/data/ipadapter_plus_interface.json):
class key, category, input names in order with type, default, range or choices, and outputs. New
inputs may only follow the old ones, as optional inputs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import nodes

from harness import runtime

OLD = json.loads((Path(__file__).parent / "data" / "ipadapter_plus_interface.json").read_text())["nodes"]
PACK = __import__(runtime.PACK_NAME).NODE_CLASS_MAPPINGS
SHARED = sorted(set(PACK) & set(OLD))
FIELDS = ("default", "min", "max", "step", "multiline")


def describe(spec) -> dict:
    """Our input spec in the interface file's terms."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, (list, tuple)):
        return {"choices": list(kind), **({"default": opts["default"]} if "default" in opts else {})}
    return {"type": kind, **{k: opts[k] for k in FIELDS if k in opts}}


def test_the_first_node_set_is_registered():
    for key in ("IPAdapter", "IPAdapterAdvanced", "IPAdapterModelLoader", "IPAdapterEncoder", "IPAdapterEmbeds",
                "PrepImageForClipVision"):
        assert key in SHARED
        assert nodes.NODE_CLASS_MAPPINGS[key] is PACK[key]


@pytest.mark.parametrize("key", SHARED)
def test_inputs_outputs_and_category_match_the_old_extension(key):
    old, cls = OLD[key], PACK[key]
    ours = cls.INPUT_TYPES()
    assert cls.CATEGORY == old["category"]
    assert list(cls.RETURN_TYPES) == old["return_types"]
    if old["return_names"]:
        assert list(cls.RETURN_NAMES) == old["return_names"]
    for section in ("required", "optional"):
        old_inputs = old.get(section, [])
        new_inputs = list(ours.get(section, {}).items())
        if section == "required":
            assert len(new_inputs) == len(old_inputs), "no required input may be added or removed"
        assert [name for name, _ in new_inputs[: len(old_inputs)]] == [name for name, _ in old_inputs]
        for (name, spec), (_, old_spec) in zip(new_inputs, old_inputs):
            got = describe(spec)
            if "choices" in old_spec:
                if old_spec["choices"]:  # file lists are folder contents, not interface
                    assert got["choices"] == old_spec["choices"], name
                    assert got.get("default", got["choices"][0]) == old_spec.get("default", old_spec["choices"][0]), name
            else:
                assert {k: v for k, v in got.items() if k in old_spec} == old_spec, name
                assert set(old_spec) <= set(got), name


@pytest.mark.parametrize("key", SHARED)
def test_every_input_has_a_tooltip(key):
    for section in ("required", "optional"):
        for name, spec in PACK[key].INPUT_TYPES().get(section, {}).items():
            opts = spec[1] if len(spec) > 1 else {}
            assert opts.get("tooltip"), f"{key}.{name} has no tooltip"
