"""Boots the real ComfyUI runtime once per test session and loads this pack through ComfyUI's own loader.

Tests import the library as ``ipadapter_next.ipadapter`` (the module name ComfyUI gives the pack), so
there is a single copy of every class whether a test calls the library or runs a workflow.
"""
import tempfile
import time
from pathlib import Path

SESSION_START = time.time()

# `harness` comes from dev/ (pytest's `pythonpath` setting in pyproject.toml); the repository root is
# never on sys.path, so the pack's nodes.py cannot shadow ComfyUI's `nodes` module.
from harness import runtime  # noqa: E402

BASE_DIRECTORY = Path(tempfile.mkdtemp(prefix="ipadapter-next-comfy-"))
RUNTIME = runtime.boot(BASE_DIRECTORY)
runtime.init_nodes(load_pack=True)


def pytest_report_header(config):
    return [f"runtime: {RUNTIME.describe()}", f"base directory: {RUNTIME.base_directory}"]


# --- Tiny fixture models (harness.tiny_models / harness.model_tree) ------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The runtime's ``models/`` folder filled with the cached tiny fixture files, loaders registered."""
    from harness import model_tree, tiny_models

    tiny_models.register_all()
    models = RUNTIME.base_directory / "models"
    model_tree.build_models_dir(models)
    return models


@pytest.fixture(scope="session")
def fixture_files(models_dir):
    """``harness.model_tree.FixturePaths`` for ``models_dir``."""
    from harness import model_tree

    return model_tree.fixture_paths(models_dir)


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's tiny-model compute on one thread: on a small shared CPU, the second OpenMP thread
    mostly spins (measured: the plain SD1.5 workflow 0.5 s on one thread, 4.8 s on two, 2 busy cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
