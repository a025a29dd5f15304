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


def test_comfyui_path_overrides_the_bundled_runtime(monkeypatch, tmp_path):
    bundled = runtime.boot(None).path
    monkeypatch.setenv("COMFYUI_PATH", str(bundled))
    assert runtime.locate_comfyui() == (bundled.resolve(), "COMFYUI_PATH")
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    try:
        runtime.locate_comfyui()
    except RuntimeError as err:
        assert "is not a ComfyUI checkout" in str(err) and str(tmp_path) in str(err)
    else:
        raise AssertionError("a folder without ComfyUI was accepted")


def test_the_runtime_tree_is_not_written_to():
    """Nothing in ComfyUI's own tree changed since this session started (bytecode caching is off and
    every folder ComfyUI writes lives under the throw-away base directory)."""
    import conftest

    rt = runtime.boot(None)
    changed = [p for p in rt.path.rglob("*") if p.stat().st_mtime > conftest.SESSION_START]
    assert changed == []
