"""``python -m ipadapter.training ...`` from the pack's folder (custom_nodes/<this pack>): finds ComfyUI (the
folder two levels up, or COMFYUI_PATH), lets it read its own options (``--cpu`` and the like, after ``--``),
then runs the command-line trainer (``ipadapter.training.cli``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def _comfyui_root() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[4])  # ComfyUI/custom_nodes/<pack>/ipadapter/training
    for path in candidates:
        if (path / "comfy" / "model_patcher.py").is_file():
            return path
    raise SystemExit("ComfyUI not found: run this from ComfyUI/custom_nodes/<pack>, or set COMFYUI_PATH.")


def boot() -> None:
    root = _comfyui_root()
    args = sys.argv[1:]
    ours, comfy_args = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
    sys.path.insert(0, str(root))
    sys.argv = [str(root / "main.py"), *comfy_args]
    import comfy.options

    comfy.options.enable_args_parsing()
    import folder_paths  # noqa: F401  (ComfyUI's folders, as the UI sees them)

    sys.argv = [sys.argv[0], *ours]


if __name__ == "__main__":
    boot()
    from .cli import main

    sys.exit(main(sys.argv[1:]))
