"""ComfyUI node classes: parse inputs, call the ipadapter library, return outputs."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
