"""The test session runs against a real ComfyUI, with this pack loaded by ComfyUI's own loader."""
import sys

import folder_paths
import nodes

from harness import runtime


def test_runtime_is_real_comfyui_with_a_throwaway_base_directory():
    rt = runtime.boot(None)  # already booted by conftest; returns the same runtime
    assert rt.version != "unknown"
    assert (rt.path / "comfy" / "model_patcher.py").is_file()
    # Every folder ComfyUI writes to lives under the throw-away base, never in the runtime's tree.
    assert folder_paths.base_path == str(rt.base_directory)
    assert folder_paths.get_output_directory().startswith(str(rt.base_directory))


def test_pack_loaded_through_comfyui_custom_node_loader():
    assert runtime.PACK_NAME in sys.modules
    pack = sys.modules[runtime.PACK_NAME]
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert nodes.NODE_CLASS_MAPPINGS[key] is cls
