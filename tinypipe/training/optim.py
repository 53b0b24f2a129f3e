"""What every trainer shares: the accelerator, seeding, optimizers and learning-rate schedules."""

import contextlib
import logging
import random
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from ..errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

__all__ = ["LR_SCHEDULES", "make_accelerator", "prepare_for_training", "seed_everything", "make_optimizer", "make_lr_scheduler",
           "check_finite_loss", "no_sync_unless", "runs_8bit_adam"]


def make_accelerator(mixed_precision: str, **tracking: Any):
    """A new `accelerate.Accelerator` for one training run; `accelerate launch` decides the processes and devices.

    `tracking` holds the trackers' arguments (`log_with`, `project_config`; see `tracking.tracker_arguments`).

    Without a GPU the accelerator is told so (`cpu=True`): only then does accelerate run several launched
    processes as one data-parallel job on the CPU instead of each process training alone.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    has_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    has_gpu = has_gpu or (hasattr(torch, "xpu") and torch.xpu.is_available())
    # accelerate keeps one AcceleratorState per process and refuses another precision once it exists; each
    # train() is a run of its own (a notebook trains again with other settings), so its settings start afresh.
    # The process group (PartialState) of an `accelerate launch` is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=not has_gpu, **tracking)


def prepare_for_training(accelerator, models: list[torch.nn.Module], optimizer: torch.optim.Optimizer):
    """`accelerator.prepare` the models and optimizer, leaving the models' own `forward` as it was.

    Under mixed precision accelerate wraps each model's `forward` in autocast, in place; left there, the validation
    images and the pipeline `train()` returns would run in another precision than the repo it saves reloads in. So
    the wrapper is taken off again, and the training step runs its forward under `accelerator.autocast()` instead.
    The models returned (DDP-wrapped on several processes) are for the training step only; the pipeline keeps
    the plain ones.

    Returns:
        `(models, optimizer)`: The prepared models (a list) and optimizer.
    """
    prepared = accelerator.prepare(*models, optimizer)
    prepared_models, optimizer = list(prepared[:-1]), prepared[-1]
    for model in prepared_models:
        accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    return prepared_models, optimizer


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

def check_finite_loss(loss: torch.Tensor, step: int, output: Optional[Path]) -> None:
    """Stop training with a clear message when the loss became NaN or infinite at optimizer step `step`.

    Raises:
        TrainingError: Names the step and where the last good checkpoint is.
    """
    if not torch.isfinite(loss):
        raise TrainingError(
            f"The loss became {loss.item()} at step {step}; training stopped and nothing was saved as the result. "
            f"The last good checkpoint (if any) is in {output / 'checkpoints' if output else 'no output_dir'}. "
            "Lower learning_rate, or set max_grad_norm / mixed_precision='no'."
        )


def no_sync_unless(accelerator, models: Iterable[torch.nn.Module], sync: bool):
    """Skip the gradient all-reduce on accumulation steps that do not update (DDP); a no-op otherwise."""
    if sync or accelerator.num_processes == 1:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for model in models:
        stack.enter_context(accelerator.no_sync(model))
    return stack


LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

_warned_8bit_fallback = False


def _bitsandbytes_adamw():
    """bitsandbytes' 8-bit AdamW when it can run here (a CUDA GPU and the package), else None."""
    if not torch.cuda.is_available():
        return None
    try:
        import bitsandbytes
    except ImportError:
        return None
    return bitsandbytes.optim.AdamW8bit


def runs_8bit_adam(use_8bit_adam: bool) -> bool:
    """Whether `make_optimizer(use_8bit_adam=...)` runs bitsandbytes' 8-bit AdamW here (what the trainers record)."""
    return bool(use_8bit_adam) and _bitsandbytes_adamw() is not None


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    *,
    learning_rate: float,
    use_8bit_adam: bool,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 1e-2,
    epsilon: float = 1e-8,
) -> torch.optim.Optimizer:
    """AdamW over `parameters`: bitsandbytes' 8-bit version when asked for and available.

    When `use_8bit_adam` is set but bitsandbytes cannot run (no CUDA GPU, or not installed), this
    says so once per process and uses `torch.optim.AdamW`.
    """
    global _warned_8bit_fallback
    parameters = list(parameters)
    if not parameters:
        raise ConfigError("There is nothing to train: no parameter requires a gradient.")
    if use_8bit_adam:
        adamw_8bit = _bitsandbytes_adamw()
        if adamw_8bit is not None:
            return adamw_8bit(parameters, lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=epsilon)
        if not _warned_8bit_fallback:
            logger.warning("use_8bit_adam=True, but bitsandbytes' 8-bit Adam needs a CUDA GPU and `pip install bitsandbytes`; "
                           "falling back to torch.optim.AdamW.")
            _warned_8bit_fallback = True
    return torch.optim.AdamW(parameters, lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=epsilon)


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    lr_schedule: str,
    warmup_steps: int,
    total_steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
):
    """The learning-rate schedule, via transformers' `get_scheduler` (steps are optimizer steps).

    The schedules are step for step the same as diffusers' `get_scheduler` with the same arguments (what its training
    scripts use); transformers' is taken because every trainer imports transformers already, while importing diffusers
    costs a causal-LM job 0.4 s. `num_cycles` counts the hard restarts of `cosine_with_restarts`; `power` is the
    exponent of `polynomial`.

    Raises:
        ConfigError: An unknown schedule name (the message lists the valid ones).
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule {lr_schedule!r} is not known; choose one of {list(LR_SCHEDULES)}.")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    from transformers.optimization import get_scheduler

    specific = {"cosine_with_restarts": {"num_cycles": num_cycles}, "polynomial": {"power": power}}.get(lr_schedule)
    return get_scheduler(lr_schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         scheduler_specific_kwargs=specific)
