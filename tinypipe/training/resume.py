"""Where a training loop starts, so that a resumed run does exactly what the uninterrupted run did next.

A checkpoint is saved right after optimizer step `global_step`, before the end-of-epoch work of its epoch
(validation images, metrics). A resumed run therefore re-enters the epoch its checkpoint was saved in, skips the
batches already trained, and does that epoch's end-of-epoch work; a run resumed at its last step trains nothing
more (no extra optimizer step, whatever the steps per epoch) and only redoes what followed the last checkpoint.
"""

import math

__all__ = ["epochs_to_run", "batches_to_run"]


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
