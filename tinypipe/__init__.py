"""tinypipe: fine-tune diffusion and causal-LM models and ship each result as a self-describing repo.

The names below are imported on first use (PEP 562), so `import tinypipe` - and the `tinypipe` command's
`--help` - does not pay for importing torch.
"""

import importlib
from collections.abc import Callable
from pathlib import Path

from .lazy_names import lazy_names
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


def _register_builtin_models() -> None:
    """Let `AutoModelPipeline.from_pretrained(cache, "tinypipe/tiny-sd")` load a built-in model before the model
    pipelines are imported: each built-in model name gets a writer that imports the pipeline of its kind on first
    use (that import registers the name's own writer, which then saves the repo)."""
    from .builtin import builtin_names
    from .config.hub import builtin_repo_writer, register_builtin_repo

    def import_then_write(name: str, module: str) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            importlib.import_module(module, __name__)
            builtin_repo_writer(name)(folder)

        return write

    for kind, module in (("diffusion", ".models.diffusion"), ("causal-lm", ".models.causal_lm")):
        for name in builtin_names(kind):
            if builtin_repo_writer(name) is None:
                register_builtin_repo(name, import_then_write(name, module))


def _before(name: str) -> None:
    if name in ("AutoModelPipeline", "AutoTrainerPipeline"):
        _register_builtin_models()


__getattr__, __dir__ = lazy_names(__name__, _MODULE_OF, before=_before)
