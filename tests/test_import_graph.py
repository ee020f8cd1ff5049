"""The shape of the package, read from the source with ``ast`` (nothing imported).

Imports point one way (no cycle, counting imports inside functions: a lazy import hides a cycle from Python,
not from a reader), no module reaches into another's private names, and files and functions stay short
enough to read.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "biossl"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80  # body lines, docstring excluded


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement in ``module`` reads from."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package.pop()
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, name taken from it or None) for every import of a biossl module in ``module``."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, alias.name))
                elif source in MODULES:
                    found.append((source, alias.name))
    return [(target, name) for target, name in found if target != module]


def _is_reexport(module: str, target: str) -> bool:
    """A package's ``__init__`` exposing its own parts is not a dependency between those parts."""
    return MODULES[module].name == "__init__.py" and target.startswith(module + ".")


def _cycles() -> list[list[str]]:
    graph = {m: sorted({t for t, _ in _imports(m) if not _is_reexport(m, t)}) for m in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            walk(module, [module])
    return cycles


def test_no_import_cycles():
    assert _cycles() == [], "import cycles: " + "; ".join(" -> ".join(c) for c in _cycles())


def test_no_private_names_across_modules():
    leaks = [
        f"{module} imports {name} from {target}"
        for module in MODULES
        for target, name in _imports(module)
        if name and name.startswith("_") and not name.startswith("__") and not _is_reexport(module, target)
    ]
    assert leaks == []


def test_the_checks_see_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    """The two checks above would fail on a package that has either problem."""
    pkg = tmp_path / "biossl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from .a import f\nfrom .a import _hidden\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", pkg)
    monkeypatch.setattr(this, "MODULES", _modules())
    assert _cycles() == [["biossl.a", "biossl.b", "biossl.a"]]
    with pytest.raises(AssertionError, match=r"biossl\.b imports _hidden from biossl\.a"):
        test_no_private_names_across_modules()


def _function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                length -= first.end_lineno - first.lineno + 1
            yield node.name, node.lineno, length


def test_files_and_functions_stay_short():
    long_files = [f"{p.name}: {n}" for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    long_functions = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({n} lines)"
        for path in MODULES.values()
        for name, line, n in _function_lengths(path)
        if n > MAX_FUNCTION_LINES
    ]
    assert long_files == [] and long_functions == []
