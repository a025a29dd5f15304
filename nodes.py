"""ComfyUI node registry: the node classes live in node_defs/, one module per ComfyUI category.

Class keys, input names, order, types, defaults and outputs follow ComfyUI_IPAdapter_plus 2.0.0 so
saved workflows load unchanged; inputs added here come last and are optional.
"""
from __future__ import annotations

from .ipadapter.paths import register_model_folders
from .node_defs.example_inputs import install_example_inputs
from .node_defs import apply, curves, embeds, faceid, fooocus, layer_tools, loaders, training, utils, weights_params

register_model_folders()
install_example_inputs()

_MODULES = (apply, embeds, weights_params, loaders, faceid, utils, fooocus, curves, layer_tools, training)
NODE_CLASS_MAPPINGS: dict[str, type] = {key: cls for m in _MODULES for key, (cls, _) in m.NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {key: name for m in _MODULES for key, (_, name) in m.NODES.items()}
