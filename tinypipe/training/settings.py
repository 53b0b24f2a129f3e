"""Checks of training settings, shared by every trainer and by the CLI before it records a job.

Each trainer calls `check_training_settings` with its arguments before any heavy work (loading data,
encoding latents, building the optimizer); the CLI calls it with `--training-args` before a job exists. A
setting that cannot work here is refused with a `ConfigError` naming it and what works instead; a setting
that can work is left to be honoured. One table below holds the rule of every setting name the trainers use.
"""

import logging
from typing import Any, Iterable, Mapping

import torch

from ..errors import ConfigError
from .optim import LR_SCHEDULES
from .tracking import check_report_to

logger = logging.getLogger(__name__)

__all__ = ["MIXED_PRECISION", "LR_SCHEDULES", "available_mixed_precision", "check_mixed_precision", "check_training_settings",
           "check_existing_lora", "log_resolved_steps"]

MIXED_PRECISION = ("no", "fp16", "bf16")
QUANTIZATIONS = (None, "8bit", "4bit")

# The rule of each setting name; in the _OPTIONAL_ groups, None is accepted too (it means "not set" or "the default").
_WHOLE_AT_LEAST_ONE = ("num_train_epochs", "train_batch_size", "gradient_accumulation_steps", "validation_epochs",
                       "lr_num_cycles", "num_vectors", "repeats", "num_class_images", "sample_batch_size",
                       "class_inference_steps", "validation_inference_steps", "max_length")
_OPTIONAL_WHOLE_AT_LEAST_ONE = ("epoch", "max_train_steps", "batch_size", "checkpoints_total_limit", "rank", "r", "resolution")
_WHOLE_AT_LEAST_ZERO = ("warmup_steps", "num_validation_images", "seed")
_OPTIONAL_WHOLE_AT_LEAST_ZERO = ("checkpointing_steps",)
_POSITIVE = ("learning_rate", "adam_epsilon", "lr_power")
_OPTIONAL_POSITIVE = ("lora_alpha", "snr_gamma")
_NOT_NEGATIVE = ("adam_weight_decay", "noise_offset", "prior_loss_weight", "class_guidance_scale", "validation_guidance_scale")
_OPTIONAL_NOT_NEGATIVE = ("max_grad_norm",)
_FRACTIONS = ("adam_beta1", "adam_beta2", "validation_split")
_OPTIONAL_FRACTIONS = ("lora_dropout",)
_BOOLEANS = ("scale_lr", "use_8bit_adam", "train_text_encoder", "gradient_checkpointing", "center_crop", "random_flip",
             "use_lora", "with_prior_preservation", "train_on_inputs", "packing", "group_by_length")
_CHOICES = {"lr_schedule": LR_SCHEDULES, "learnable_property": ("object", "style"), "quantization": QUANTIZATIONS}


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def available_mixed_precision() -> list[str]:
    """The `mixed_precision` values that can run on this machine: "no", "bf16" (CPU, and GPUs that have it), "fp16" (GPU)."""
    values = ["no"]
    cuda = torch.cuda.is_available()
    if not cuda or torch.cuda.is_bf16_supported():
        values.append("bf16")
    if cuda or (hasattr(torch, "xpu") and torch.xpu.is_available()) or torch.backends.mps.is_available():
        values.append("fp16")
    return values


def check_mixed_precision(mixed_precision: Any) -> None:
    """Refuse a `mixed_precision` that is not known, or that this machine cannot run, naming the ones that work here.

    Raises:
        ConfigError: An unknown value, or one this machine cannot run (fp16 without a GPU).
    """
    works = available_mixed_precision()
    if mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision={mixed_precision!r} is not known; use one of {list(MIXED_PRECISION)} "
                          f"(on this machine: {works}).")
    if mixed_precision not in works:
        need = "a CUDA GPU (or another accelerator)" if mixed_precision == "fp16" else "a GPU with bfloat16 support"
        raise ConfigError(f"mixed_precision={mixed_precision!r} needs {need}, and this machine has none; use one of {works} "
                          "(bf16 also runs on the CPU).")


