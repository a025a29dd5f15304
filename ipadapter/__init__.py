"""IP-Adapter library: checkpoints, projection models, layer maps, weights, encoding and the attention patch.

Nothing here imports node classes; ``nodes.py`` is the thin ComfyUI layer on top.
"""
