"""The config core: objects that record how they were built, and the repo format they save to."""

from .annotations import FromConfig, Ignore, SubFolder
from .auto import AutoModelPipeline, AutoTrainerPipeline
from .mixin import ConfigMixin, save_config, wrap_config_mixin
from .trainer import BaseArgsFromConfig, TrainerConfigMixin, copy_signature, set_from_config

__all__ = [
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
]
