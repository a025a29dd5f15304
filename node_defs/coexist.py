"""Living beside ComfyUI_IPAdapter_plus: both packs register the same node class keys.

ComfyUI loads custom node folders in directory-listing order and a later pack silently overwrites the
keys an earlier one registered, so with both packs registering, which class serves a key would depend
on load order, and a mix of the two (one pack's loader feeding the other pack's apply node) would break
workflows in confusing ways. This pack cannot make the old one skip its keys, so the one order-proof
policy is:

    when the old extension is installed and enabled in any custom_nodes folder, this pack registers
    no nodes at all and logs one line saying so and how to switch.

"Installed and enabled" means a folder that ComfyUI will import (not ``*.disabled``, not hidden, and
allowed by ``--disable-all-custom-nodes`` / ``--whitelist-custom-nodes``) holding the old extension's
``IPAdapterPlus.py`` beside an ``__init__.py`` (forks under other names count too).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

OLD_PACK = "ComfyUI_IPAdapter_plus"
OLD_MARKER = "IPAdapterPlus.py"  # the old extension's node module, present in every version since 2.0 and in forks
THIS_PACK = "IPAdapter Next"


def _comfy_will_load(name: str) -> bool:
    """Whether ComfyUI's custom node scan imports the folder ``name`` (its own skip rules)."""
    if name.endswith(".disabled") or name.startswith(".") or name == "__pycache__":
        return False
    try:
        from comfy.cli_args import args
    except Exception:  # outside ComfyUI: no command-line switches
        return True
    if getattr(args, "disable_all_custom_nodes", False):
        return name in (getattr(args, "whitelist_custom_nodes", None) or [])
    return True


def find_old_extension(custom_nodes_dirs: Iterable[str | os.PathLike], own_dir: str | os.PathLike | None = None) -> Path | None:
    """The first enabled old-extension folder in ``custom_nodes_dirs`` (ComfyUI's custom_nodes folders),
    or None. ``own_dir`` (this pack's folder) is never reported."""
    own = os.path.realpath(own_dir) if own_dir is not None else None
    for base in custom_nodes_dirs:
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            path = Path(base) / name
            if not _comfy_will_load(name) or not path.is_dir() or os.path.realpath(path) == own:
                continue
            if (path / OLD_MARKER).is_file() and (path / "__init__.py").is_file():
                return path
    return None


def step_aside_message(old: Path) -> str:
    return (f"{THIS_PACK}: {old.name} is also installed ({old}); its IPAdapter nodes are in use and {THIS_PACK} "
            f"registers none (both packs use the same node names). To use {THIS_PACK}, disable {old.name} "
            f"(rename its folder to {old.name}.disabled, or disable it in ComfyUI-Manager) and restart ComfyUI.")


def custom_nodes_dirs() -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths("custom_nodes")
    except KeyError:
        return []


def should_register(dirs: Iterable[str | os.PathLike], own_dir: str | os.PathLike | None = None,
                    log: logging.Logger | None = None) -> bool:
    """True when this pack should register its nodes; otherwise logs the one line that says why."""
    old = find_old_extension(dirs, own_dir)
    if old is None:
        return True
    (log or logging.getLogger(__name__)).warning(step_aside_message(old))
    return False
