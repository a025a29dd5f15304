"""All 37 nodes of the old extension are registered, with the outputs saved workflows link to.

tests/test_interface.py checks the inputs of every node both packs have; this file checks that none
of the old nodes is missing, and for each one the outputs (types, names, order: links are stored by
output slot), whether it is an output node, and the name it is listed under.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import nodes

from harness import runtime

OLD = json.loads((Path(__file__).parent / "data" / "ipadapter_plus_interface.json").read_text())["nodes"]
PACK = __import__(runtime.PACK_NAME)


def registered(key: str) -> type:
    if key not in PACK.NODE_CLASS_MAPPINGS:
        pytest.fail(f"{key} ({OLD[key]['display_name']}) is not registered")
    return PACK.NODE_CLASS_MAPPINGS[key]


def test_the_interface_table_has_all_37_old_nodes():
    assert len(OLD) == 37


def test_no_old_node_is_missing():
    missing = sorted(set(OLD) - set(PACK.NODE_CLASS_MAPPINGS))
    assert not missing, (f"{len(missing)} of the old extension's {len(OLD)} nodes are not registered "
                         f"(workflows using them will not load): {', '.join(missing)}")


def test_comfyui_sees_the_pack_nodes_it_registers():
    for key, cls in PACK.NODE_CLASS_MAPPINGS.items():
        assert nodes.NODE_CLASS_MAPPINGS.get(key) is cls, key


@pytest.mark.parametrize("key", sorted(OLD))
def test_outputs_match_the_old_node(key):
    old, cls = OLD[key], registered(key)
    assert list(cls.RETURN_TYPES) == old["return_types"], "output types, in order"
    names = list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)
    assert names == (old["return_names"] or old["return_types"]), "output names, in order"
    assert bool(getattr(cls, "OUTPUT_NODE", False)) == old["output_node"], "OUTPUT_NODE"


@pytest.mark.parametrize("key", sorted(OLD))
def test_listed_under_the_old_display_name_and_category(key):
    cls = registered(key)
    assert PACK.NODE_DISPLAY_NAME_MAPPINGS.get(key) == OLD[key]["display_name"]
    assert cls.CATEGORY == OLD[key]["category"]
