"""Living beside ComfyUI_IPAdapter_plus: with the old extension installed, this pack registers nothing
(whatever the load order), logs one line saying so, and never leaves a mix of the two packs' nodes."""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import pytest

import folder_paths
import nodes

from harness import runtime

REPO = Path(__file__).resolve().parent.parent
OLD_KEYS = sorted(json.loads((Path(__file__).parent / "data" / "ipadapter_plus_interface.json").read_text())["nodes"])
PACK = __import__(runtime.PACK_NAME)
coexist = sys.modules[runtime.PACK_NAME + ".node_defs.coexist"]

FAKE_OLD_INIT = '''
from .IPAdapterPlus import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
'''
FAKE_OLD_NODES = '''
KEYS = {keys!r}
NODE_CLASS_MAPPINGS = {{key: type(key, (), {{"OLD_EXTENSION": True}}) for key in KEYS}}
NODE_DISPLAY_NAME_MAPPINGS = {{key: key for key in KEYS}}
'''


def fake_old_extension(custom_nodes: Path, name: str = "ComfyUI_IPAdapter_plus") -> Path:
    """A stand-in for the old extension: its marker file and every one of its 37 class keys."""
    folder = custom_nodes / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(FAKE_OLD_INIT)
    (folder / "IPAdapterPlus.py").write_text(FAKE_OLD_NODES.format(keys=OLD_KEYS))
    return folder


@pytest.fixture
def custom_nodes(tmp_path):
    """A custom_nodes folder of our own, known to ComfyUI, holding a link to this pack; ComfyUI's node
    registry and module table are restored afterwards."""
    folder = tmp_path / "custom_nodes"
    folder.mkdir()
    (folder / "ipadapter_next").symlink_to(REPO, target_is_directory=True)
    saved_paths = folder_paths.folder_names_and_paths["custom_nodes"]
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(folder)], saved_paths[1])
    saved_nodes, saved_names = dict(nodes.NODE_CLASS_MAPPINGS), dict(nodes.NODE_DISPLAY_NAME_MAPPINGS)
    saved_modules, saved_dirs = set(sys.modules), dict(nodes.LOADED_MODULE_DIRS)
    for key in PACK.NODE_CLASS_MAPPINGS:  # start from ComfyUI without this pack
        nodes.NODE_CLASS_MAPPINGS.pop(key, None)
    yield folder
    folder_paths.folder_names_and_paths["custom_nodes"] = saved_paths
    nodes.NODE_CLASS_MAPPINGS.clear()
    nodes.NODE_CLASS_MAPPINGS.update(saved_nodes)
    nodes.NODE_DISPLAY_NAME_MAPPINGS.clear()
    nodes.NODE_DISPLAY_NAME_MAPPINGS.update(saved_names)
    nodes.LOADED_MODULE_DIRS.clear()
    nodes.LOADED_MODULE_DIRS.update(saved_dirs)
    prefix = str(folder).replace(".", "_x_")  # how ComfyUI names a folder pack's modules
    for name in set(sys.modules) - saved_modules:
        if name.startswith(prefix):
            del sys.modules[name]


def load(path: Path) -> bool:
    """ComfyUI's own custom node loader, as its start-up scan calls it."""
    return asyncio.run(nodes.load_custom_node(str(path), module_parent="custom_nodes"))


def registered_by_this_pack() -> set[str]:
    return {k for k, cls in nodes.NODE_CLASS_MAPPINGS.items() if not getattr(cls, "OLD_EXTENSION", False)
            and k in PACK.NODE_CLASS_MAPPINGS}


@pytest.mark.parametrize("order", ["old first", "this pack first"])
def test_with_the_old_extension_installed_only_its_nodes_are_registered(custom_nodes, order, caplog):
    old = fake_old_extension(custom_nodes)
    ours = custom_nodes / "ipadapter_next"
    with caplog.at_level(logging.WARNING):
        for path in ([old, ours] if order == "old first" else [ours, old]):
            assert load(path)
    assert all(getattr(nodes.NODE_CLASS_MAPPINGS[k], "OLD_EXTENSION", False) for k in OLD_KEYS)
    assert registered_by_this_pack() == set()  # nothing of ours: no mix, and no extra keys either
    lines = [r.getMessage() for r in caplog.records if "IPAdapter Next" in r.getMessage()]
    assert len(lines) == 1
    assert "ComfyUI_IPAdapter_plus is also installed" in lines[0] and "registers none" in lines[0]
    assert "rename its folder to ComfyUI_IPAdapter_plus.disabled" in lines[0]


def test_alone_this_pack_registers_every_node(custom_nodes, caplog):
    fake_old_extension(custom_nodes, "ComfyUI_IPAdapter_plus.disabled")  # disabled the way ComfyUI-Manager does
    with caplog.at_level(logging.WARNING):
        assert load(custom_nodes / "ipadapter_next")
    assert set(PACK.NODE_CLASS_MAPPINGS) <= set(nodes.NODE_CLASS_MAPPINGS)
    assert registered_by_this_pack() == set(PACK.NODE_CLASS_MAPPINGS)
    assert not [r for r in caplog.records if "IPAdapter Next" in r.getMessage()]


def test_detection_rules(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert coexist.find_old_extension([a, b, tmp_path / "missing"]) is None
    fork = fake_old_extension(b, "my_fork_of_ipadapter")  # recognised by its files, not its name
    assert coexist.find_old_extension([a, b]) == fork
    assert coexist.find_old_extension([a, b], own_dir=fork) is None  # never ourselves
    (fork / "__init__.py").unlink()  # not a package ComfyUI would import
    assert coexist.find_old_extension([a, b]) is None
    fake_old_extension(a, ".ComfyUI_IPAdapter_plus")  # hidden
    assert coexist.find_old_extension([a]) is None
    fake_old_extension(a, "ComfyUI_IPAdapter_plus.disabled")
    assert coexist.find_old_extension([a]) is None


def test_custom_nodes_disabled_by_the_command_line_do_not_count(tmp_path, monkeypatch):
    from comfy.cli_args import args

    old = fake_old_extension(tmp_path)
    monkeypatch.setattr(args, "disable_all_custom_nodes", True)
    monkeypatch.setattr(args, "whitelist_custom_nodes", ["ipadapter_next"])
    assert coexist.find_old_extension([tmp_path]) is None
    monkeypatch.setattr(args, "whitelist_custom_nodes", ["ipadapter_next", old.name])
    assert coexist.find_old_extension([tmp_path]) == old
