"""Trainers, one per file: each a `TrainerConfigMixin` with `init_model(model)` and `train(data=..., ...)`.

The names below are imported on first use (PEP 562), so that running one trainer imports only its own stack
(a diffusion job never imports the causal-LM trainer, nor a causal-LM job diffusers).
"""

from ..lazy_names import lazy_names
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
__getattr__, __dir__ = lazy_names(__name__, _MODULE_OF)
