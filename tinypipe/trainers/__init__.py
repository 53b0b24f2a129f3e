"""Trainers, one per file: each a `TrainerConfigMixin` with `init_model(model)` and `train(data=..., ...)`."""

from .causal_lm import CausalLMTrainConfig, CausalLMTrainer, finetune
from .dreambooth import DreamBoothTrainConfig, DreamBoothTrainer
from .lora import LoRATrainConfig, LoRATrainer
from .textual_inversion import TextualInversionTrainConfig, TextualInversionTrainer

__all__ = [
    "CausalLMTrainConfig",
    "CausalLMTrainer",
    "DreamBoothTrainConfig",
    "DreamBoothTrainer",
    "LoRATrainConfig",
    "LoRATrainer",
    "TextualInversionTrainConfig",
    "TextualInversionTrainer",
    "finetune",
]
