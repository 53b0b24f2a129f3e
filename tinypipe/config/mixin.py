"""`ConfigMixin` and `@save_config`: objects that remember how they were built.

```python
class Model(ConfigMixin):
    @save_config
    def __init__(self, a: Ignore = 1, b: SubFolder = 2):
        ...

model = Model(b=3)
model.config                          # {"b": 3}: read-only, defaults filled in, `a` not recorded
model.save_pretrained("repo")         # repo/model/config.json, filelist.txt (+ weights)
Model.from_pretrained("repo", b=5)    # the caller wins over the saved config
Model.from_config(model.config)
```

The signature of each `__init__` is inspected once, when `@save_config` decorates it. File I/O lives
in `tinypipe.config.repo`; encoding in `tinypipe.config.coders`.
"""

import functools
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, Optional, TypeVar, Union

from typing_extensions import Self

from ..errors import ConfigError
from ..version import check_version
from .annotations import Ignore, SubFolder, parameter_markers
from .base import ConfigBase, check_unknown_keys
from .coders import decode_value, encode_arguments
from .modules import register_wrapped_class, resolve_class

__all__ = ["ConfigMixin", "save_config", "wrap_config_mixin"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class _InitSpec:
    """What `@save_config` learnt from one `__init__` signature, once, at decoration time."""

    signature: inspect.Signature
    recorded: tuple[str, ...]  # parameters written to config.json (Ignore ones left out)
    subfolders: frozenset[str]  # recorded parameters annotated SubFolder
    accepts_any_keyword: bool  # the signature has **kwargs


def _init_spec(init: Callable) -> _InitSpec:
    signature = inspect.signature(init)
    markers = parameter_markers(init)
    parameters = list(signature.parameters.values())[1:]  # drop self
    recorded = tuple(p.name for p in parameters if Ignore not in markers[p.name] and p.kind is not p.VAR_KEYWORD)
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) and SubFolder in markers[parameter.name]:
            raise ConfigError(f"{init.__qualname__}: {'*' if parameter.kind is parameter.VAR_POSITIONAL else '**'}{parameter.name} "
                              "cannot be a SubFolder (its values have no names to be folders); name the sub-configs as parameters.")
    return _InitSpec(
        signature=signature,
        recorded=recorded,
        subfolders=frozenset(name for name in recorded if SubFolder in markers[name]),
        accepts_any_keyword=any(p.kind is p.VAR_KEYWORD for p in parameters),
    )


