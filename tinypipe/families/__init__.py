"""Diffusion model families: one module per architecture (see `base.ModelFamily` for the contract).

```python
from tinypipe.families import family_of, family_named

family = family_of("path/to/model_index.json")   # or the `_class_name` itself
family.denoiser, family.text_encoders               # ("unet", ("text_encoder", "text_encoder_2")) for SDXL
```

A family is found from the `_class_name` of a diffusers `model_index.json`; an unknown one is a `ConfigError` that
lists the supported families. This layer sits between `data` and `models`: it imports diffusers and transformers,
never tinypipe's models or trainers.
"""

import importlib
from pathlib import Path
from typing import Union

from ..errors import ConfigError
from ..files import read_json
from .base import METHODS, ModelFamily, TrainingObjective

__all__ = ["ModelFamily", "TrainingObjective", "METHODS", "FAMILY_MODULES", "families", "family_named", "family_of"]

FAMILY_MODULES: tuple[str, ...] = ("sd", "sdxl", "flux", "sd3")
"""The modules of this package that each define one family as `FAMILY`, in the order tables list them."""


def families() -> list[ModelFamily]:
    """Every supported family, in `FAMILY_MODULES` order."""
    return [importlib.import_module(f"{__name__}.{module}").FAMILY for module in FAMILY_MODULES]


def family_named(name: str) -> ModelFamily:
    """The family called `name` (`"sd"`, `"sdxl"`, ...).

    Raises:
        ConfigError: No family has that name; the message lists those that do.
    """
    for family in families():
        if family.name == name:
            return family
    raise ConfigError(f"Unknown model family {name!r}; supported families: {_supported()}.")


def family_of(model_index: Union[str, Path]) -> ModelFamily:
    """The family of a diffusers pipeline, from its `model_index.json` path or its `_class_name`.

    Raises:
        ConfigError: The file cannot be read, has no `_class_name`, or names a pipeline class of no supported family.
    """
    class_name = str(model_index)
    if class_name.endswith(".json"):
        class_name = read_json(Path(model_index)).get("_class_name")
        if not isinstance(class_name, str):
            raise ConfigError(f"{model_index} has no '_class_name': it is not a diffusers pipeline folder's model_index.json.")
    for family in families():
        if class_name in family.pipeline_class_names:
            return family
    raise ConfigError(f"The pipeline class {class_name!r} is not a supported model family; tinypipe trains: "
                      f"{_supported()}.")


def _supported() -> str:
    return "; ".join(f"{family.name} ({family.title}: {', '.join(family.pipeline_class_names)})" for family in families())
