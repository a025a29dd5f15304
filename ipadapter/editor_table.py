"""What the layer weights editor (web/layer_weights.js) draws, as plain data: every architecture's layers (name,
transformer index, section, transformer blocks) and every weight type as a preset (its weight per
transformer index at weight 1). dev/make_web_table.py writes it to web/layer_table.json, which the editor
loads; a test checks the file is what this gives now."""
from __future__ import annotations

from .layers import ARCH_NAMES, ARCHITECTURES, layer_map
from .weights import WEIGHT_TYPES, layer_names, resolve_layer_weights


def _layers(arch: str) -> list[dict]:
    depth: dict[int, int] = {}
    section: dict[int, str] = {}
    for site in layer_map(arch):
        depth[site.transformer_index] = depth.get(site.transformer_index, 0) + 1
        section[site.transformer_index] = site.block
    return [{"name": name, "index": t, "section": section[t], "blocks": depth[t]}
            for name, t in layer_names(arch).items()]


def _preset(arch: str, weight_type: str) -> dict[str, float]:
    """{transformer index: weight} of ``weight_type`` at weight 1 (every block of a layer weighs the same)."""
    by_key = {site.key: site.transformer_index for site in layer_map(arch)}
    out: dict[str, float] = {}
    for key, layer in resolve_layer_weights(arch, weight_type, 1.0).items():
        out[str(by_key[key])] = round(float(layer.weight), 4)
    return out


def layer_table() -> dict:
    return {arch: {"label": ARCH_NAMES[arch], "layers": _layers(arch),
                   "presets": {wt: _preset(arch, wt) for wt in WEIGHT_TYPES}}
            for arch in ARCHITECTURES}