def _copy_structure(value: Any) -> Any:
    """Copy lists, dicts and tuples so later changes by the caller do not alter the recorded config."""
    if isinstance(value, list):
        return [_copy_structure(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_copy_structure(item) for item in value)
    if isinstance(value, dict):
        return {key: _copy_structure(item) for key, item in value.items()}
    return value


def save_config(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate `__init__` to record every argument, positional or keyword, with defaults filled in.

    Parameters annotated `Ignore` are not recorded. A `**kwargs` parameter records each keyword it
    receives. Values are checked when the object is built: one that cannot be written to
    `config.json` raises `ConfigError` naming the argument.

    Example:
    ```python
    class Model(ConfigMixin):
        @save_config
        def __init__(self, hidden: int = 32, device: Ignore = "cpu"):
            ...
    ```
    """
    spec = _init_spec(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        outermost = type(self).__init__ is wrapper
        extra = self._pop_extra_config_arguments(kwargs) if outermost else {}
        bound = spec.signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if outermost:
            arguments = {name: bound.arguments[name] for name in spec.recorded}
            for name, value in bound.arguments.items():
                if spec.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(value)
            arguments.update(extra)
            arguments = _copy_structure(arguments)
            encode_arguments(arguments, type(self).__qualname__)  # fail now, naming the argument
        init(self, *args, **kwargs)
        if outermost:
            # What `__init__` itself recorded with `_record` (e.g. the LoRA targets it picked for a None) wins.
            object.__setattr__(self, "_tinypipe_config", {**arguments, **getattr(self, "_tinypipe_config", {})})

    wrapper.__tinypipe_init_spec__ = spec
    return wrapper


class ConfigMixin(ConfigBase):
    """Base class of every object tinypipe can save and rebuild: model pipelines and config objects.

    A subclass decorates its `__init__` with `@save_config`. Class attributes:
    - `__prefix__`: the folder of the repo this object is saved in (`"model"`).
    - `__weight__`: the weights file name, for objects that are a `torch.nn.Module`.
    """

    __prefix__: ClassVar[str] = "model"
    __weight__: ClassVar[str] = "model.safetensors"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not hasattr(init, "__tinypipe_init_spec__") and not cls._records_itself():
            raise TypeError(
                f"{cls.__qualname__}.__init__ must be decorated with @save_config so that tinypipe records "
                "how the object was built (or use wrap_config_mixin)."
            )
        if not str(cls.__weight__).endswith(".safetensors"):
            raise TypeError(f"{cls.__qualname__}.__weight__ is {cls.__weight__!r}; tinypipe writes weights as .safetensors only.")

    @classmethod
    def _records_itself(cls) -> bool:
        """True for classes whose `__init__` records the config without `@save_config`."""
        return False

    @classmethod
    def _init_spec(cls) -> _InitSpec:
        spec = getattr(cls.__init__, "__tinypipe_init_spec__", None)
        return spec if spec is not None else _init_spec(cls.__init__)

    def _pop_extra_config_arguments(self, kwargs: dict) -> dict:
        """Hook for recorded arguments that `__init__` itself does not take (see TrainerConfigMixin)."""
        return {}

    @classmethod
    def _extra_config_names(cls) -> tuple[str, ...]:
        return ()

    @classmethod
    def _subfolder_names(cls) -> frozenset[str]:
        """Recorded arguments saved in their own sub-folder when their value is a config object."""
        return cls._init_spec().subfolders | frozenset(cls._extra_config_names())

    @property
    def config(self) -> Mapping[str, Any]:
        """The recorded constructor arguments, read-only: `{argument name: value}`."""
        return MappingProxyType(getattr(self, "_tinypipe_config", {}))

    def _record(self, **changes: Any) -> None:
        """Update recorded arguments after the object itself changed (e.g. a trainer added a LoRA).

        The config must always describe how to build an object equivalent to this one; only the
        object's own methods call this.
        """
        type(self)._check_keys(changes, "arguments")
        arguments = _copy_structure({**self.config, **changes})
        encode_arguments(arguments, type(self).__qualname__)
        object.__setattr__(self, "_tinypipe_config", arguments)

    # -- building from a config ---------------------------------------------------------------------

    @classmethod
    def _valid_argument_names(cls) -> list[str]:
        spec = cls._init_spec()
        names = [name for name in list(spec.signature.parameters)[1:]
                 if spec.signature.parameters[name].kind is not inspect.Parameter.VAR_KEYWORD]
        return names + list(cls._extra_config_names())

    @classmethod
    def _check_keys(cls, keys, what: str) -> None:
        if cls._init_spec().accepts_any_keyword:
            return
        check_unknown_keys(keys, cls._valid_argument_names(), cls.__qualname__, what)

    @classmethod
    def _from_arguments(cls, arguments: Mapping[str, Any], overrides: Mapping[str, Any]) -> Self:
        """Build from decoded arguments; `overrides` (the caller's) win over `arguments` (the saved ones)."""
        cls._check_keys(arguments, "config keys")
        cls._check_keys(overrides, "arguments")
        merged = {**arguments, **overrides}
        parameters = list(cls._init_spec().signature.parameters.values())[1:]
        # Parameters before a `*args` can only be given by position, and so must every one of them then.
        has_var_positional = any(parameter.kind is parameter.VAR_POSITIONAL for parameter in parameters)
        positional = []
        for parameter in parameters:
            by_position = parameter.kind is parameter.POSITIONAL_ONLY or (
                has_var_positional and parameter.kind is parameter.POSITIONAL_OR_KEYWORD)
            if by_position and parameter.name in merged:
                positional.append(merged.pop(parameter.name))
            elif by_position and has_var_positional:
                if parameter.default is parameter.empty:
                    raise ConfigError(f"{cls.__qualname__}: the config has no {parameter.name!r}, which comes before "
                                      f"*{next(p.name for p in parameters if p.kind is p.VAR_POSITIONAL)}; give it.")
                positional.append(parameter.default)
            elif parameter.kind is parameter.VAR_POSITIONAL:
                positional.extend(merged.pop(parameter.name, ()))
        return cls(*positional, **merged)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, trust_remote_code: bool = False, **overrides: Any) -> Self:
        """Build an object from a config: `obj.config`, or the dict read from a `config.json`.

        Args:
            config: Recorded arguments. `__module__`/`__version__` keys, if present, are checked and dropped.
            trust_remote_code: Allow importing classes named in the config from modules not yet imported.
            **overrides: Arguments that win over the config (the caller has the final say).

        Raises:
            ConfigError: A key is not an argument of this class (the message lists the valid ones).
        """
        config = dict(config)
        check_version(config.pop("__version__", None), f"{cls.__qualname__}.from_config")
        dotted = config.pop("__module__", None)
        target = cls
        if dotted is not None:
            target = resolve_class(dotted, cls, trust_remote_code=trust_remote_code, source=f"{cls.__qualname__}.from_config")

        def resolve(name: str, expected: type) -> type:
            return resolve_class(name, expected, trust_remote_code=trust_remote_code, source="config")

        arguments = {key: decode_value(value, resolve) for key, value in config.items()}
        return target._from_arguments(arguments, overrides)

    # -- weights ------------------------------------------------------------------------------------

    def save_weights(self, folder: Path) -> None:
        """Write this object's weights into `folder` (called by `save_pretrained`).

        The default writes the `state_dict` of a `torch.nn.Module` as safetensors under `__weight__`;
        other objects have no weights. Model pipelines override this to write their own formats.
        """
        if "torch" in sys.modules and isinstance(self, sys.modules["torch"].nn.Module):
            from .weights import save_module_weights

            save_module_weights(self, folder / self.__weight__)

    @classmethod
    def _build_from_folder(cls, folder: Path, arguments: Mapping[str, Any], overrides: Mapping[str, Any]) -> Self:
        """Build the object saved in `folder` and load its weights (called by `from_pretrained`)."""
        if "torch" in sys.modules and issubclass(cls, sys.modules["torch"].nn.Module):
            from .weights import build_module_with_weights

            return build_module_with_weights(cls, folder, lambda: cls._from_arguments(arguments, overrides))
        return cls._from_arguments(arguments, overrides)

    @classmethod
    def card_data_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """What the model card (README.md) says about an object of this class saved with `config`.

        Read from the config alone, so a saved repo can be published without loading its weights.
        Subclasses override this to name their base model, method and tags.

        Args:
            config: The recorded arguments: `obj.config`, or a `config.json` read as plain JSON
                (tuples then arrive as lists).

        Returns:
            A dict with any of `base_model`, `method`, `prompts`, `tags`, `images`, `training_arguments`.
        """
        return {"tags": ["tinypipe"], "method": cls.__qualname__}

    def model_card_data(self) -> dict[str, Any]:
        """What the model card (README.md) says about this object when it is pushed to the hub.

        Returns:
            `card_data_from_config(self.config)` unless a subclass knows more about itself.
        """
        return type(self).card_data_from_config(self.config)

    # -- the repo -----------------------------------------------------------------------------------

    def save_pretrained(
        self,
        path: Union[str, Path],
        *,
        push_to_hub: bool = False,
        repo_id: Optional[str] = None,
        private: Optional[bool] = None,
        token: Optional[str] = None,
        commit_message: Optional[str] = None,
    ) -> Path:
        """Save this object into the repo at `path` (its `__prefix__` folder), atomically.

        Args:
            path: The repo folder. An existing repo's folder for this object is replaced as a whole;
                its other folders (e.g. `trainer/` beside `model/`) are kept.
            push_to_hub: Also publish the repo to the Hugging Face Hub as `repo_id`, with a model card.
            repo_id: The hub repo, e.g. `"me/my-lora"`.
            private: Create the hub repo as private.
            token: A hub token; never written to the repo, the card or the logs.
            commit_message: The hub commit message.

        Returns:
            The repo folder.
        """
        from .repo import save_repo

        repo = save_repo(self, Path(path))
        if push_to_hub:
            from .hub import push_repo

            push_repo(self, repo, repo_id=repo_id, private=private, token=token, commit_message=commit_message)
        return repo

    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, Path],
        repo: Optional[str] = None,
        *,
        revision: Optional[str] = None,
        token: Optional[str] = None,
        trust_remote_code: bool = False,
        **overrides: Any,
    ) -> Self:
        """Rebuild the object saved in a repo: a local folder, or a hub repo downloaded into a cache.

        Args:
            path: The repo folder; or, with `repo`, the cache folder it is downloaded into.
            repo: A Hugging Face Hub id (or a tinypipe built-in name), downloaded to `path/<repo>`.
            revision: Hub revision (branch, tag or commit); the default branch if None.
            token: Hub token for private repos.
            trust_remote_code: Allow running code from the repo's `model_code/` or other modules
                named in its config that are not imported yet.
            **overrides: Constructor arguments that win over the saved config.

        Example:
        ```python
        model = Model.from_pretrained("my_repo")
        model = Model.from_pretrained("cache", "me/my-model", revision="v1")
        ```
        """
        from .hub import resolve_repo
        from .repo import load_repo

        local = resolve_repo(path, repo, revision=revision, token=token)
        return load_repo(local, cls, trust_remote_code=trust_remote_code, overrides=overrides)


def wrap_config_mixin(cls: type[_T]) -> type[_T]:
    """Add `ConfigMixin` to an existing class and record its `__init__` arguments.

    Example:
    ```python
    Model = wrap_config_mixin(PlainModel)
    Model(3).save_pretrained("repo")
    ```
    """
    if issubclass(cls, ConfigMixin):
        return cls
    init = cls.__init__
    if init is object.__init__:
        def init(self):
            pass
    wrapped = type(cls.__name__, (cls, ConfigMixin), {
        "__init__": save_config(init),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    })
    register_wrapped_class(cls, wrapped)
    return wrapped

