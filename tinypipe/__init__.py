"""tinypipe: fine-tune diffusion and causal-LM models and ship each result as a self-describing repo."""

__version__ = "0.1.0"

from .config import (  # noqa: E402  (the version is read by the config core)
    AutoModelPipeline,
    AutoTrainerPipeline,
    BaseArgsFromConfig,
    ConfigMixin,
    FromConfig,
    Ignore,
    SubFolder,
    TrainerConfigMixin,
    copy_signature,
    save_config,
    set_from_config,
    wrap_config_mixin,
)
from .errors import ConfigError, DataError, RepoError, TinypipeError, TrainingError, TrustRemoteCodeError  # noqa: E402

__all__ = [
    "AutoModelPipeline",
    "AutoTrainerPipeline",
    "BaseArgsFromConfig",
    "ConfigError",
    "ConfigMixin",
    "DataError",
    "FromConfig",
    "Ignore",
    "RepoError",
    "SubFolder",
    "TinypipeError",
    "TrainingError",
    "TrainerConfigMixin",
    "TrustRemoteCodeError",
    "__version__",
    "copy_signature",
    "save_config",
    "set_from_config",
    "wrap_config_mixin",
]
