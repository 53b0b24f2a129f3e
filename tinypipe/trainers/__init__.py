"""Trainers, one per file: each a `TrainerConfigMixin` with `init_model(model)` and `train(data=..., ...)`.

The names below are imported on first use (PEP 562), so that running one trainer imports only its own stack
(a diffusion job never imports the causal-LM trainer, nor a causal-LM job diffusers).
"""

import importlib
from typing import Any

from ..models import quiet_transformers  # noqa: F401  (first: installs a logging filter before transformers loads)

_MODULE_OF = {
    "CausalLMTrainConfig": ".causal_lm",
    "CausalLMTrainer": ".causal_lm",
    "finetune": ".causal_lm",
    "DreamBoothTrainConfig": ".dreambooth",
    "DreamBoothTrainer": ".dreambooth",
    "LoRATrainConfig": ".lora",
    "LoRATrainer": ".lora",
    "TextualInversionTrainConfig": ".textual_inversion",
    "TextualInversionTrainer": ".textual_inversion",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
