"""LoRA target modules: the default ones of a causal-LM architecture, and checking names against a model.

`default_lora_targets(model)` picks the attention projections of the architectures in `ATTENTION_TARGETS` (the ones
tinypipe's tests train), else peft's own default for the architecture, else the usual projection names when the model
has them all; a model with none of these is an error listing its linear layers.

peft wraps every module whose name matches one of `target_modules` and raises only when *none* matches, so a
misspelled name next to a correct one (`("q_proj", "v_projj")`) is silently dropped while the config still lists
it. `check_target_modules` refuses that: every name must match at least one module.
"""

import difflib
import re
from typing import Sequence, Union

import torch

from ..errors import ConfigError

__all__ = ["ATTENTION_PROJECTIONS", "ATTENTION_TARGETS", "FUSED_ATTENTION_PROJECTIONS", "check_target_modules",
           "default_lora_targets", "unmatched_target_modules"]

_WRAPPABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
"""The attention projections of Llama-style models: query, key, value and output."""

FUSED_ATTENTION_PROJECTIONS = ("qkv_proj", "o_proj")
"""The attention projections of Phi-3-style models, whose query, key and value share one fused layer."""

ATTENTION_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ATTENTION_PROJECTIONS,
    "mistral": ATTENTION_PROJECTIONS,
    "qwen2": ATTENTION_PROJECTIONS,
    "qwen3": ATTENTION_PROJECTIONS,
    "gemma": ATTENTION_PROJECTIONS,
    "gemma2": ATTENTION_PROJECTIONS,
    "gemma3_text": ATTENTION_PROJECTIONS,
    "phi3": FUSED_ATTENTION_PROJECTIONS,
}
"""The default LoRA targets by transformers `model_type`: every attention projection (peft's defaults, where it has
them, take only the query and value projections)."""


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


def _linear_names(model: torch.nn.Module) -> list[str]:
    """Short names of the model's linear layers (`q_proj`, `gate_up_proj`, `lm_head`), in model order, without repeats."""
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if name and isinstance(module, torch.nn.Linear)))


def default_lora_targets(model: torch.nn.Module) -> tuple[str, ...]:
    """The LoRA target modules a causal LM gets when the user names none: its attention projections.

    In order: the targets of its `model_type` in `ATTENTION_TARGETS`; else peft's default for the architecture
    (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`); else `ATTENTION_PROJECTIONS` or
    `FUSED_ATTENTION_PROJECTIONS`, when the model has every one of them. The targets returned all match a module.

    Args:
        model: A transformers causal LM (or a module with a transformers `config`).

    Returns:
        The module names, for `LoraConfig(target_modules=...)`.

    Raises:
        ConfigError: None of these fits the model; the message lists its linear layers and the fix (name them in
            `target_modules`, or `"all-linear"`).
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    candidates = []
    if model_type in ATTENTION_TARGETS:
        candidates.append(ATTENTION_TARGETS[model_type])
    elif model_type in PEFT_DEFAULTS:
        candidates.append(tuple(PEFT_DEFAULTS[model_type]))
    candidates += [ATTENTION_PROJECTIONS, FUSED_ATTENTION_PROJECTIONS]
    for targets in candidates:
        if not unmatched_target_modules(model, targets):
            return targets
    raise ConfigError(
        f"tinypipe has no default LoRA targets for this model (model_type {model_type!r}): it has none of the attention "
        f"projections {list(ATTENTION_PROJECTIONS)} or {list(FUSED_ATTENTION_PROJECTIONS)}, and peft has no default for it. "
        f"Its linear layers are {_linear_names(model)}; name the attention ones in target_modules (--target-modules), "
        "or use 'all-linear'."
    )
