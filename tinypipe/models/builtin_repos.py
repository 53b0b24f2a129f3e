"""How each built-in model name is saved as a tinypipe repo, registered without importing any pipeline.

`tinypipe.models` calls `register_builtin_writers()` when it is imported: each built-in model name gets a writer that
imports the pipeline module of its kind on first use (`models.diffusion` or `models.causal_lm`, whose import registers
the name's own writer in its place) and then saves the repo with it. So `tinypipe/tiny-sd` loads wherever a hub id
does, while a diffusion job never imports the causal-LM stack, nor a causal-LM job diffusers.
"""

import importlib
from collections.abc import Callable
from pathlib import Path

from ..builtin import builtin_names
from ..config.hub import builtin_repo_writer, register_builtin_repo

__all__ = ["PIPELINE_MODULES", "register_builtin_writers"]

PIPELINE_MODULES = {"diffusion": "tinypipe.models.diffusion", "causal-lm": "tinypipe.models.causal_lm"}
"""Built-in model kind -> the pipeline module that registers the writer of each of its names."""


def _import_then_write(name: str, module: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        importlib.import_module(module)  # registers the writer of `name` in place of this one
        builtin_repo_writer(name)(folder)

    return write


def register_builtin_writers() -> None:
    """Register, for every built-in model name, a writer that imports its pipeline first.

    Called once, when `tinypipe.models` is imported, so before any pipeline module (they are in that package) has
    registered its own writers; it replaces the package root's writers (`tinypipe.AutoModelPipeline`'s).
    """
    for kind, module in PIPELINE_MODULES.items():
        for name in builtin_names(kind):
            register_builtin_repo(name, _import_then_write(name, module))
