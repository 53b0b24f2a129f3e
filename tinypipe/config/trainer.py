"""Trainers whose methods take their arguments from a saved config, and the config objects themselves.

```python
class Trainer(TrainerConfigMixin):
    @save_config
    def __init__(self, train_args=None):
        self.train_args = train_args

    @set_from_config
    def train(self, epoch: FromConfig):
        ...

class TrainConfig(BaseArgsFromConfig):
    @copy_signature(Trainer.train)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

trainer = Trainer(train_config=TrainConfig(2))   # `<method>_config` for each @set_from_config method
trainer.train()      # epoch=2 from the config
trainer.train(4)     # epoch=4: the caller wins
```

One precedence rule: argument given at call time > saved config > signature default.
"""

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, TypeVar, Union

from ..errors import ConfigError
from .annotations import FromConfig, parameter_markers
from .base import check_unknown_keys
from .coders import encode_arguments
from .mixin import ConfigMixin, _copy_structure

__all__ = ["TrainerConfigMixin", "set_from_config", "BaseArgsFromConfig", "copy_signature"]

_F = TypeVar("_F", bound=Callable)


def _from_config_signature(method: Callable) -> inspect.Signature:
    """The `FromConfig` parameters of `method`, self dropped: what its config object holds."""
    markers = parameter_markers(method)
    parameters = [p for p in list(inspect.signature(method).parameters.values())[1:] if FromConfig in markers[p.name]]
    return inspect.Signature(parameters)


def _as_mapping(value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, ConfigMixin):
        return value.config
    return value


