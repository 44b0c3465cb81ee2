"""The package's architecture, read from its imports: layers only import downward, nothing imports in
a circle, and no module grows past 400 lines.

Self-contained on purpose (``ast`` over ``src/densekd``; nothing is imported), so it runs on a clean
clone. Imports inside functions and under ``TYPE_CHECKING`` count: a circle hidden in a function is
still a circle in the design. A package's ``__init__`` may re-export from anywhere below it; a top-level
package face (``densekd/<pkg>/__init__.py``) is not held to the layer order, as it only re-exports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "densekd"

# bottom first: a package may import only the packages listed before it
LAYERS = ["data", "scores", "eval", "losses", "encoders", "index", "teachers", "mining", "training",
          "pipeline", "cli"]
MAX_LINES = 400



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every ``densekd`` name imported by ``path``: modules, and ``module.name`` for each ``from`` name."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("densekd")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
            if base.startswith("densekd"):
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles a depth-first search meets (one per back edge), each closed on its first node."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif not state.get(nxt):
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])
    return found


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def layer_findings() -> list[str]:
    """Every breach of the layering rules in ``src/densekd``, one line each."""
    files = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}
    findings = []
    for module, path in files.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            findings.append(f"too long: {module} has {lines} lines (> {MAX_LINES})")
    graph = {m: {i for i in _imports(p, m) if i in files and i != m} for m, p in files.items()}
    findings += ["file circle: " + " -> ".join(c) for c in _cycles(graph)]
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        source = _package(module)
        if source and source not in LAYERS:
            findings.append(f"unlisted package: densekd.{source} is not in LAYERS")
        if files[module].name == "__init__.py" and module.count(".") < 2:
            continue  # a package face may re-export from anywhere
        for dep in deps:
            target = _package(dep)
            if not (source and target) or source == target:
                continue
            packages.setdefault(source, set()).add(target)
            if source in LAYERS and target in LAYERS and LAYERS.index(target) > LAYERS.index(source):
                findings.append(f"upward import: {module} ({source}) imports {dep} ({target})")
    findings += ["package circle: " + " -> ".join(c) for c in _cycles(packages)]
    return sorted(set(findings))


@pytest.fixture(scope="module")
def findings() -> list[str]:
    return layer_findings()


def test_source_tree_is_found():
    assert (SRC / "__init__.py").is_file() and (SRC / "scores" / "__init__.py").is_file()


def test_no_layer_findings(findings):
    assert not findings, "layering breaches (see tests/test_layers.py for the rules):\n" + "\n".join(findings)


def test_checks_catch_what_they_should(tmp_path, monkeypatch):
    """The rules on a toy tree: an upward import, a circle through a function-level import, a long file."""
    root = tmp_path / "densekd"
    for pkg in ("data", "losses"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "data" / "a.py").write_text("from densekd.losses.b import x\n")
    (root / "losses" / "b.py").write_text("def f():\n    from densekd.data import a\n" + "\n" * MAX_LINES)
    monkeypatch.setitem(globals(), "SRC", root)
    found = layer_findings()
    assert "upward import: densekd.data.a (data) imports densekd.losses.b (losses)" in found
    assert "file circle: densekd.data.a -> densekd.losses.b -> densekd.data.a" in found
    assert "package circle: data -> losses -> data" in found
    assert any(f.startswith("too long: densekd.losses.b") for f in found)
