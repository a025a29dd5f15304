"""UI-format workflows (what ComfyUI's frontend saves and loads) -> API-format prompts, as the frontend does.

Widget inputs (INT, FLOAT, STRING, BOOLEAN, combo lists) take their values from ``widgets_values`` in
the order of the node's INPUT_TYPES (required, then optional); a seed with ``control_after_generate``
is followed by its control value, an ``image_upload`` combo by the upload widget's value. Linked
inputs become ``[origin node id, origin slot]``.
"""
from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def widget_inputs(node_class) -> list[tuple[str, tuple, int]]:
    """(name, spec, values it takes in widgets_values) for every widget input, in frontend order."""
    types = node_class.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            if not is_widget(spec):
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            extra = 1 if opts.get("control_after_generate") or opts.get("image_upload") else 0
            out.append((name, spec, 1 + extra))
    return out


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def to_api(workflow: dict, node_classes: dict) -> dict:
    """Convert a UI-format workflow to an API prompt, using ``node_classes`` (NODE_CLASS_MAPPINGS)."""
    links = {link[0]: (link[1], link[2]) for link in workflow.get("links", [])}  # id -> (origin node, slot)
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted / bypassed nodes are not sent
            continue
        kind = node["type"]
        if kind not in node_classes:
            raise KeyError(f"workflow node {node['id']} has type {kind!r}, which is not registered")
        inputs = {}
        linked = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                origin, origin_slot = links[slot["link"]]
                linked[slot["name"]] = [str(origin), origin_slot]
        values = list(node.get("widgets_values", []))
        pos = 0
        for name, _spec, count in widget_inputs(node_classes[kind]):
            if pos < len(values):
                inputs[name] = values[pos]
            pos += count
        if pos < len(values):
            raise ValueError(f"workflow node {node['id']} ({kind}) has {len(values)} widget values, "
                             f"its inputs take {pos}")
        inputs.update(linked)
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt


# Canonical checkpoint names in the example workflows -> the tiny fixture of the same architecture.
TINY_CHECKPOINTS = {
    "v1-5-pruned-emaonly.safetensors": "tiny_sd15.safetensors",
    "sd_xl_base_1.0.safetensors": "tiny_sdxl.safetensors",
    # SD3.5 Large: the tiny SD1.5 checkpoint supplies CLIP; harness.tiny_sd3.tiny_sd3_prompt rewires the rest.
    "sd3.5_large.safetensors": "tiny_sd15.safetensors",
}


def use_tiny_models(prompt: dict, checkpoint_name: str | None = None, size: int = 64, steps: int = 4) -> dict:
    """Point an API prompt's checkpoints at the tiny fixtures and shrink the latent and step count.

    Without ``checkpoint_name`` each checkpoint is mapped by architecture (``TINY_CHECKPOINTS``); with
    it every checkpoint becomes that file. IP-Adapter and CLIP vision files keep their canonical names:
    the fixture tree has them.
    """
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            name = inputs["ckpt_name"]
            if checkpoint_name is None and name not in TINY_CHECKPOINTS:
                raise KeyError(f"node {node_id} loads checkpoint {name!r}, which has no tiny stand-in; "
                               f"known: {', '.join(TINY_CHECKPOINTS)}")
            inputs["ckpt_name"] = checkpoint_name or TINY_CHECKPOINTS[name]
        elif node["class_type"] == "EmptyLatentImage":
            inputs.update(width=size, height=size)
        elif node["class_type"] in ("KSampler", "KSamplerAdvanced") and isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], steps)
        elif node["class_type"] == "IPAdapterTrain":  # a few training steps at the tiny size
            inputs.update(steps=min(inputs["steps"], steps), resolution=size)
    return prompt
