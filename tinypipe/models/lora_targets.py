"""Checking LoRA target module names against a model before peft wraps it.

peft wraps every module whose name matches one of `target_modules` and raises only when *none* matches, so a
misspelled name next to a correct one (`("q_proj", "v_projj")`) is silently dropped while the config still lists
it. `check_target_modules` refuses that: every name must match at least one module.
"""

import difflib
import re
from typing import Sequence, Union

import torch

from ..errors import ConfigError

__all__ = ["check_target_modules", "unmatched_target_modules"]

_WRAPPABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)


def _matches(module_name: str, target: str) -> bool:
    """peft's rule for a list entry: the full module name, or its ending after a dot."""
    return module_name == target or module_name.endswith("." + target)


def unmatched_target_modules(model: torch.nn.Module, targets: Union[Sequence[str], str]) -> list[str]:
    """The entries of `targets` that match no module of `model` (a pattern string or "all-linear": none)."""
    if isinstance(targets, str):
        return []
    names = [name for name, _ in model.named_modules() if name]
    return [target for target in targets if not any(_matches(name, target) for name in names)]


def _existing_names(model: torch.nn.Module) -> list[str]:
    """Short names of the modules LoRA can wrap (`q_proj`, `to_out.0`), in model order, without repeats."""
    found: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, _WRAPPABLE) and name:
            parts = name.split(".")
            short = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
            found.setdefault(re.sub(r"^\d+\.", "", short), None)
    return list(found)


def check_target_modules(model: torch.nn.Module, targets: Union[Sequence[str], str], *, setting: str, model_name: str,
                         alternative: str = "") -> None:
    """Refuse LoRA target names that match no module of `model`, listing them and a few names that exist.

    Args:
        model: The model the LoRA goes on (a UNet, a text encoder, a causal LM).
        targets: The target module names (peft's list form); a pattern string or "all-linear" is not checked here.
        setting: The setting's name for the message (`"lora_target_modules"`, `"target_modules"`).
        model_name: What the model is, for the message (`"the UNet of 'tinypipe/tiny-sd'"`).
        alternative: Another choice to offer at the end of the message (`"or 'all-linear'"`).

    Raises:
        ConfigError: Some names match no module.
    """
    unmatched = unmatched_target_modules(model, targets)
    if not unmatched:
        return
    existing = _existing_names(model)
    hints = []
    for target in unmatched:
        close = difflib.get_close_matches(target, existing, n=1)
        if close:
            hints.append(f"{target!r} -> {close[0]!r}?")
    raise ConfigError(
        f"{setting}: {unmatched} match no module of {model_name}; every name must match one, or the LoRA silently "
        "leaves it out. " + (f"Did you mean: {', '.join(hints)} " if hints else "")
        + f"Modules it has include {existing[:12]}; pick from them{' ' + alternative if alternative else ''}."
    )
