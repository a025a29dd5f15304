"""The pack installs as users install packs: ``pip install -r requirements.txt`` next to ComfyUI's own.

Every module the pack imports at run time (``ipadapter/``, ``node_defs/``, ``nodes.py``, ``__init__.py``;
module-level and in-function imports alike, read with ``ast``) must be one of:

* the standard library, or the pack itself (relative imports);
* ComfyUI's own code (``comfy``, ``folder_paths``, ``node_helpers``, ...: modules of the running ComfyUI tree);
* a distribution in ComfyUI's requirements.txt (taken from the booted ComfyUI; if that tree has none,
  from this repository's mirror ``requirements/comfyui.txt`` + ``requirements/torch.txt``);
* an optional extra of ``pyproject.toml`` (insightface), imported only inside a function, so that the
  pack loads without it;
* listed in the pack's root ``requirements.txt``.

``pyproject.toml``'s ``dependencies`` are the same list as ``requirements.txt``, and neither repeats what
ComfyUI installs.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import REPO_ROOT

# Import names whose distribution is named differently.
DISTRIBUTION = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "google": "protobuf",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "onnxruntime": "onnxruntime",
}
# Distributions that provide the same import as the one named (a user's GPU build counts as installed).
SAME_MODULE = {"onnxruntime-gpu": "onnxruntime", "opencv-python-headless": "opencv-python"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(module: str) -> str:
    return _normalise(DISTRIBUTION.get(module, module))


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name = _normalise(re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0])
        names.add(SAME_MODULE.get(name, name))
    return names


@dataclass(frozen=True)
class Import:
    module: str  # top-level name
    file: str
    line: int
    lazy: bool  # inside a function body


def _pack_files() -> list[Path]:
    files = [*sorted((REPO_ROOT / "ipadapter").rglob("*.py")), *sorted((REPO_ROOT / "node_defs").rglob("*.py"))]
    return files + [REPO_ROOT / name for name in ("nodes.py", "__init__.py") if (REPO_ROOT / name).exists()]


def _imports(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(a.name.split(".")[0], path.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append(Import(child.module.split(".")[0], path.name, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def _comfyui_root() -> Path:
    """The running ComfyUI tree (where its ``folder_paths`` module lives)."""
    import folder_paths

    return Path(folder_paths.__file__).resolve().parent


def _comfyui_requirements() -> tuple[set[str], str]:
    own = _comfyui_root() / "requirements.txt"
    if own.exists():
        return _requirement_names(own), str(own)
    mirror = [REPO_ROOT / "requirements" / "comfyui.txt", REPO_ROOT / "requirements" / "torch.txt"]
    return set().union(*(_requirement_names(p) for p in mirror)), " + ".join(map(str, mirror))


def _is_comfyui_module(module: str) -> bool:
    root = _comfyui_root()
    return (root / f"{module}.py").exists() or (root / module / "__init__.py").exists() or (root / module).is_dir()


@pytest.fixture(scope="module")
def pack_imports() -> list[Import]:
    return [imp for path in _pack_files() for imp in _imports(path)]


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_every_runtime_import_is_installed_with_comfyui_or_the_pack(pack_imports, project):
    comfy_reqs, comfy_source = _comfyui_requirements()
    pack_reqs = _requirement_names(REPO_ROOT / "requirements.txt")
    extras = {_normalise(d) for deps in project.get("optional-dependencies", {}).values() for d in deps}
    problems = []
    for imp in pack_imports:
        module, dist = imp.module, _distribution(imp.module)
        if module in sys.stdlib_module_names or module == "__future__" or _is_comfyui_module(module):
            continue
        if dist in comfy_reqs or dist in pack_reqs:
            continue
        if dist in extras:
            if not imp.lazy:
                problems.append(f"{imp.file}:{imp.line} imports the optional {module} at module level (import it "
                                "inside the function that needs it, so the pack loads without it)")
            continue
        problems.append(f"{imp.file}:{imp.line} imports {module} ({dist}): not in ComfyUI's requirements "
                        f"({comfy_source}), not in requirements.txt, not an optional extra")
    assert not problems, "\n".join(problems)


def test_the_scan_sees_lazy_imports_and_the_face_backend(pack_imports):
    modules = {imp.module for imp in pack_imports}
    assert {"torch", "numpy", "onnxruntime", "insightface", "folder_paths"} <= modules
    assert all(imp.lazy for imp in pack_imports if imp.module == "insightface")
    assert all(imp.lazy for imp in pack_imports if imp.module == "onnxruntime")  # the pack loads without it


def test_requirements_txt_and_pyproject_agree_and_add_nothing_comfyui_installs(project):
    comfy_reqs, comfy_source = _comfyui_requirements()
    pack_reqs = _requirement_names(REPO_ROOT / "requirements.txt")
    assert pack_reqs == {"onnxruntime"}
    assert {_normalise(re.split(r"[\s<>=!~;\[@]", d, maxsplit=1)[0]) for d in project["dependencies"]} == pack_reqs
    assert not pack_reqs & comfy_reqs, f"already installed by ComfyUI ({comfy_source})"
    assert "insightface" in {_normalise(d) for d in project["optional-dependencies"]["faceid"]}
    assert "insightface" not in pack_reqs


def test_import_to_distribution_names():
    assert _distribution("PIL") == "pillow" and _distribution("yaml") == "pyyaml"
    assert _distribution("cv2") == "opencv-python" and _distribution("safetensors") == "safetensors"
    assert _requirement_names(REPO_ROOT / "requirements" / "comfyui.txt") >= {"pillow", "pyyaml", "numpy"}
