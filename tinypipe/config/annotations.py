"""The annotations that steer what a config records: `Ignore`, `SubFolder` and `FromConfig`.

Each is a marker class used as a type annotation, alone or inside `Union[...]`, `Optional[...]` or
`Annotated[...]`:

```python
def __init__(self, a: Ignore = 1, b: SubFolder = 2, c: Union[Ignore, int] = 3,
             d: Annotated[int, SubFolder] = 4): ...

def train(self, epoch: FromConfig = 1, lr: Optional[FromConfig] = None, **kwargs: FromConfig): ...
```

The functions below read a parameter's annotation once, when a class is defined, never per call.
"""

import inspect
import sys
import typing
from typing import Any, Callable

from typing_extensions import Annotated, get_args, get_origin, get_type_hints

__all__ = ["Ignore", "SubFolder", "FromConfig", "parameter_markers"]


class _Marker:
    """Base of the marker classes; they are annotations, never instantiated."""

    def __new__(cls, *args, **kwargs):
        raise TypeError(f"{cls.__name__} is an annotation marker; use it as a type hint, not a value.")


class Ignore(_Marker):
    """The argument is not recorded in `config.json` (runtime objects: datasets, devices, callbacks)."""


class SubFolder(_Marker):
    """A config object given for this argument is saved in its own sub-folder `<folder>/<arg>/`."""


class FromConfig(_Marker):
    """A `@set_from_config` method fills this parameter from the saved config when the caller omits it."""


_MARKERS = (Ignore, SubFolder, FromConfig)


def _markers_in(annotation: Any) -> set[type]:
    """The marker classes an annotation contains, looking inside Union/Optional/Annotated."""
    if annotation in _MARKERS:
        return {annotation}
    found: set[type] = set()
    origin = get_origin(annotation)
    if origin is Annotated:
        args = get_args(annotation)
        found |= _markers_in(args[0])
        for extra in args[1:]:
            if extra in _MARKERS:
                found.add(extra)
        return found
    if origin is typing.Union or (sys.version_info >= (3, 10) and _is_pep604_union(annotation)):
        for arg in get_args(annotation):
            found |= _markers_in(arg)
    return found


def _is_pep604_union(annotation: Any) -> bool:
    import types

    return isinstance(annotation, types.UnionType)


def _resolved_hints(function: Callable) -> dict[str, Any]:
    """Type hints with `Annotated` kept; falls back to the raw annotations if forward refs don't resolve."""
    try:
        return get_type_hints(function, include_extras=True)
    except Exception:  # an unresolvable forward reference: read the markers by name below
        return dict(getattr(function, "__annotations__", {}))


def _markers_from_string(annotation: str) -> set[type]:
    """Markers named in a string annotation (`from __future__ import annotations` that did not resolve)."""
    names = set(annotation.replace("[", " ").replace("]", " ").replace(",", " ").replace("|", " ").split())
    return {marker for marker in _MARKERS if marker.__name__ in names or f"tinypipe.{marker.__name__}" in names}


def parameter_markers(function: Callable) -> dict[str, set[type]]:
    """Map each parameter of `function` to the markers its annotation carries.

    Args:
        function: A function or method (unbound).

    Returns:
        `{parameter name: {Ignore, SubFolder, FromConfig} subset}` for every parameter of the signature.
    """
    hints = _resolved_hints(function)
    markers: dict[str, set[type]] = {}
    for name in inspect.signature(function).parameters:
        hint = hints.get(name, inspect.Parameter.empty)
        markers[name] = _markers_from_string(hint) if isinstance(hint, str) else _markers_in(hint)
    return markers
