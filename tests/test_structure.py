"""The house rules a newcomer relies on: the library stands alone and nothing imports in a circle."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("ipadapter", "node_defs")


def _modules() -> dict[str, Path]:
    return {f"{pkg}.{f.stem}": f for pkg in PACKAGES for f in sorted((REPO / pkg).glob("*.py"))}


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of the pack that ``module`` imports (relative imports, at any depth of the file)."""
    pkg = module.split(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = (node.module or "") if node.level == 2 else ".".join(filter(None, (pkg, node.module)))
            for candidate in (target, *(f"{target}.{a.name}" for a in node.names)):
                if candidate in known and candidate != module:
                    found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_the_pack_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_library_imports_no_node_class_and_names_no_test_tooling():
    graph = import_graph()
    assert not [(m, t) for m, ts in graph.items() if m.startswith("ipadapter.") for t in ts if t.startswith("node_defs.")]
    for path in (REPO / "ipadapter").glob("*.py"):
        text = path.read_text()
        assert "harness" not in text and "tests/" not in text, f"{path.name} names the test tooling"


def test_development_tooling_stays_out_of_the_pack_root():
    shipped = {p.name for p in REPO.iterdir() if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    assert shipped == {"__init__.py", "nodes.py", "ipadapter", "node_defs"}
