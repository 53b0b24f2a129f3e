"""What the package imports is what it declares: every third-party package imported anywhere in `tinypipe/` (also
inside functions) is a dependency or an extra of `pyproject.toml`, so a fresh install never fails on an import."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tinypipe"


def _imported_top_level_names() -> dict[str, str]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found = [node.module]
            else:
                continue
            for name in found:
                top = name.split(".")[0]
                if top != "tinypipe" and top not in sys.stdlib_module_names:
                    names.setdefault(top, str(path.relative_to(PACKAGE.parent)))
    return names


def _declared_distributions() -> set[str]:
    requirements = importlib.metadata.requires("tinypipe") or []
    return {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in requirements}


def test_every_third_party_import_is_declared():
    declared = _declared_distributions()
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for name, where in _imported_top_level_names().items():
        distributions = {distribution.lower().replace("_", "-") for distribution in providers.get(name, [name])}
        if not distributions & declared:
            undeclared[name] = where
    assert not undeclared, f"imported but not declared in pyproject.toml (module: first file): {undeclared}"
