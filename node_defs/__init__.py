"""Node classes, one module per ComfyUI category (specs.py: the input specs; registry.py: keys and names);
nodes.py is the registry ComfyUI reads."""
