"""Reading and writing weight files: safetensors out, and nothing unpickled that could run code."""

import pickle
from pathlib import Path
from typing import Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model

from ..errors import RepoError

__all__ = ["save_module_weights", "build_module_with_weights", "load_state_dict_file"]

_M = TypeVar("_M", bound=torch.nn.Module)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def save_module_weights(module: torch.nn.Module, path: Path) -> None:
    """Write `module.state_dict()` as safetensors (tied weights stored once)."""
    save_model(module, str(path))


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file: safetensors, or a `.bin`/`.pt` pickle with `torch.load(weights_only=True)`.

    Raises:
        RepoError: The file is truncated/corrupt, or a pickle holds something other than tensors
            (such a payload is refused before any of its code runs).
    """
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
            raise RepoError(
                f"{path}: refused to load. It is not a plain tensor checkpoint (it may hold code, which tinypipe "
                f"never runs, or be corrupt): {str(error).splitlines()[0]}. Convert it to .safetensors from a source you trust."
            ) from error
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise RepoError(f"{path}: not a valid safetensors file (truncated or corrupt: {error}). Re-save or re-download it.") from error


def _has_meta_tensors(module: torch.nn.Module) -> bool:
    return any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers())


def build_module_with_weights(cls: type, folder: Path, build: Callable[[], _M]) -> _M:
    """Build a module and load `folder/<cls.__weight__>` into it.

    The module is first built on the meta device, so no time is spent initialising weights that are
    overwritten at once; if that leaves anything unloaded (non-persistent buffers, tied weights), it
    is built again normally.

    Raises:
        RepoError: The weights file is missing, corrupt, or does not match the module.
    """
    path = folder / cls.__weight__
    if not path.is_file():
        raise RepoError(f"{path} is missing: {cls.__qualname__} is a torch module and its weights were saved there.")
    state = load_state_dict_file(path)
    try:
        with torch.device("meta"):
            module = build()
        result = module.load_state_dict(state, strict=False, assign=True)
        if not result.missing_keys and not result.unexpected_keys and not _has_meta_tensors(module):
            return module
    except Exception:  # construction on meta is an optimisation; fall back to the plain path
        pass
    module = build()
    try:
        load_model(module, str(path), strict=True)
    except (RuntimeError, SafetensorError) as error:
        raise RepoError(f"{path} does not match {cls.__qualname__}: {str(error).splitlines()[0]}") from error
    return module
