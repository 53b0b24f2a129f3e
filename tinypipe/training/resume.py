"""Where a training loop starts, so that a resumed run does exactly what the uninterrupted run did next.

A checkpoint is saved right after optimizer step `global_step`, before the end-of-epoch work of its epoch
(validation images, metrics). A resumed run therefore re-enters the epoch its checkpoint was saved in, skips the
batches already trained, and does that epoch's end-of-epoch work; a run resumed at its last step trains nothing
more (no extra optimizer step, whatever the steps per epoch) and only redoes what followed the last checkpoint.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from .checkpoints import Checkpoint, load_checkpoint, restore_trainable, save_checkpoint
from .run_fingerprint import checkpoint_to_resume

logger = logging.getLogger(__name__)

__all__ = ["RunCheckpoints", "resume_run", "epochs_to_run", "batches_to_run"]


@dataclass
class RunCheckpoints:
    """Where a run's checkpoints go, how often, and what they hold; the same object saves and resumes them.

    Attributes:
        output: The run's `output_dir` (None: no checkpoints).
        checkpointing_steps: A checkpoint every this many optimizer steps (0 or None: none).
        total_limit: Keep at most this many checkpoints (None: all).
        run: The run's fingerprint (`run_fingerprint`): a resume continues only a checkpoint with the same one.
        trainable: The trained parameters by name, as a checkpoint stores them.
        settings: The settings that decide `trainable`'s shapes, named when a checkpoint does not fit them.
        generators: The run's random generators, saved and restored with each checkpoint.
        save: Writes one checkpoint (`checkpoints.save_checkpoint`; a recipe passes the one its module names).
    """

    output: Optional[Path]
    checkpointing_steps: Optional[int]
    total_limit: Optional[int]
    run: dict[str, Any]
    trainable: Mapping[str, torch.nn.Parameter]
    settings: str
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    save: Callable[..., Path] = save_checkpoint

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trained weights, on the CPU, for a checkpoint."""
        return {name: parameter.detach().cpu().clone() for name, parameter in self.trainable.items()}


def resume_run(checkpoints: RunCheckpoints, resume_from_checkpoint: Any, setup: Any) -> Optional[Checkpoint]:
    """Continue from a checkpoint of this run (never another run's): restore the weights, optimizer, schedule and RNGs.

    Args:
        checkpoints: The run's checkpoints (its folder, fingerprint, trained parameters and generators).
        resume_from_checkpoint: None (start from scratch), `"latest"` or a checkpoint folder.
        setup: The run's `loop.TrainingSetup`: its total steps, and the optimizer and schedule restored in place.

    Returns:
        The checkpoint continued from (its `step` and `state`), or None for a fresh start.

    Raises:
        ConfigError: A resume without `output_dir`, a checkpoint of another run, or one whose weights do not fit
            (naming `checkpoints.settings`).
    """
    path = checkpoint_to_resume(checkpoints.output, resume_from_checkpoint, run=checkpoints.run,
                                total_steps=setup.plan.total_steps, checkpointing_steps=checkpoints.checkpointing_steps)
    if path is None:
        return None
    checkpoint = load_checkpoint(path, optimizer=setup.optimizer, lr_scheduler=setup.lr_scheduler,
                                 generators=checkpoints.generators or None)
    restore_trainable(dict(checkpoints.trainable), checkpoint.trainable, path, checkpoints.settings)
    logger.info("Resumed from %s at step %d", path, checkpoint.step)
    return checkpoint


def epochs_to_run(global_step: int, total_steps: int, updates_per_epoch: int) -> range:
    """The epoch indices a run that has done `global_step` of `total_steps` optimizer steps still enters.

    Args:
        global_step: Optimizer steps done (0 for a fresh run, the checkpoint's step for a resumed one).
        total_steps: Optimizer steps the whole run does.
        updates_per_epoch: Optimizer steps in one epoch.

    Returns:
        From the epoch the step `global_step` belongs to (the one its checkpoint was saved in) to the last epoch.
    """
    last = math.ceil(total_steps / updates_per_epoch)
    current = max(global_step - 1, 0) // updates_per_epoch
    return range(min(current, last - 1), last)


def batches_to_run(global_step: int, total_steps: int, epoch_index: int, updates_per_epoch: int,
                   gradient_accumulation_steps: int, batch_count: int) -> range:
    """The positions of epoch `epoch_index`'s batches still to train on; none once `total_steps` are done.

    Args:
        global_step: Optimizer steps done so far.
        total_steps: Optimizer steps the whole run does.
        epoch_index: The epoch being entered.
        updates_per_epoch: Optimizer steps in one epoch.
        gradient_accumulation_steps: Batches per optimizer step.
        batch_count: Batches in this epoch (on this process).

    Returns:
        A range of batch positions.
    """
    if global_step >= total_steps:
        return range(batch_count, batch_count)
    done = (global_step - epoch_index * updates_per_epoch) * gradient_accumulation_steps
    return range(min(max(done, 0), batch_count), batch_count)
