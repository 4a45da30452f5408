"""The import rule of the README's module map: imports go one way, and no module is part of a
cycle. Read from the source (every import statement, function-level ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "titan_phases"

LAYERS = (
    ("titan_phases", "titan_phases.runtime", "titan_phases.data", "titan_phases.config",
     "titan_phases.patches"),
    ("titan_phases.schedule",),
    ("titan_phases.components",),
    ("titan_phases.plan",),
    ("titan_phases.train_spec",),
    ("titan_phases.trainer",),
    ("titan_phases.train", "titan_phases.prepare"),
    ("titan_phases.interop",),
    ("titan_phases.cli",),
)
"""Bottom first: a module may import its own layer and the layers below it."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The titan_phases modules ``path`` imports. ``from package import module`` depends on the
    module, not on the package's ``__init__``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
    return found & modules


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = _imports(path, set(modules)) - {name}
    return graph


def _layer(module: str) -> int:
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > depth:
                best, depth = index, len(prefix)
    assert best is not None, f"{module} is in no layer of the import rule"
    return best


def test_every_module_imports_only_its_own_layer_and_below():
    upward = [
        f"{module} imports {imported}"
        for module, imported_modules in sorted(_graph().items())
        for imported in sorted(imported_modules)
        if _layer(imported) > _layer(module)
    ]
    assert upward == []


def test_no_module_is_part_of_an_import_cycle():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycles.append(" -> ".join([*path[path.index(imported):], imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_rule_sees_a_violation():
    # A module of the bottom layer importing the trainer would be reported.
    assert _layer("titan_phases.trainer") > _layer("titan_phases.runtime.cpu")
    assert "titan_phases.components.checkpointing.format" in _graph()[
        "titan_phases.components.optimizer"
    ]
