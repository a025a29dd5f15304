"""web/layer_table.json, what the layer weights editor draws, is the library's layer maps and weight types."""
from __future__ import annotations

import json
from pathlib import Path

from ipadapter_next.ipadapter.editor_table import layer_table
from ipadapter_next.ipadapter.layers import layer_map, transformer_count
from ipadapter_next.ipadapter.weights import WEIGHT_TYPES, parse_layer_weights, resolve_layer_weights

TABLE = Path(__file__).resolve().parent.parent / "web" / "layer_table.json"


def test_the_shipped_table_is_what_the_library_gives_now():
    assert json.loads(TABLE.read_text()) == layer_table(), "run dev/make_web_table.py"


def test_every_layer_and_block_of_both_unets_is_in_the_table():
    table = layer_table()
    for arch in ("sd15", "sdxl"):
        layers = table[arch]["layers"]
        assert [layer["index"] for layer in layers] == list(range(transformer_count(arch)))
        assert sum(layer["blocks"] for layer in layers) == len(layer_map(arch))  # 16 and 70 sites
        assert set(table[arch]["presets"]) == set(WEIGHT_TYPES)


def test_a_preset_written_as_text_gives_the_weight_types_own_weights():
    """What the editor writes for a preset (index:value of its non-zero layers) resolves, through the
    node's parser, to the weight type's weights (the precise types' token swaps aside)."""
    for arch in ("sd15", "sdxl"):
        for name, preset in layer_table()[arch]["presets"].items():
            text = ", ".join(f"{t}:{v}" for t, v in preset.items())
            from_text = resolve_layer_weights(arch, layer_weights=parse_layer_weights(text, arch))
            direct = resolve_layer_weights(arch, name, 1.0)
            assert {k: round(float(w.weight), 4) for k, w in from_text.items()} == \
                   {k: round(float(w.weight), 4) for k, w in direct.items()}, (arch, name)