def check_training_settings(arguments: Mapping[str, Any], owner: str = "train()", *, none_means_default: tuple = ()) -> None:
    """Refuse every setting in `arguments` whose value cannot work, naming it and the values that do.

    Only the keys present are checked, so the CLI can check the `--training-args` it was given and a trainer
    the full set of its arguments.

    Args:
        arguments: Setting name -> value (names the trainers use: `learning_rate`, `mixed_precision`, ...).
        owner: Where the settings come from, for the message (`"LoRATrainer.train()"`, `"--training-args"`).
        none_means_default: Names this trainer accepts as None (it then picks the value, e.g. DreamBooth's learning rate).

    Raises:
        ConfigError: The first setting that cannot work.
    """

    def refuse(name: str, rule: str, hint: str = "") -> None:
        raise ConfigError(f"{owner}: {name} must be {rule}{hint}, got {arguments[name]!r}.")

    for name, value in arguments.items():
        optional = value is None
        if optional and name in none_means_default:
            continue
        if name in _WHOLE_AT_LEAST_ONE or (name in _OPTIONAL_WHOLE_AT_LEAST_ONE and not optional):
            if not _is_whole(value) or value < 1:
                refuse(name, "a whole number >= 1", " (or None, null in JSON, for the default)" if name in _OPTIONAL_WHOLE_AT_LEAST_ONE else "")
        elif name in _WHOLE_AT_LEAST_ZERO or (name in _OPTIONAL_WHOLE_AT_LEAST_ZERO and not optional):
            if not _is_whole(value) or value < 0:
                refuse(name, "a whole number >= 0", " (0 or None: no checkpoints)" if name == "checkpointing_steps" else "")
        elif name in _POSITIVE or (name in _OPTIONAL_POSITIVE and not optional):
            if not _is_number(value) or value <= 0:
                refuse(name, "a number > 0", " (or None, null in JSON, for the default)" if name in _OPTIONAL_POSITIVE else "")
        elif name in _NOT_NEGATIVE or (name in _OPTIONAL_NOT_NEGATIVE and not optional):
            if not _is_number(value) or value < 0:
                refuse(name, "a number >= 0", " (0 or None: no clipping)" if name == "max_grad_norm" else "")
        elif name in _FRACTIONS or (name in _OPTIONAL_FRACTIONS and not optional):
            if not _is_number(value) or not 0 <= value < 1:
                refuse(name, "a number in [0, 1)")
        elif name in _BOOLEANS:
            if not isinstance(value, bool):
                refuse(name, "true or false")
        elif name in _CHOICES:
            if value not in _CHOICES[name]:
                raise ConfigError(f"{owner}: {name} {value!r} is not known; choose one of {list(_CHOICES[name])}.")
        elif name == "mixed_precision":
            check_mixed_precision(value)
        elif name == "report_to":
            check_report_to(value, owner, output_dir=arguments.get("output_dir", ...))
        elif name == "validation_prompts" and not optional:
            if not isinstance(value, (list, tuple)) or not value or not all(isinstance(item, str) and item for item in value):
                refuse(name, 'a non-empty list of prompts (e.g. ["a photo of sks dog", "sks dog on a beach"])',
                       "; for one prompt, validation_prompt works too")
        elif name == "target_modules" and not optional:
            names_ok = isinstance(value, (list, tuple)) and value and all(isinstance(item, str) and item for item in value)
            if value != "all-linear" and not names_ok:
                refuse(name, "a non-empty list of module names, or 'all-linear'")
    if arguments.get("resume_from_checkpoint") and "output_dir" in arguments and arguments["output_dir"] is None:
        raise ConfigError(f"{owner}: resume_from_checkpoint needs output_dir, the folder the checkpoints were written to.")
    if "quantization" in arguments and arguments["quantization"] is not None and not torch.cuda.is_available():
        raise ConfigError(f"{owner}: quantization={arguments['quantization']!r} needs a CUDA GPU (bitsandbytes' 8/4-bit layers "
                          "run on CUDA only) and none is visible; set quantization=None to train in full precision.")


def check_existing_lora(pipeline_settings: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    """Refuse LoRA settings that differ from those of the LoRA the pipeline already has (it is trained further as it is).

    Args:
        pipeline_settings: The existing LoRA's settings, by the train() argument names (`{"rank": 4, ...}`).
        requested: The settings the caller gave (None: take the pipeline's).

    Raises:
        ConfigError: Names each setting that differs, the pipeline's value, and how to train a fresh LoRA.
    """
    differ = {name: (value, pipeline_settings[name]) for name, value in requested.items()
              if value is not None and _normalised(value) != _normalised(pipeline_settings[name])}
    if differ:
        listed = ", ".join(f"{name}={given!r} (the pipeline's LoRA has {had!r})" for name, (given, had) in differ.items())
        raise ConfigError(f"The pipeline already has a LoRA, which training continues as it is, so {listed} cannot apply. "
                          "Leave these out (or give the pipeline's values) to train its LoRA further, or call "
                          "init_model() with a pipeline without a LoRA to train a new one.")


def _normalised(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(sorted(value))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def log_resolved_steps(accelerator: Any, *, plan: Any, learning_rate: float,
                       trainable_parameters: Iterable[torch.nn.Parameter]) -> None:
    """A DEBUG record of what the settings resolved to: processes, device, precision, steps (`plan`, a `StepPlan`),
    learning rate, parameters."""
    if logger.isEnabledFor(logging.DEBUG):
        count = sum(parameter.numel() for parameter in trainable_parameters)
        logger.debug("Resolved settings: %d process(es) on %s, mixed precision %s; %d batches and %d optimizer steps per "
                     "epoch, %d optimizer steps in all; learning rate %g; %d trainable parameters.", accelerator.num_processes,
                     accelerator.device, accelerator.mixed_precision, plan.batches_per_epoch, plan.updates_per_epoch,
                     plan.total_steps, learning_rate, count)
