"""The house rules of addon/ (DESIGN.md "Layout"), checked on the source with `ast`:

- no import cycle between routecar's modules, counting every import: top level,
  inside functions (lazy), under `if TYPE_CHECKING:` and inside `try:`, and the
  package `__init__` Python runs to import a module of another package;
- relative imports inside the package (the `mitmdump -s` script shim is the one
  file loaded from outside it);
- only `addon/mitm/` imports mitmproxy;
- no module-level `__getattr__` (a lazy re-export hides a cycle);
- no module over 400 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ADDON = Path(__file__).resolve().parents[1] / "addon"
SCRIPT_SHIMS = {"routecar.mitm.addon"}  # loaded by path by mitmdump -s: absolute imports only
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = ["routecar", *path.relative_to(ADDON).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ADDON.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> Iterator[tuple[int, str, bool]]:
    """(line, imported routecar module, written relatively) for every import in module `name`."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "routecar":
                    yield node.lineno, alias.name, False
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif (node.module or "").split(".")[0] == "routecar":
                target = node.module or ""
            else:
                continue
            yield node.lineno, target, bool(node.level)
            for alias in node.names:  # `from .pkg import module` imports a module too
                if f"{target}.{alias.name}" in MODULES:
                    yield node.lineno, f"{target}.{alias.name}", bool(node.level)


def with_packages(importer: str, target: str) -> set[str]:
    """`target` and the packages Python initialises to import it (`a.b.c` runs `a/b/__init__`),
    but not the root package nor the importer's own packages (already being initialised)."""
    parts = target.split(".")
    own = {".".join(importer.split(".")[:n]) for n in range(1, importer.count(".") + 2)}
    found = {target}
    for n in range(2, len(parts)):
        package = ".".join(parts[:n])
        if package not in own:
            found.add(package)
    return found


def graph() -> dict[str, set[str]]:
    return {m: {p for _, t, _ in imports(m) for p in with_packages(m, t) if p in MODULES and p != m}
            for m in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle_through_a_lazy_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_reads_relative_and_type_checking_imports():
    edges = graph()
    assert "routecar.policy" in edges["routecar.engine"]           # from .policy import ...
    assert "routecar.traces.record" in edges["routecar.traces.rows"]  # from .record import ...
    assert "routecar.errors" in edges["routecar.policy.model"]     # from ..errors import ...
    # importing routecar.policy.ops runs routecar/policy/__init__.py first
    assert with_packages("routecar.fields", "routecar.policy.ops") == {"routecar.policy.ops", "routecar.policy"}
    assert with_packages("routecar.policy.model", "routecar.policy.ops") == {"routecar.policy.ops"}


def test_no_import_cycles():
    assert cycles(graph()) == []


@pytest.mark.parametrize("name", sorted(set(MODULES) - SCRIPT_SHIMS))
def test_imports_inside_the_package_are_relative(name):
    absolute = [f"line {line}: {target}" for line, target, relative in imports(name) if not relative]
    assert absolute == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_mitm_imports_mitmproxy(name):
    if name.startswith("routecar.mitm."):
        return
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found = [n.lineno for n in ast.walk(tree)
             if isinstance(n, ast.Import) and any(a.name.split(".")[0] == "mitmproxy" for a in n.names)
             or isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] == "mitmproxy"]
    assert found == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_level_getattr(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    assert [n.lineno for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines: split it"
