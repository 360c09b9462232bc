"""The package's layers, as its folders name them: every import (those inside functions too) runs
one way, from a higher layer to a lower one, and no module imports itself back through others.

Lowest first: the foundations (errors, budgets, guarded files); ``modules`` (what a recipe names);
``recipe`` (reading recipes); ``init`` (initialization); ``build`` (tree -> initialized model);
``train`` (parameter groups); ``checkpoint`` (files); ``describe`` (summary, schema, listing,
export, probe); ``app`` (the command line). ``composer/__init__.py`` re-exports the public API
from all of them and is imported by none.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "composer"
LAYERS = ["errors", "limits", "files", "modules", "recipe", "init", "build", "train", "checkpoint", "describe", "app"]
RANK = {name: (0 if name in ("errors", "limits", "files") else LAYERS.index(name)) for name in LAYERS}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path, importer: str) -> set[str]:
    """Every module of composer that ``path`` imports, at any depth of its code, except under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(importer.split(".")[: -node.level] + [node.module])
            names.update([base, *(f"{base}.{a.name}" for a in node.names)])
    return {n for n in names if n.startswith("composer.")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def _edges() -> dict[str, set[str]]:
    """Module -> the modules it imports; a name imported from ``composer`` itself that is no module
    (``from composer import build_from_config``) is an import of the public API, ``composer``."""
    modules = _modules()
    edges = {}
    for m, path in modules.items():
        names = _imports(path, m)
        edges[m] = {n for n in names if n in modules and n != m} | {
            "composer" for n in names if n not in modules and n.count(".") == 1
        }
    return edges


def test_every_module_sits_in_a_named_layer():
    stray = [m for m in _modules() if m not in ("composer", "composer.__main__") and _layer(m) is None]
    assert stray == []


def test_imports_run_from_higher_layers_to_lower_ones():
    upward = [
        f"{m} imports {n}"
        for m, targets in _edges().items()
        for n in targets
        if _layer(m) and _layer(n) and RANK[_layer(n)] > RANK[_layer(m)]
    ]
    assert upward == []


def test_nothing_imports_the_public_api_module_and_there_is_no_cycle():
    edges = _edges()
    assert [m for m, targets in edges.items() if "composer" in targets and m != "composer"] == []
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []
