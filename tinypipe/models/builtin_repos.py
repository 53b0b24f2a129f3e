"""How the built-in FLUX.1 and SD3 models are saved as tinypipe repos (what `from_pretrained(cache, name)` loads).

`tinypipe/tiny-sd`'s writer is registered beside `DiffusionPipeline` (`models.diffusion`); the other families' tiny
models are written the same way, by loading them in `DiffusionPipeline`, which picks their family's diffusers
pipeline class from their `model_index.json`.
"""

from pathlib import Path

from ..builtin import TINY_FLUX, TINY_FLUX_SCHNELL, TINY_SD3
from ..config.hub import register_builtin_repo
from .diffusion import DiffusionPipeline

__all__ = ["write_family_builtin_repo"]


def write_family_builtin_repo(folder: Path, name: str) -> None:
    """Save the built-in model `name` (`tinypipe/tiny-flux`, ...) as a tinypipe repo in `folder`."""
    DiffusionPipeline(name).save_pretrained(folder)


register_builtin_repo(TINY_FLUX, lambda folder: write_family_builtin_repo(folder, TINY_FLUX))
register_builtin_repo(TINY_FLUX_SCHNELL, lambda folder: write_family_builtin_repo(folder, TINY_FLUX_SCHNELL))
register_builtin_repo(TINY_SD3, lambda folder: write_family_builtin_repo(folder, TINY_SD3))
