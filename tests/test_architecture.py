"""Specification of the package's layering: imports go one way, and there is no import cycle.

Every `import` of a `trl_perception` module counts, at module level or inside a function: a function-level import
that dodges a cycle is still a cycle. Layers, from the bottom: boxes → frames → formats, matching → data,
rewards, metrics → trainer, evaluation, callbacks, hub → scripts, demo → cli. `viz` (pictures) sits below the data
builders; `testing` (tiny offline models) above them.
"""

import ast
import functools
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "trl_perception"

LAYERS: dict[str, int] = {
    "_json": 0,
    "boxes": 0,
    "frames": 1,
    "formats": 2,
    "matching": 2,
    "viz": 3,
    "testing": 5,
    "data": 4,
    "crop": 4,
    "rewards": 4,
    "metrics": 4,
    "vllm": 5,
    "trainer": 6,
    "evaluation": 6,
    "callbacks": 6,
    "hub": 6,
    "scripts": 7,
    "demo": 7,
    "cli": 8,
    "__init__": 0,  # the package root holds `__version__` and resolves its top-level names lazily
}
"""The layer of each top-level module or subpackage; a module may import its own layer or lower ones."""

EXCEPTIONS: dict[tuple[str, str], str] = {
    ("trainer", "callbacks"): "the trainer hands itself to PerceptionEvalCallback",
    ("callbacks", "evaluation"): "the callback runs the evaluation",
    ("evaluation", "metrics"): "evaluation scores with the pure metrics",
}
"""Same-layer imports that are allowed, with the reason (same layer is allowed anyway; listed for the reader)."""


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Fully qualified `trl_perception` modules that `path` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("trl_perception")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("trl_perception"):
                continue
            for alias in node.names:  # `from . import metrics` imports the module, not a name of the package
                candidate = f"{target}.{alias.name}"
                path = PACKAGE.parent / candidate.replace(".", "/")
                found.add(candidate if path.with_suffix(".py").exists() or (path / "__init__.py").exists() else target)
    found.discard(name)
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    assert top in LAYERS, f"{module}: add its top-level name to LAYERS in tests/test_architecture.py"
    return LAYERS[top]


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_go_down_the_layers(module):
    upward = [
        target
        for target in graph()[module]
        if target in graph() and layer_of(target) > layer_of(module)
    ]
    assert not upward, f"{module} (layer {layer_of(module)}) imports higher layers: {upward}"


def test_there_is_no_import_cycle():
    edges = graph()
    # a package imports its __init__ when any of its modules is imported: count `pkg.mod -> pkg` edges too
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in edges:
                continue
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
