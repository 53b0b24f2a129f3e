"""A package's public names imported on first use (PEP 562 module `__getattr__` / `__dir__`).

`import tinypipe`, `tinypipe.models` and `tinypipe.trainers` import none of their heavy modules: a name is imported
from its module the first time it is read, so the CLI's `--help` does not load torch, a diffusion job does not load
the causal-LM stack, and a causal-LM job does not load diffusers.

```python
__getattr__, __dir__ = lazy_names(__name__, {"DiffusionPipeline": ".diffusion", ...})
```
"""

import importlib
import sys
from typing import Any, Callable, Mapping, Optional

__all__ = ["lazy_names"]


def lazy_names(package: str, module_of: Mapping[str, str], before: Optional[Callable[[str], None]] = None
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`, which import each name from its module on first use.

    Args:
        package: The package's `__name__`.
        module_of: `{public name: module}`; a relative module is relative to `package`.
        before: Called with the name before its module is imported (e.g. to register something first).

    Returns:
        `(__getattr__, __dir__)`; a name read once is then a plain attribute of the package.

    Raises:
        AttributeError: (from `__getattr__`) a name that is not in `module_of`.
    """

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before is not None:
            before(name)
        value = getattr(importlib.import_module(module_of[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(module_of))

    return __getattr__, __dir__
