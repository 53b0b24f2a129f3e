"""What a base-model name points to: a built-in model's folder, a local folder, or a hub id.

A base model is named by a built-in name (`"tinypipe/tiny-sd"`, `"tinypipe/tiny-llama"`), a local folder or a
hub id. `base_model_source` turns the name into what diffusers / transformers load, `base_model_load_error`
explains a load that failed, and `same_base_model` tells whether two names mean one model (weights recorded
for another base model are refused by `model_ids.refuse_other_base_model`).
"""

from pathlib import Path
from typing import Optional, Union

from ..builtin.tiny_llama import TINY_LLAMA, builtin_lm_folder, is_builtin_lm
from ..builtin.tiny_sd import TINY_SD, builtin_model_folder, is_builtin
from ..errors import ConfigError

__all__ = ["base_model_load_error", "base_model_source", "same_base_model"]


def _builtin_folder(name: str) -> Optional[Path]:
    """The folder of a built-in model name, or None for any other name."""
    if is_builtin(name):
        return Path(builtin_model_folder(name))
    if is_builtin_lm(name):
        return Path(builtin_lm_folder(name))
    return None


def base_model_source(base_model: str, kind: str) -> Union[str, Path]:
    """What to hand `from_pretrained` for `base_model`: a built-in model's folder, a local folder, or the hub id.

    Args:
        base_model: The name the user gave.
        kind: `"diffusion"` (a diffusers pipeline) or `"causal-lm"` (a transformers model).

    Returns:
        A `Path` for a built-in model of `kind` or a local folder, else the hub id as given.

    Raises:
        ConfigError: A local path that is not a folder of `kind` (it lacks `model_index.json` / `config.json`).
    """
    from .model_ids import BASE_MODEL_KINDS

    if kind == "diffusion" and is_builtin(base_model):
        return Path(builtin_model_folder(base_model))
    if kind == "causal-lm" and is_builtin_lm(base_model):
        return Path(builtin_lm_folder(base_model))
    if not Path(base_model).exists():
        return base_model
    source, (marker, folder_kind) = Path(base_model), BASE_MODEL_KINDS[kind]
    if not (source / marker).is_file():
        library, builtin = ("diffusers", TINY_SD) if kind == "diffusion" else ("transformers", TINY_LLAMA)
        raise ConfigError(f"{source} is not a {folder_kind} (no {marker}); give a folder written by {library}' "
                          f"save_pretrained, a hub id, or the built-in {builtin!r}.")
    return source


def base_model_load_error(base_model: str, revision: Optional[str], error: OSError, kind: str) -> ConfigError:
    """The error for a base model that could not be loaded: the reason, what to check, and the built-in names of `kind`."""
    from .model_ids import builtin_hint, load_error_reason

    return ConfigError(
        f"Could not load the base model {base_model!r} (revision {revision or 'main'}): {load_error_reason(error)} "
        "Check the hub id and revision, log in for private models, or unset HF_HUB_OFFLINE to download it. "
        f"{builtin_hint(base_model, kind)}"
    )


def same_base_model(first: str, second: str) -> bool:
    """Whether two base-model names mean the same model: equal names, or (built-in names read as their folders) one folder."""
    if first == second:
        return True
    first_path, second_path = (_builtin_folder(name) or Path(name) for name in (first, second))
    return first_path.exists() and second_path.exists() and first_path.resolve() == second_path.resolve()

