"""`ConfigBase`: what the value coders and the repo I/O need of an object that records how it was built.

`ConfigMixin` (in `tinypipe.config.mixin`) is the implementation every saved object uses; this base only names the
contract, so that `coders` and `repo` sit below the mixin (which saves through them) rather than in a circle with it.
"""

from pathlib import Path
from typing import Any, ClassVar, Mapping

__all__ = ["ConfigBase", "check_unknown_keys"]


def check_unknown_keys(keys, valid, owner: str, what: str) -> None:
    """Refuse keys that are not among `valid`, naming them and listing the valid ones (the one unknown-key check).

    Args:
        keys: The keys given (a config's, a call's, a command line's).
        valid: The keys that are accepted.
        owner: Who takes them, for the message (`"LoRATrainer.train()"`, `"--training-args"`).
        what: What the keys are, for the message (`"config keys"`, `"keys"`, `"arguments"`).

    Raises:
        ConfigError: Naming the unknown keys, the valid ones, and the closest valid key to each typo ("did you mean").
    """
    from ..errors import ConfigError

    import difflib

    unknown = sorted(key for key in keys if key not in valid)
    if unknown:
        ones = "ones" if what == "arguments" else "keys"
        close = {key: difflib.get_close_matches(key, list(valid), n=1) for key in unknown}
        hints = [f"{matches[0]!r} for {key!r}" for key, matches in close.items() if matches]
        hint = f" Did you mean {', '.join(hints)}?" if hints else ""
        raise ConfigError(f"{owner}: unknown {what} {unknown}; valid {ones} are {sorted(valid)}.{hint}")


class ConfigBase:
    """An object that records its constructor arguments and can be rebuilt from them.

    Class attributes:
    - `__prefix__`: the folder of the repo this object is saved in (`"model"`).
    - `__weight__`: the weights file name, for objects that are a `torch.nn.Module`.
    """

    __prefix__: ClassVar[str] = "model"
    __weight__: ClassVar[str] = "model.safetensors"

    @property
    def config(self) -> Mapping[str, Any]:
        """The recorded constructor arguments: `{argument name: value}`."""
        raise NotImplementedError

    @classmethod
    def _subfolder_names(cls) -> frozenset[str]:
        """Recorded arguments saved in their own sub-folder when their value is a config object."""
        raise NotImplementedError

    @classmethod
    def _from_arguments(cls, arguments: Mapping[str, Any], overrides: Mapping[str, Any]) -> "ConfigBase":
        """Build from decoded arguments; `overrides` (the caller's) win over `arguments` (the saved ones)."""
        raise NotImplementedError

    def save_weights(self, folder: Path) -> None:
        """Write this object's weights into `folder`."""
        raise NotImplementedError

    @classmethod
    def _build_from_folder(cls, folder: Path, arguments: Mapping[str, Any], overrides: Mapping[str, Any]) -> "ConfigBase":
        """Build the object saved in `folder` and load its weights."""
        raise NotImplementedError

    @classmethod
    def card_data_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """What the model card says about an object of this class saved with `config`."""
        raise NotImplementedError