def set_from_config(name_or_method: Union[str, Callable, None] = None, *, aliases: Optional[Mapping[str, str]] = None):
    """Fill each `FromConfig` parameter the caller did not give from `self.<method>_config`.

    Use bare (`@set_from_config`, config attribute `<method name>_config`) or with a name
    (`@set_from_config("fit_args")`). A `**kwargs: FromConfig` parameter also receives the saved
    keys that are not named parameters. Precedence: call-time argument > saved config > default.

    Args:
        name_or_method: The config attribute's name (default `<method name>_config`), or the method itself.
        aliases: `{alias: name}` for two parameters that mean the same thing (`{"epoch": "num_train_epochs"}`).
            When the caller gives one of them, the saved value of the other is not filled in, so the caller
            wins over a saved alias too; giving both with different values is an error.

    Example:
    ```python
    @set_from_config(aliases={"epoch": "num_train_epochs"})
    def train(self, data: Ignore = None, num_train_epochs: FromConfig = 1, epoch: FromConfig = None):
        ...
    ```
    """
    alias_pairs = dict(aliases or {})

    def decorate(method: _F) -> _F:
        config_name = name_or_method if isinstance(name_or_method, str) else f"{method.__name__}_config"
        signature = inspect.signature(method)
        unknown_aliases = sorted((set(alias_pairs) | set(alias_pairs.values())) - set(signature.parameters))
        if unknown_aliases:
            raise TypeError(f"set_from_config(aliases=...) of {method.__qualname__} names unknown parameters {unknown_aliases}.")
        from_config = _from_config_signature(method)
        named = [p.name for p in from_config.parameters.values() if p.kind is not p.VAR_KEYWORD]
        var_keyword = next((p.name for p in from_config.parameters.values() if p.kind is p.VAR_KEYWORD), None)

        accepts_any_keyword = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if not accepts_any_keyword:
                check_unknown_keys(kwargs, list(signature.parameters)[1:], f"{type(self).__qualname__}.{method.__name__}()", "arguments")
            bound = signature.bind_partial(self, *args, **kwargs)
            saved = _as_mapping(getattr(self, config_name, None))
            given = set(bound.arguments)
            for alias, name in alias_pairs.items():
                if alias in given and name in given and bound.arguments[alias] != bound.arguments[name]:
                    raise ConfigError(f"{type(self).__qualname__}.{method.__name__}(): {alias}={bound.arguments[alias]!r} and "
                                      f"{name}={bound.arguments[name]!r} are the same setting; give one of them.")
            # A name whose alias the caller gave is not filled from the saved config: the caller wins over it too.
            shadowed = {name for alias, name in alias_pairs.items() if alias in given} | \
                       {alias for alias, name in alias_pairs.items() if name in given}
            for name in named:
                if name not in given and name not in shadowed and name in saved:
                    bound.arguments[name] = saved[name]
            if var_keyword is not None:
                given = bound.arguments.get(var_keyword, {})
                extra = {key: value for key, value in saved.items() if key not in signature.parameters and key not in given}
                bound.arguments[var_keyword] = {**extra, **given}
            missing = [p.name for p in list(signature.parameters.values())[1:] if p.name not in bound.arguments
                       and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            if missing:
                raise TypeError(
                    f"{type(self).__qualname__}.{method.__name__}() needs {missing}: give them at call time "
                    f"or in {config_name}."
                )
            return method(*bound.args, **bound.kwargs)

        wrapper.__tinypipe_config_name__ = config_name
        wrapper.__tinypipe_from_config__ = from_config
        return wrapper

    if callable(name_or_method):
        return decorate(name_or_method)
    return decorate


class TrainerConfigMixin(ConfigMixin):
    """Base class of trainers: a `ConfigMixin` saved under `trainer/` whose `@set_from_config`
    methods read their defaults from `<method>_config` objects given to the constructor.

    The constructor accepts `<method>_config=` for every `@set_from_config` method (a
    `BaseArgsFromConfig`, a dict of that method's `FromConfig` parameters, or None); each is
    recorded and saved as a sub-folder (`trainer/train_config/config.json`).
    """

    __prefix__: ClassVar[str] = "trainer"
    _method_configs: ClassVar[dict[str, inspect.Signature]] = {}
    # Writes the record of the run this trainer just did (metrics.jsonl, loss.png) into its folder when it is saved, so
    # `filelist.txt` lists them; set by the training loop (`training.loop.save_run`), never part of the config.
    run_record: Optional[Callable[[Path], None]] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        configs: dict[str, inspect.Signature] = {}
        for klass in reversed(cls.__mro__):
            for attribute in vars(klass).values():
                name = getattr(attribute, "__tinypipe_config_name__", None)
                if name is not None:
                    configs[name] = attribute.__tinypipe_from_config__
        init_parameters = cls._init_spec().signature.parameters
        cls._method_configs = {name: sig for name, sig in configs.items() if name not in init_parameters}

    @classmethod
    def _extra_config_names(cls) -> tuple[str, ...]:
        return tuple(sorted(cls._method_configs))

    def _pop_extra_config_arguments(self, kwargs: dict) -> dict:
        return {name: self._accept_method_config(name, kwargs.pop(name, None)) for name in type(self)._method_configs}

    def _accept_method_config(self, name: str, value: Any) -> Any:
        """Check one `<method>_config` value, set it as an attribute, and return what is recorded."""
        if isinstance(value, Mapping) and not isinstance(value, ConfigMixin):
            _check_arguments(type(self)._method_configs[name], value, f"{type(self).__qualname__}({name}=...)")
            value = dict(value)
        elif value is not None and not isinstance(value, ConfigMixin):
            raise ConfigError(
                f"{type(self).__qualname__}: {name} must be a BaseArgsFromConfig object, a dict or None, got {type(value).__name__}."
            )
        object.__setattr__(self, name, value)
        return value

    def save_weights(self, folder: Path) -> None:
        """A trainer has no weights; the record of its last run (`run_record`), if any, is written beside its config."""
        super().save_weights(folder)
        if self.run_record is not None:
            self.run_record(folder)

    def set_method_config(self, name: str, value: Any) -> None:
        """Replace the config of one `@set_from_config` method (e.g. with the effective arguments of a run).

        Args:
            name: The config name, e.g. `"train_config"`.
            value: A `BaseArgsFromConfig`, a dict, or None.
        """
        if name not in type(self)._method_configs:
            raise ConfigError(f"{type(self).__qualname__} has no method config {name!r}; it has {sorted(type(self)._method_configs)}.")
        self._record(**{name: self._accept_method_config(name, value)})


def _check_arguments(signature: inspect.Signature, arguments: Mapping[str, Any], owner: str) -> None:
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    check_unknown_keys(arguments, signature.parameters, owner, "keys")


def copy_signature(source: Callable) -> Callable[[_F], _F]:
    """Give the decorated `__init__` the signature of `source` (a `@set_from_config` method).

    `BaseArgsFromConfig` then accepts exactly that method's `FromConfig` parameters, positional or
    keyword, and validates them.
    """

    def decorate(init: _F) -> _F:
        init.__tinypipe_copied_from__ = source
        init.__signature__ = inspect.signature(source)
        return init

    return decorate


class BaseArgsFromConfig(ConfigMixin):
    """A config object holding the arguments of one `@set_from_config` method.

    Its parameters are the `FromConfig` parameters of the method whose signature was copied with
    `@copy_signature`, in order; defaults are recorded like any `@save_config` argument. Values can
    be read as attributes (`train_config.epoch`) or from `.config`.

    Example:
    ```python
    class TrainConfig(BaseArgsFromConfig):
        @copy_signature(Trainer.train)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

    config = TrainConfig(2)
    config.update_config({"epoch": 3})
    ```
    """

    __prefix__: ClassVar[str] = "args"
    _arguments_signature: ClassVar[inspect.Signature] = inspect.Signature()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        source = getattr(cls.__init__, "__tinypipe_copied_from__", None)
        if source is not None:
            cls._arguments_signature = _from_config_signature(source)

    @classmethod
    def _records_itself(cls) -> bool:
        return True

    @classmethod
    def _owner(cls) -> str:
        return cls.__qualname__

    def __init__(self, *args: Any, **kwargs: Any):
        signature = type(self)._arguments_signature
        _check_arguments(signature, kwargs, self._owner())
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError as error:
            raise ConfigError(f"{self._owner()}: {error}; its parameters are {list(signature.parameters)}.") from None
        bound.apply_defaults()
        arguments = {}
        for name, value in bound.arguments.items():
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            else:
                arguments[name] = value
        self._set_arguments(arguments)

    def _set_arguments(self, arguments: dict) -> None:
        arguments = _copy_structure(arguments)
        encode_arguments(arguments, self._owner())
        object.__setattr__(self, "_tinypipe_config", arguments)

    @classmethod
    def _valid_argument_names(cls) -> list[str]:
        return [p.name for p in cls._arguments_signature.parameters.values() if p.kind is not p.VAR_KEYWORD]

    @classmethod
    def _check_keys(cls, keys, what: str) -> None:
        _check_arguments(cls._arguments_signature, dict.fromkeys(keys), cls._owner())

    @classmethod
    def _from_arguments(cls, arguments: Mapping[str, Any], overrides: Mapping[str, Any]):
        cls._check_keys(arguments, "config keys")
        cls._check_keys(overrides, "arguments")
        return cls(**{**arguments, **overrides})

    def update_config(self, values: Mapping[str, Any]) -> "BaseArgsFromConfig":
        """Change some values; unknown keys are refused with the list of valid ones.

        Returns:
            self, so calls can be chained.
        """
        _check_arguments(type(self)._arguments_signature, values, self._owner())
        self._set_arguments({**self.config, **values})
        return self

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("_tinypipe_config", {})
        if name in config:
            return config[name]
        raise AttributeError(f"{type(self).__qualname__} has no attribute or config key {name!r}")

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.config.items())
        return f"{type(self).__qualname__}({arguments})"
