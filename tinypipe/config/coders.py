"""Pure functions that turn recorded values into JSON and back.

A value is recorded as itself when it is a JSON primitive (None, bool, int, finite float, str), a
list, or a dict with string keys. The few other types below are written as a dict whose tag key
names the coder:

| value                      | in `config.json`                                      |
|----------------------------|-------------------------------------------------------|
| `(1, 2)`                   | `{"__tuple__": [1, 2]}`                               |
| `Path("a/b")`              | `{"__path__": "a/b"}`                                 |
| `Color.RED` (an `Enum`)    | `{"__enum__": "pkg.mod.Color", "value": "red"}`       |
| `torch.float16`            | `{"__dtype__": "float16"}`                            |
| a config object (inline)   | `{"__module__": "pkg.mod.Model", <its arguments>}`    |

Anything else raises `ConfigError` naming the argument, never a silent drop. No file I/O here.
"""

import enum
import math
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Callable

from ..errors import ConfigError
from .base import ConfigBase
from .modules import class_path

__all__ = ["Coder", "encode_value", "encode_arguments", "decode_value", "is_reserved_key", "plain_value"]

# Resolves a dotted class path to a class, applying the trust rules of `tinypipe.config.modules`.
ClassResolver = Callable[[str, type], type]


@dataclass(frozen=True)
class Coder:
    """How one non-JSON type is written to and read from `config.json`.

    Args:
        tag: The dict key that marks the encoded form, e.g. `"__path__"`.
        matches: Whether a value is of this type.
        encode: Value -> its encoded dict, holding the key `tag`.
        decode: (whole encoded dict, class resolver) -> value.
    """

    tag: str
    matches: Callable[[Any], bool]
    encode: Callable[[Any], dict]
    decode: Callable[[dict, ClassResolver], Any]


def is_reserved_key(key: str) -> bool:
    """Keys shaped like `__name__` are tinypipe's own markers and cannot be user dict keys."""
    return key.startswith("__") and key.endswith("__")


def _is_torch_dtype(value: Any) -> bool:
    # Checked by type name so that recording a config never imports torch.
    kind = type(value)
    return kind.__module__ == "torch" and kind.__name__ == "dtype"


def _decode_dtype(data: dict, resolve: ClassResolver) -> Any:
    import torch

    dtype = getattr(torch, data["__dtype__"], None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"Unknown torch dtype {data['__dtype__']!r} in config.json.")
    return dtype


def _decode_enum(data: dict, resolve: ClassResolver) -> Any:
    enum_class = resolve(data["__enum__"], enum.Enum)
    try:
        return enum_class(data["value"])
    except ValueError as error:
        valid = [member.value for member in enum_class]
        raise ConfigError(f"{data['value']!r} is not a value of {data['__enum__']}; valid values: {valid}.") from error


_CODERS: tuple[Coder, ...] = (
    Coder("__tuple__", lambda v: isinstance(v, tuple), None, None),  # containers: handled inline below
    Coder("__path__", lambda v: isinstance(v, PurePath), lambda v: {"__path__": v.as_posix()}, lambda d, r: Path(d["__path__"])),
    Coder("__enum__", lambda v: isinstance(v, enum.Enum), lambda v: {"__enum__": class_path(type(v)), "value": v.value}, _decode_enum),
    Coder("__dtype__", _is_torch_dtype, lambda v: {"__dtype__": str(v).removeprefix("torch.")}, _decode_dtype),
)


def _path_text(path: str, key: Any) -> str:
    return f"{path}[{key!r}]"


def encode_value(value: Any, path: str) -> Any:
    """Encode one recorded value as JSON-compatible data.

    Args:
        value: The value given for an argument.
        path: Where the value sits, for messages, e.g. `"Model.__init__ argument 'b'"`.

    Returns:
        JSON-compatible data (see the module docstring for the encoded forms).

    Raises:
        ConfigError: The value (or something inside it) has no coder; the message names where it is.
    """
    if value is None or isinstance(value, (bool, int, str)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{path} is {value}, which JSON cannot hold; pass a finite number.")
        return value
    if isinstance(value, list):
        return [encode_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(item, f"{path}[{index}]") for index, item in enumerate(value)]}
    if isinstance(value, dict):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{path} has the key {key!r} of type {type(key).__name__}; config dict keys must be strings.")
            if is_reserved_key(key):
                raise ConfigError(f"{path} has the key {key!r}; keys shaped like '__name__' are reserved by tinypipe.")
            encoded[key] = encode_value(item, _path_text(path, key))
        return encoded
    if isinstance(value, ConfigBase):
        return {"__module__": class_path(type(value)), **encode_arguments(value.config, f"{path} ({type(value).__name__})")}
    for coder in _CODERS:
        if coder.encode is not None and coder.matches(value):
            return coder.encode(value)
    raise ConfigError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which cannot be recorded in config.json. "
        "Pass a JSON value, tuple, Path, enum, torch dtype or config object; or annotate the parameter "
        "with `Ignore` to leave it out of the config (then give it again when loading)."
    )


def encode_arguments(arguments: dict, owner: str) -> dict:
    """Encode every recorded argument of one object; `owner` names it in messages."""
    return {name: encode_value(value, f"{owner} argument {name!r}") for name, value in arguments.items()}


def decode_value(data: Any, resolve: ClassResolver) -> Any:
    """Decode data read from `config.json` back into values (the inverse of `encode_value`).

    Values that are already decoded (a tuple, a config object) pass through unchanged, so
    `from_config(model.config)` and `from_config(json.load(...))` both work.

    Args:
        data: JSON data, or already-decoded values.
        resolve: Turns a dotted class path into a class (with tinypipe's trust rules).
    """
    if isinstance(data, list):
        return [decode_value(item, resolve) for item in data]
    if isinstance(data, tuple):
        return tuple(decode_value(item, resolve) for item in data)
    if not isinstance(data, dict):
        return data
    if "__tuple__" in data:
        return tuple(decode_value(item, resolve) for item in data["__tuple__"])
    if "__module__" in data:
        if "__subfolder__" in data:
            raise ConfigError(
                f"The config refers to a sub-folder object ({data['__module__']}); load it with "
                "`from_pretrained(<repo>)`, which reads the sub-folder, not with `from_config`."
            )
        cls = resolve(data["__module__"], ConfigBase)
        arguments = {key: decode_value(item, resolve) for key, item in data.items() if key != "__module__"}
        return cls._from_arguments(arguments, {})
    for coder in _CODERS:
        if coder.decode is not None and coder.tag in data:
            return coder.decode(data, resolve)
    return {key: decode_value(item, resolve) for key, item in data.items()}


def plain_value(value: Any) -> Any:
    """A `config.json` value as plain JSON, nothing imported: tuples as lists, paths and dtypes as their text, enums
    as their value, tinypipe's reserved keys (`__module__`, ...) left out. For reading a repo without loading it."""
    if isinstance(value, list):
        return [plain_value(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return [plain_value(item) for item in value["__tuple__"]]
    for tag in ("__path__", "__dtype__"):
        if tag in value:
            return value[tag]
    if "__enum__" in value:
        return plain_value(value.get("value"))
    return {key: plain_value(item) for key, item in value.items() if not is_reserved_key(key)}
