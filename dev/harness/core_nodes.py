"""ComfyUI's own nodes, as the example workflows use them: read version-proof, and pinned.

ComfyUI's node definitions change between versions in ways a saved workflow does not care about:
0.3.76+ writes combo inputs as V3 ``("COMBO", {"options": [...]})`` instead of a plain list, and newer
versions gave SaveImage / PreviewImage an ``images`` output. The example workflows must come out the
same whichever ComfyUI generates them, so the generator reads ComfyUI's nodes from a pinned table
(``data/comfyui_core_nodes.json``, written from ComfyUI 0.3.75, the oldest runtime tested: files in
its shape load in every newer frontend), and a test checks that the running ComfyUI still accepts
every pinned input (``incompatibilities``).

Entries have the interface table's format: ``required`` / ``optional`` lists of ``[name, spec]`` with
``{"type": ...}`` or ``{"choices": [...]}`` (empty for a folder's file list), ``return_types``,
``return_names``.
"""
from __future__ import annotations

import enum
import json
from functools import lru_cache
from pathlib import Path

PINNED_PATH = Path(__file__).resolve().parent / "data" / "comfyui_core_nodes.json"
# Inputs whose choices are a folder's contents (what is installed), not part of a node's interface.
FILE_LIST_INPUTS = ("ckpt_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "lora_name", "vae_name", "unet_name", "image", "negative_file")
# The options a widget spec carries that a workflow depends on.
SPEC_KEYS = ("default", "min", "max", "step", "control_after_generate", "image_upload", "forceInput", "multiline")


def plain(kind):
    """ComfyUI's IO enum members (``IO.CONDITIONING``) as their plain string."""
    return kind.value if isinstance(kind, enum.Enum) else kind


def input_spec(name: str, spec: tuple) -> dict:
    """One INPUT_TYPES entry as ``{"type": ...}`` or ``{"choices": [...]}``, legacy or V3 combo alike."""
    kind = plain(spec[0])
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    out = {k: opts[k] for k in SPEC_KEYS if k in opts}
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        choices = list(kind) if isinstance(kind, (list, tuple)) else list(opts.get("options", []))
        out["choices"] = [] if name in FILE_LIST_INPUTS else choices
    else:
        out["type"] = kind
    return out


def interface_entry(node_class) -> dict:
    """A registered node class (legacy or V3, through its INPUT_TYPES shim) in the interface format."""
    types = node_class.INPUT_TYPES()
    entry = {section: [[name, input_spec(name, spec)] for name, spec in types.get(section, {}).items()]
             for section in ("required", "optional")}
    entry["return_types"] = [plain(t) for t in node_class.RETURN_TYPES]
    entry["return_names"] = list(getattr(node_class, "RETURN_NAMES", None) or [])
    return entry


@lru_cache(maxsize=1)
def pinned() -> dict[str, dict]:
    return json.loads(PINNED_PATH.read_text())["nodes"]


def incompatibilities(kind: str, pinned_entry: dict, running_entry: dict) -> list[str]:
    """Why a workflow written with ``pinned_entry`` would not load and run on ``running_entry``.

    Checked: every pinned input exists with the same kind, widgets keep their relative order (the
    frontend maps ``widgets_values`` by position), pinned choices are still offered, and every pinned
    output slot keeps its type. A newer ComfyUI may add optional inputs and outputs after them.
    """
    problems = []
    running = {name: spec for section in ("required", "optional") for name, spec in running_entry[section]}
    widgets_now = [name for section in ("required", "optional") for name, spec in running_entry[section]
                   if "choices" in spec or spec.get("type") in ("INT", "FLOAT", "STRING", "BOOLEAN")]
    pinned_widgets = []
    for section in ("required", "optional"):
        for name, spec in pinned_entry[section]:
            now = running.get(name)
            if now is None:
                problems.append(f"{kind}.{name} is gone")
                continue
            if "choices" in spec:
                pinned_widgets.append(name)
                missing = set(spec["choices"]) - set(now.get("choices", []))
                if "choices" not in now or missing:
                    problems.append(f"{kind}.{name} no longer offers {sorted(missing) or spec['choices']}")
            elif spec["type"] != now.get("type"):
                problems.append(f"{kind}.{name} was {spec['type']}, is now {now.get('type', 'a combo')}")
            elif spec["type"] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                pinned_widgets.append(name)
    order = [name for name in widgets_now if name in pinned_widgets]
    if order != pinned_widgets:
        problems.append(f"{kind} widgets were {pinned_widgets}, are now ordered {order}")
    now_types = running_entry["return_types"]
    for slot, kind_out in enumerate(pinned_entry["return_types"]):
        if slot >= len(now_types) or now_types[slot] != kind_out:
            problems.append(f"{kind} output {slot} was {kind_out}, is now {now_types[slot:slot + 1] or 'gone'}")
    return problems


def write_pinned(kinds: list[str], path: Path = PINNED_PATH) -> Path:
    """Write the pinned table from the running ComfyUI (run on the oldest runtime tested)."""
    import comfyui_version  # noqa: F401  (only to name the source in the file)
    import nodes

    table = {kind: interface_entry(nodes.NODE_CLASS_MAPPINGS[kind]) for kind in sorted(kinds)}
    about = f"ComfyUI {comfyui_version.__version__}'s own nodes used by example_workflows/, as dev/harness/core_nodes.py reads them"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"about": about, "nodes": table}, indent=1) + "\n")
    return path
