"""tinypipe: fine-tune diffusion and causal-LM models and ship each result as a self-describing repo.

The names below are imported on first use (PEP 562), so `import tinypipe` - and the `tinypipe` command's
`--help` - does not pay for importing torch.
"""

import importlib
from typing import Any

from .version import __version__  # noqa: F401  (public)

_CONFIG_NAMES = (
    "AutoModelPipeline",
    "AutoTrainerPipeline",
    "BaseArgsFromConfig",
    "ConfigMixin",
    "FromConfig",
    "Ignore",
    "SubFolder",
    "TrainerConfigMixin",
    "copy_signature",
    "save_config",
    "set_from_config",
    "wrap_config_mixin",
)
_ERROR_NAMES = ("ConfigError", "DataError", "RepoError", "TinypipeError", "TrainingError", "TrustRemoteCodeError")
_MODULE_OF = {**{name: ".config" for name in _CONFIG_NAMES}, **{name: ".errors" for name in _ERROR_NAMES}}

__all__ = sorted([*_MODULE_OF, "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'tinypipe' has no attribute {name!r}")
    if name in ("AutoModelPipeline", "AutoTrainerPipeline"):
        importlib.import_module(".models", __name__)  # registers the built-in names (tinypipe/tiny-sd, ...) they load
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
