"""ComfyUI entry point: ComfyUI imports this package from custom_nodes/ and reads the mappings.

With ComfyUI_IPAdapter_plus also installed, no node is registered (see node_defs/coexist.py): the two packs share
node names, and all of one pack is better than a load-order-dependent mix of both.
"""
import os

from .node_defs.coexist import custom_nodes_dirs, should_register

if should_register(custom_nodes_dirs(), own_dir=os.path.dirname(os.path.abspath(__file__))):
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    WEB_DIRECTORY = "./web"  # the layer weights editor (plain JavaScript, loaded by the frontend)
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
    WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
