"""What the libraries tinypipe drives print while it loads and writes models: their progress bars and notices.

```python
from tinypipe.library_output import quiet_libraries

with quiet_libraries("transformers"):          # no "Loading weights" / "Writing model shards" bars
    model.save_pretrained(folder)
```

Under `--log-level DEBUG` (tinypipe's logger at DEBUG) nothing is silenced. Afterwards each library's verbosity and
progress-bar switch are put back as they were, so a program that turned the bars off itself keeps them off.
"""

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_libraries"]

_LOGGING_MODULES = {"transformers": "transformers.utils.logging", "diffusers": "diffusers.utils.logging"}


@contextlib.contextmanager
def quiet_libraries(*libraries: str, notices: bool = True, future_warnings: bool = False) -> Iterator[None]:
    """Silence `libraries`' progress bars (and, with `notices`, their messages below errors) for the block.

    Args:
        *libraries: `"transformers"` and/or `"diffusers"`.
        notices: Also set the libraries' verbosity to errors only.
        future_warnings: Also ignore `FutureWarning`s raised in the block (diffusers' deprecation notices).
    """
    if logging.getLogger("tinypipe").isEnabledFor(logging.DEBUG):
        yield
        return
    modules = [importlib.import_module(_LOGGING_MODULES[name]) for name in libraries]
    before = [(module.get_verbosity(), module.is_progress_bar_enabled()) for module in modules]
    for module in modules:
        if notices:
            module.set_verbosity_error()
        module.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            if future_warnings:
                warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for module, (verbosity, bars) in zip(modules, before):
            module.set_verbosity(verbosity)
            if bars:
                module.enable_progress_bar()
