"""Smoke test of the real ComfyUI server (main.py subprocess, loopback HTTP) with this pack installed."""
import re
import sys
import time

import pytest
from PIL import Image

from harness import executor, runtime, server

START_TIMEOUT = 60.0
PROMPT_TIMEOUT = 45.0


@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory, models_dir):
    base = server.prepare_server_base(tmp_path_factory.mktemp("server-base"))
    srv = server.ComfyServer.start(base, timeout=START_TIMEOUT)
    try:
        yield srv
    finally:
        srv.shutdown()


def _pack_import_lines(log: str) -> list[str]:
    # Newer ComfyUI prefixes log lines (a coloured "[INFO]"); only the line's end is compared.
    pattern = re.compile(r"^.*?(?<![\d.])[\d.]+ seconds(?: \(IMPORT FAILED\))?: .*custom_nodes/" + re.escape(runtime.PACK_NAME) + r"\s*$", re.M)
    return pattern.findall(log)


def test_server_runs_the_pack_and_the_plain_workflow(comfy_server):
    started = time.monotonic()
    srv = comfy_server
    assert srv.url.startswith("http://127.0.0.1:")
    assert srv.get_json("/system_stats")["system"]["comfyui_version"]

    log = srv.log_text()
    lines = _pack_import_lines(log)
    assert len(lines) == 1, f"pack not in the custom-node import list:\n{srv.log_tail()}"
    assert "IMPORT FAILED" not in lines[0], lines[0]
    assert not re.search(r"IMPORT FAILED.*" + re.escape(runtime.PACK_NAME), log)
    tree_yaml = runtime.locate_comfyui()[0] / "extra_model_paths.yaml"
    if tree_yaml.is_file():  # the horde tree ships one that would make main.py fail: the launcher keeps it out
        assert "test launcher: not loading" in log

    info = srv.object_info()
    assert "CheckpointLoaderSimple" in info and "KSampler" in info
    # Every node the pack declares (none while NODE_CLASS_MAPPINGS is empty; tightens as nodes land).
    pack = sys.modules[runtime.PACK_NAME]
    missing = sorted(set(pack.NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"pack nodes missing from /object_info: {missing}"
    ckpts = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "tiny_sd15.safetensors" in ckpts

    entry = srv.run_prompt(executor.workflow_plain_sd15(seed=21, steps=2, filename_prefix="server/plain"),
                           timeout=PROMPT_TIMEOUT)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"]["7"]["images"]
    assert len(images) == 1 and images[0]["type"] == "output"
    path = srv.base / "output" / images[0]["subfolder"] / images[0]["filename"]
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (64, 64)

    with pytest.raises(server.PromptRejected) as rejected:
        srv.queue_prompt(executor.workflow_plain_sd15(ckpt_name="no_such_model.safetensors"))
    assert rejected.value.status == 400 and "1" in rejected.value.node_errors
    assert time.monotonic() - started < PROMPT_TIMEOUT + 30


def test_shutdown_stops_the_process(comfy_server):
    rc = comfy_server.shutdown(timeout=10)
    assert rc is not None and comfy_server.proc.poll() is not None
