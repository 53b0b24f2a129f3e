"""`AutoModelPipeline` and `AutoTrainerPipeline`: load whatever class a repo names."""

from pathlib import Path
from typing import Any, Optional, Union

from .hub import resolve_repo
from .mixin import ConfigMixin
from .repo import load_repo
from .trainer import TrainerConfigMixin

__all__ = ["AutoModelPipeline", "AutoTrainerPipeline"]


class _AutoPipeline:
    _base: type = ConfigMixin

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is not built directly; use {type(self).__name__}.from_pretrained(...).")

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
    ) -> Any:
        """Load the object a repo holds, as the class its `config.json` names.

        Args:
            path: A repo folder; or, with `repo`, the cache folder the hub repo is downloaded into.
            repo: A Hugging Face Hub id or a tinypipe built-in name.
            revision: Hub branch, tag or commit.
            token: Hub token for private repos.
            trust_remote_code: Allow running code from the repo's `model_code/` (or other modules it
                names that are not imported yet). Only for repos you trust.
            **overrides: Constructor arguments that win over the saved config.

        Example:
        ```python
        model = AutoModelPipeline.from_pretrained("out")              # a local repo
        model = AutoModelPipeline.from_pretrained("cache", "me/lora")  # from the hub
        ```
        """
        local = resolve_repo(path, repo, revision=revision, token=token)
        return load_repo(local, cls._base, trust_remote_code=trust_remote_code, overrides=overrides)


class AutoModelPipeline(_AutoPipeline):
    """Loads the model pipeline saved in `<repo>/model/`."""

    _base = ConfigMixin


class AutoTrainerPipeline(_AutoPipeline):
    """Loads the trainer saved in `<repo>/trainer/`; `init_model(model)` then `train()` re-runs it."""

    _base = TrainerConfigMixin
