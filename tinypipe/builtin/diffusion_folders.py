"""The diffusers folder of any built-in diffusion model, each built by its own module.

```python
from tinypipe.builtin.diffusion_folders import builtin_diffusion_folder

builtin_diffusion_folder("tinypipe/tiny-sdxl")   # a folder StableDiffusionXLPipeline.from_pretrained reads
```
"""

from pathlib import Path

from ..errors import ConfigError
from . import TINY_SD, TINY_SDXL, builtin_names

__all__ = ["builtin_diffusion_folder"]


def builtin_diffusion_folder(name: str) -> Path:
    """Save the built-in diffusion model `name` once as a diffusers folder (cached) and return the folder.

    Raises:
        ConfigError: `name` is not a built-in diffusion model; the message lists them.
    """
    if name == TINY_SD:
        from .tiny_sd import builtin_model_folder

        return builtin_model_folder(name)
    if name == TINY_SDXL:
        from .tiny_sdxl import builtin_sdxl_folder

        return builtin_sdxl_folder()
    raise ConfigError(f"{name!r} is not a built-in model; the built-in models are {builtin_names('diffusion')}. Use one of those.")
