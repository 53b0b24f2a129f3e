"""The diffusers folder of any built-in diffusion model, each built by its own module.

```python
from tinypipe.builtin.diffusion_folders import builtin_diffusion_folder

builtin_diffusion_folder("tinypipe/tiny-sdxl")   # a folder StableDiffusionXLPipeline.from_pretrained reads
```
"""

import importlib
from pathlib import Path

from ..errors import ConfigError
from . import TINY_FLUX, TINY_FLUX_SCHNELL, TINY_SD, TINY_SD3, TINY_SDXL, builtin_names

__all__ = ["builtin_diffusion_folder", "BUILDERS"]

BUILDERS = {
    TINY_SD: ("tiny_sd", "builtin_model_folder"),
    TINY_SDXL: ("tiny_sdxl", "builtin_sdxl_folder"),
    TINY_FLUX: ("tiny_flux", "builtin_flux_folder"),
    TINY_FLUX_SCHNELL: ("tiny_flux", "builtin_flux_folder"),
    TINY_SD3: ("tiny_sd3", "builtin_sd3_folder"),
}
"""Each built-in diffusion model name -> (module of this package, its function `(name) -> folder`)."""


def builtin_diffusion_folder(name: str) -> Path:
    """Save the built-in diffusion model `name` once as a diffusers folder (cached) and return the folder.

    Raises:
        ConfigError: `name` is not a built-in diffusion model; the message lists them.
    """
    if name not in BUILDERS:
        raise ConfigError(f"{name!r} is not a built-in model; the built-in models are {builtin_names('diffusion')}. "
                          "Use one of those.")
    module, function = BUILDERS[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)(name)
