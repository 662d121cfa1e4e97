"""The house rules of the tree (docs/architecture.md, "The house"), checked on the code itself.

Lower layers never import higher ones, there are no import circles, importing a
package has no side effects, and no product module grows past 600 lines.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("streams", "store", "connectors", "simulators")
MAX_LINES = 600

# Within streams: a module may import its own layer or a lower one, never a higher one.
LAYERS = {
    "streams.settings": 0, "streams.metrics": 0, "streams.contract": 0, "streams.logs": 0, "streams.costs": 0,
    "streams.app": 1, "streams.faust_fixes": 1,
    "streams.limiter": 2,
    "streams.pipeline": 3,
    "streams.api": 4, "streams.monitoring": 4,
    "streams.worker": 5, "streams.cli": 5,
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Project modules this file imports (`from a.b import c` counts a.b.c when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = list(_module_level(tree.body)) if top_level_only else list(ast.walk(tree))
    known = modules()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PRODUCT)
    return found


def _module_level(body: list[ast.stmt]):
    """Statements run at import, including those under `if TYPE_CHECKING:` and `try:` (not in functions)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body + node.orelse + node.finalbody)


def layer(module: str) -> int | None:
    for prefix, rank in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def test_the_lower_floors_never_import_the_service():
    wrong = {
        name: sorted(i for i in imports(path, top_level_only=False) if i.split(".")[0] == "streams")
        for name, path in modules().items()
        if name.split(".")[0] in ("store", "connectors", "simulators")
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_no_module_of_the_service_imports_a_higher_layer():
    wrong = []
    for name, path in modules().items():
        mine = layer(name)
        if mine is None:
            continue
        for imported in imports(path, top_level_only=False):
            theirs = layer(imported)
            if theirs is not None and theirs > mine:
                wrong.append(f"{name} (layer {mine}) imports {imported} (layer {theirs})")
    assert wrong == []


def test_there_are_no_import_circles():
    graph = {name: {i for i in imports(path, top_level_only=True) if i in modules()} for name, path in modules().items()}
    # a package's own __init__ importing its modules is not a circle with them
    circles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt == node or node.startswith(nxt + ".") and nxt not in stack[:-1]:
                continue
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif state.get(nxt) is None:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if state.get(name) is None:
            visit(name, [])
    assert circles == []


@pytest.mark.parametrize("package", PRODUCT)
def test_no_product_module_is_over_600_lines(package):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_importing_streams_loads_nothing_of_the_project():
    tree = ast.parse((ROOT / "streams" / "__init__.py").read_text(encoding="utf-8"))
    assert imports(ROOT / "streams" / "__init__.py", top_level_only=True) == set()
    assert all(not isinstance(node, (ast.Import, ast.ImportFrom)) or node.module == "typing" for node in tree.body)


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_cli_and_the_lower_floors_load_without_faust():
    for statement in ("import streams", "import streams.cli", "import store.database", "import connectors",
                      "import streams.contract; streams.contract.decode"):
        loaded = _loaded_after(statement)
        assert "faust" not in loaded and "streams.app" not in loaded, statement


def test_faust_finds_the_app_through_the_package():
    loaded = _loaded_after("import streams; streams.app.conf")
    assert {"faust", "streams.worker", "streams.pipeline.generate", "streams.api.intake"} <= loaded
