"""The package's layers: every import (at the top of a file or inside a function) and every dotted
`"tinypipe.<module>"` string points down the layers, and no module imports itself round a circle.

The layers, lowest first (README, "Layout"):
errors < files < config < builtin < data < families < models < training < trainers < the app (cli, runner, jobs, ...).
A module may import its own layer's modules and any lower layer's, never a higher one's.
"""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tinypipe"

LAYERS = ["errors", "lazy_names", "library_output", "version", "files", "config", "builtin", "data", "families", "models", "training", "trainers", "app"]
APP_MODULES = {"cli", "cli_arguments", "cli_lm", "cli_repos", "cli_export", "cli_jobs", "cli_builtin", "runner", "jobs",
               "archive", "publish", "derive", "demo", "export", "__main__", "cli_ui", "ui"}
DOTTED = re.compile(r"\btinypipe((?:\.\w+)+)")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """The layer index of a module `tinypipe.<top>...`; the package root itself is the public API, above all."""
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)
    top = parts[1]
    return LAYERS.index("app") if top in APP_MODULES else LAYERS.index(top)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def _edges(path: Path) -> set[str]:
    """The tinypipe modules `path` imports or names in a string (docstrings left out)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstring_nodes(tree)
    edges = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tinypipe":
                continue
            for alias in node.names:  # `from . import module` names a module
                candidate = f"{target}.{alias.name}"
                edges.add(candidate if _is_module(candidate) else target)
        elif isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names if alias.name.split(".")[0] == "tinypipe")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for match in DOTTED.finditer(node.value):
                target = _longest_module("tinypipe" + match.group(1))
                if target:
                    edges.add(target)
    edges.discard(module)
    return edges


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def _longest_module(dotted: str) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):
        if _is_module(".".join(parts[:end])):
            return ".".join(parts[:end])
    return None


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _edges(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_down_the_layers():
    upward = [f"{module} -> {target}" for module, targets in _graph().items() for target in sorted(targets)
              if _layer(target) > _layer(module)]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_module_imports_round_a_circle():
    graph = _graph()
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target not in graph or target == "tinypipe":  # the root re-exports; an edge to it is upward
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state and module != "tinypipe":  # the root re-exports the public API
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_file_is_over_500_lines():
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert not {name: lines for name, lines in sizes.items() if lines > 500}
