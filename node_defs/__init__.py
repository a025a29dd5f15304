"""Node classes by concern; nodes.py is the registry ComfyUI reads."""
