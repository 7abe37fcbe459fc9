"""Imports flow one way: no module of d2v's packages imports itself back through others
(function-level imports count), and no ``_private`` name is imported from another module.

The graph is read with ``ast`` from the source files, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("d2v_common", "d2v_torch", "d2v_tf", "crosscheck")


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``PACKAGES``."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """``({module: modules it imports, anywhere in its body}, [private imports as text])``."""
    edges: dict[str, set[str]] = {}
    private: list[str] = []
    for module, path in MODULES.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in MODULES)
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, node)
                for alias in node.names:
                    if f"{source}.{alias.name}" in MODULES:  # from package import submodule
                        targets.add(f"{source}.{alias.name}")
                    elif source in MODULES:
                        targets.add(source)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append(f"{module} imports {alias.name} from {source}")
        targets.discard(module)
        edges[module] = targets
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _describe(component: list[str], edges: dict[str, set[str]]) -> str:
    inside = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(edges[m] & inside))}" for m in component)


def test_every_package_is_scanned():
    for package in PACKAGES:
        assert package in MODULES, package
    assert len(MODULES) > 40  # the scan found the modules, not an empty tree


def test_no_import_cycles():
    edges, _ = import_graph()
    found = cycles(edges)
    assert found == [], "import cycles: " + " | ".join(_describe(c, edges) for c in found)


def test_no_private_names_imported_across_modules():
    _, private = import_graph()
    assert private == [], "\n".join(private)


@pytest.mark.parametrize(
    "sources, expected_cycles, expected_private",
    [
        # a function-level import closes a cycle just as a top-level one does
        ({"pkg/a.py": "from pkg import b\n", "pkg/b.py": "def f():\n    from pkg.a import x\n"}, 1, 0),
        ({"pkg/a.py": "from pkg import b\n", "pkg/b.py": "from pkg.c import _hidden\n", "pkg/c.py": ""}, 0, 1),
        ({"pkg/a.py": "from . import b\n", "pkg/b.py": "from .a import y\n"}, 1, 0),
        ({"pkg/a.py": "import pkg.b\n", "pkg/b.py": "x = 1\n"}, 0, 0),
    ],
)
def test_the_checker_finds_what_it_looks_for(tmp_path, monkeypatch, sources, expected_cycles, expected_private):
    for name, text in {"pkg/__init__.py": "", **sources}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = {}
    for path in sorted((tmp_path / "pkg").rglob("*.py")):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    monkeypatch.setattr(f"{__name__}.MODULES", modules)
    edges, private = import_graph()
    assert len(cycles(edges)) == expected_cycles
    assert len(private) == expected_private


def test_library_imports_no_test_oracle_or_tf_keras():
    """d2v's own packages never import transformers, tf_keras or crosscheck (the oracle and
    the parity table sit on top of the library, not under it)."""
    bad = []
    for module, path in MODULES.items():
        if module.startswith("crosscheck"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{module}: {n}" for n in names if n.split(".")[0] in ("transformers", "tf_keras", "crosscheck")]
    assert bad == [], bad
