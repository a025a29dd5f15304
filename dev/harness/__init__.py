"""Development tooling shared by the tests and the scripts in ``dev/``: runtime boot, fixture models,
synthetic checkpoints, workflow execution. Never imported by the pack itself.

``dev/`` (not the repository root) is what goes on ``sys.path``: the repository's own ``nodes.py``
must never shadow ComfyUI's ``nodes`` module.
"""
from pathlib import Path

DEV_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = DEV_DIR.parent
