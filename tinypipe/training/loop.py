"""The training loop every recipe runs, as named pieces with one set of rules for all of them.

- `start_run`: the one settings check (every setting, before any heavy work), the accelerator, the seed.
- `record_effective_arguments`: what the run records is what runs (the epoch count under one name, the optimizer
  that runs, the base model and data as given).
- `plan_steps`: batches per epoch, optimizer steps per epoch and in all, from the data size and the settings.
- `make_optimization`: AdamW and the learning-rate schedule from the shared settings.
- `set_up_training`: the three above, and accelerate's preparation of the models and optimizer, in one call.
- `shard_batches`: this process's share of an epoch's batches.
- `run_epochs`: the loop itself: accumulation, the optimizer step (`optimizer_step`) recorded in `metrics.jsonl`
  and the trackers (`tracking.RunMetrics`), a checkpoint every
  `checkpointing_steps` (`checkpoint_due`), the recipe's end-of-epoch work, and a resumed run skipping what it did.
- `end_of_epoch_due`: whether an epoch does its end-of-epoch work (validation, eval loss).
- `save_run`: the repo (with the run's metrics and loss curve, and the model card), then the end of the run.

A recipe says what is its own: the batches of an epoch, the loss of a batch, and what an epoch ends with.
"""

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..config.card import write_repo_card
from ..errors import ConfigError
from .checkpoints import Checkpoint
from .optim import (
    check_finite_loss,
    make_accelerator,
    make_lr_scheduler,
    make_optimizer,
    no_sync_unless,
    prepare_for_training,
    runs_8bit_adam,
    seed_everything,
)
from .resume import RunCheckpoints, batches_to_run, epochs_to_run
from .settings import check_training_settings, log_resolved_steps
from .tracking import METRICS_FILE, RunMetrics, read_metrics, tracker_arguments, write_run_record

logger = logging.getLogger(__name__)

__all__ = ["EpochEnd", "StepPlan", "start_run", "record_effective_arguments", "plan_steps", "scaled_learning_rate", "make_optimization",
           "TrainingSetup", "set_up_training", "shard_batches", "optimizer_step", "mean_over_processes", "checkpoint_due",
           "end_of_epoch_due", "run_epochs", "save_run"]


@dataclass(frozen=True)
class EpochEnd:
    """What an epoch ended with, for the recipe's end-of-epoch work.

    Attributes:
        index: The epoch's index (from 0).
        global_step: Optimizer steps done so far.
        is_last: Whether the run ends with this epoch.
        losses: The loss of each of the epoch's batches on this process (those before a resume included).
    """

    index: int
    global_step: int
    is_last: bool
    losses: list[float]


@dataclass(frozen=True)
class StepPlan:
    """How many batches and optimizer steps a run does.

    Attributes:
        batches_per_epoch: Batches of one epoch on each process.
        updates_per_epoch: Optimizer steps of one epoch.
        total_steps: Optimizer steps of the whole run.
    """

    batches_per_epoch: int
    updates_per_epoch: int
    total_steps: int

    @property
    def epochs(self) -> int:
        """The epochs the run passes through, the last one perhaps in part (`max_train_steps` can end it early)."""
        return math.ceil(self.total_steps / self.updates_per_epoch)


def start_run(arguments: Mapping[str, Any], owner: str, *, data_forms: str, none_means_default: tuple = ()) -> Any:
    """Check every setting of a run before any heavy work, then start it: its accelerator, everything seeded.

    Args:
        arguments: The recipe's `train` arguments (the setting names of `training/arguments.py`, and its own).
        owner: The recipe, for messages (`"LoRATrainer.train()"`).
        data_forms: The forms of `data` the recipe reads, said when `data` is missing.
        none_means_default: Settings the recipe accepts as None (it then picks the value).

    Returns:
        The run's `accelerate.Accelerator`.

    Raises:
        ConfigError: A setting that cannot work (`check_training_settings`), or no `data`.
    """
    check_training_settings(arguments, owner, none_means_default=none_means_default)
    if arguments["data"] is None:
        raise ConfigError(f"{owner} needs data: {data_forms}.")
    output = arguments.get("output_dir")
    accelerator = make_accelerator(arguments["mixed_precision"], **tracker_arguments(
        arguments.get("report_to", "none"), Path(output) if output is not None else None))
    seed_everything(arguments["seed"])
    return accelerator


def record_effective_arguments(arguments: MutableMapping[str, Any], *, base_model: str, **resolved: Any) -> None:
    """Put into `arguments` (the run's recorded config) what runs (`set_up_training` logs it once the steps are planned).

    The epoch count is recorded as `num_train_epochs` (the `epoch` alias given wins), `use_8bit_adam` as whether
    8-bit Adam runs here, `data` only when it is a path (a list of images is not recorded), `base_model` as the
    pipeline's; `resolved` holds the recipe's own resolved settings (a LoRA's rank, a default learning rate, ...).
    """
    data = arguments.get("data")
    epoch = arguments.get("epoch")
    arguments.update(base_model=base_model, data=data if isinstance(data, (str, Path)) else None,
                     num_train_epochs=epoch if epoch is not None else arguments["num_train_epochs"], epoch=None,
                     use_8bit_adam=runs_8bit_adam(arguments["use_8bit_adam"]), **resolved)


def plan_steps(example_count: int, *, train_batch_size: int, num_processes: int, gradient_accumulation_steps: int,
               num_train_epochs: int, max_train_steps: Optional[int]) -> StepPlan:
    """The step plan of a run over `example_count` examples an epoch.

    Args:
        example_count: Examples in one epoch (all processes together).
        train_batch_size: Examples per batch per process.
        num_processes: Processes training together (each takes every `num_processes`-th batch).
        gradient_accumulation_steps: Batches per optimizer step.
        num_train_epochs: Epochs, used unless `max_train_steps` is given.
        max_train_steps: Optimizer steps of the run, or None.
    """
    batches_per_epoch = math.ceil(math.ceil(example_count / train_batch_size) / num_processes)
    updates_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
    return StepPlan(batches_per_epoch, updates_per_epoch, max_train_steps or num_train_epochs * updates_per_epoch)


def scaled_learning_rate(settings: Mapping[str, Any], num_processes: int) -> float:
    """The run's peak learning rate: `learning_rate`, times batch size x accumulation x processes with `scale_lr`."""
    if not settings["scale_lr"]:
        return settings["learning_rate"]
    return settings["learning_rate"] * settings["gradient_accumulation_steps"] * settings["train_batch_size"] * num_processes


def save_run(trainer: Any, pipeline: Any, accelerator: Any, output: Optional[Path],
             also_write: Optional[Callable[[Path], None]] = None, **save_arguments: Any) -> None:
    """Write the run's repo on the main process, then end the run (and its trackers).

    The repo: the pipeline; the trainer with its recorded config and the run's record (`trainer/metrics.jsonl`,
    `trainer/loss.png`, listed in its `filelist.txt`); the recipe's other files; and the model card (`README.md`,
    unless one of the user's is there).

    Args:
        trainer: The trainer, its `train_config` set to the run's effective arguments.
        pipeline: The trained pipeline.
        accelerator: The run's accelerator.
        output: The run's `output_dir`; None writes nothing.
        also_write: Writes the recipe's other files into `output` (validation images, metrics).
        **save_arguments: Passed to the pipeline's `save_pretrained` (a LoRA's `export_formats`, `trained_with`).
    """
    if output is not None and accelerator.is_main_process:
        records = read_metrics(output / METRICS_FILE)
        pipeline.save_pretrained(output, **save_arguments)
        trainer.run_record = lambda folder: write_run_record(records, folder)
        try:
            trainer.save_pretrained(output)
        finally:
            trainer.run_record = None
        if also_write is not None:
            also_write(output)
        write_repo_card(output)
    accelerator.end_training()


def make_optimization(parameters: Sequence[torch.nn.Parameter], settings: Mapping[str, Any], *, learning_rate: float,
                      use_8bit_adam: bool, total_steps: int) -> tuple:
    """AdamW over `parameters` and its learning-rate schedule, from the run's shared settings.

    Args:
        parameters: What trains.
        settings: The run's arguments (`adam_beta1`, `adam_beta2`, `adam_weight_decay`, `adam_epsilon`, `lr_schedule`,
            `warmup_steps`, `lr_num_cycles`, `lr_power`).
        learning_rate: The peak learning rate (already scaled by `scale_lr`).
        use_8bit_adam: Whether 8-bit Adam was asked for (it falls back to AdamW, said once, where it cannot run).
        total_steps: Optimizer steps of the run (the schedule's length).

    Returns:
        `(optimizer, lr_scheduler)`.
    """
    optimizer = make_optimizer(parameters, learning_rate=learning_rate, use_8bit_adam=use_8bit_adam,
                               betas=(settings["adam_beta1"], settings["adam_beta2"]),
                               weight_decay=settings["adam_weight_decay"], epsilon=settings["adam_epsilon"])
    lr_scheduler = make_lr_scheduler(optimizer, lr_schedule=settings["lr_schedule"], warmup_steps=settings["warmup_steps"],
                                     total_steps=total_steps, num_cycles=settings["lr_num_cycles"], power=settings["lr_power"])
    return optimizer, lr_scheduler


@dataclass
class TrainingSetup:
    """What trains and how: the step plan, the prepared models and optimizer, the schedule, the parameters.

    Attributes:
        plan: The run's step plan.
        models: The models that train, prepared by accelerate (DDP-wrapped on several processes); for the step only.
        optimizer: AdamW (or 8-bit AdamW), prepared.
        lr_scheduler: The learning-rate schedule, stepped once per optimizer step.
        parameters: The parameters that train.
        learning_rate: The peak learning rate (scaled with `scale_lr`).
    """

    plan: StepPlan
    models: list[torch.nn.Module]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    parameters: list[torch.nn.Parameter]
    learning_rate: float


def set_up_training(accelerator: Any, settings: MutableMapping[str, Any], *, example_count: int,
                    models: Sequence[torch.nn.Module], parameters: Sequence[torch.nn.Parameter],
                    use_8bit_adam: bool, description: str) -> TrainingSetup:
    """Plan the steps, log the run's settings, build the optimizer and schedule, and let accelerate prepare the models
    and optimizer.

    When `max_train_steps` decides the run's length, `settings["num_train_epochs"]` becomes the epochs it passes
    through, so the run records (and logs, as `<description> training with {...}`) what runs, as diffusers' training
    scripts do, not the default it overrode.

    Args:
        accelerator: The run's accelerator.
        settings: The run's effective arguments (steps, batch size, optimizer and schedule settings).
        example_count: Examples in one epoch.
        models: The models that train.
        parameters: The parameters that train (of `models`).
        use_8bit_adam: Whether 8-bit Adam was asked for.
    """
    plan = plan_steps(example_count, train_batch_size=settings["train_batch_size"], num_processes=accelerator.num_processes,
                      gradient_accumulation_steps=settings["gradient_accumulation_steps"],
                      num_train_epochs=settings["num_train_epochs"], max_train_steps=settings["max_train_steps"])
    settings["num_train_epochs"] = plan.epochs
    logger.info("%s training with %s", description, json.dumps(dict(settings), sort_keys=True, default=str))
    parameters = list(parameters)
    learning_rate = scaled_learning_rate(settings, accelerator.num_processes)
    log_resolved_steps(accelerator, plan=plan, learning_rate=learning_rate, trainable_parameters=parameters)
    optimizer, lr_scheduler = make_optimization(parameters, settings, learning_rate=learning_rate, use_8bit_adam=use_8bit_adam,
                                                total_steps=plan.total_steps)
    prepared, optimizer = prepare_for_training(accelerator, list(models), optimizer)
    return TrainingSetup(plan, prepared, optimizer, lr_scheduler, parameters, learning_rate)


def shard_batches(batches: Sequence[list[int]], accelerator: Any) -> list[list[int]]:
    """This process's share of an epoch's batches: every `num_processes`-th one, from its rank on.

    Every process gets the same number of batches: the list wraps around to its start where it does not divide.
    """
    if accelerator.num_processes == 1:
        return list(batches)
    count = math.ceil(len(batches) / accelerator.num_processes) * accelerator.num_processes
    padded = [batches[index % len(batches)] for index in range(count)]
    return padded[accelerator.process_index::accelerator.num_processes]


def optimizer_step(accelerator: Any, optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                   parameters: Sequence[torch.nn.Parameter], max_grad_norm: Optional[float]) -> Optional[float]:
    """One optimizer step: clip the gradients (when `max_grad_norm` is set), step, advance the schedule, clear them.

    The schedule is stepped here, once per optimizer step, so it means the same with any number of processes.

    Returns:
        The gradients' total norm before clipping, when `max_grad_norm` is set (else None: it is not computed).
    """
    grad_norm = None
    if max_grad_norm:
        norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)
        grad_norm = float(norm) if norm is not None else None  # None where the backend clips by itself (DeepSpeed)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def checkpoint_due(checkpoints: RunCheckpoints, global_step: int, accelerator: Any) -> bool:
    """Whether the main process writes a checkpoint after optimizer step `global_step`."""
    return (checkpoints.output is not None and bool(checkpoints.checkpointing_steps)
            and global_step % checkpoints.checkpointing_steps == 0 and accelerator.is_main_process)


def mean_over_processes(accelerator: Any, values: Sequence[float]) -> float:
    """The mean of `values` (this process's batch losses of one optimizer step), averaged over the processes."""
    mean = torch.tensor(sum(values) / len(values), device=accelerator.device)
    if accelerator.num_processes > 1:
        mean = accelerator.reduce(mean, reduction="mean")
    return float(mean)


def end_of_epoch_due(epoch_index: int, every: int, is_last: bool) -> bool:
    """Whether epoch `epoch_index` (from 0) ends with the end-of-epoch work done every `every` epochs and at the end."""
    return (epoch_index + 1) % every == 0 or is_last


def run_epochs(
    accelerator: Any,
    setup: TrainingSetup,
    settings: Mapping[str, Any],
    *,
    checkpoints: RunCheckpoints,
    resumed: Optional[Checkpoint],
    epoch_batches: Callable[[int], list[list[int]]],
    batch_loss: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
    end_of_epoch: Callable[[EpochEnd], None],
    extra_state: Callable[[], dict] = dict,
    description: str = "Training",
) -> int:
    """Train from where `resumed` left off (or from step 0) to `setup.plan.total_steps` optimizer steps.

    Args:
        accelerator: The run's `accelerate.Accelerator`.
        setup: What trains and how (`set_up_training`).
        settings: The run's effective arguments (`gradient_accumulation_steps`, `max_grad_norm`).
        checkpoints: Where checkpoints go, how often, and what they hold.
        resumed: The checkpoint the run continues from (`resume_run`), or None.
        epoch_batches: Epoch index -> this process's batches of example indices (a pure function of the seed and
            the epoch, so a resumed run sees the same ones).
        batch_loss: Batch -> `(loss, objective)`: the loss shown and checked for NaN, and what is back-propagated
            (divided by `gradient_accumulation_steps`). Called under `accelerator.autocast()`.
        end_of_epoch: The recipe's end-of-epoch work (validation images, the eval loss), given the `EpochEnd`.
        extra_state: What else each checkpoint's state records (e.g. the metrics so far).
        description: The progress bar's label.

    Returns:
        The optimizer steps done (`plan.total_steps`).
    """
    plan, models, optimizer, lr_scheduler = setup.plan, setup.models, setup.optimizer, setup.lr_scheduler
    gradient_accumulation_steps = settings["gradient_accumulation_steps"]
    global_step = resumed.step if resumed is not None else 0
    resumed_epoch = resumed.state.get("epoch") if resumed is not None else None
    progress = tqdm(total=plan.total_steps, initial=global_step, desc=description, disable=not accelerator.is_main_process)
    metrics = RunMetrics(accelerator, settings, checkpoints.output, global_step if resumed is not None else None)
    for epoch_index in epochs_to_run(global_step, plan.total_steps, plan.updates_per_epoch):
        for model in models:
            model.train()
        batches = epoch_batches(epoch_index)
        # The losses of the batches before the checkpoint, when the run resumes inside this epoch.
        epoch_losses = list(resumed.state.get("epoch_losses", [])) if epoch_index == resumed_epoch else []
        step_losses: list[float] = []  # the losses of the batches the next optimizer step accumulates
        for position in batches_to_run(global_step, plan.total_steps, epoch_index, plan.updates_per_epoch,
                                       gradient_accumulation_steps, len(batches)):
            is_update = (position + 1) % gradient_accumulation_steps == 0 or position == len(batches) - 1
            with no_sync_unless(accelerator, models, is_update):
                with accelerator.autocast():
                    loss, objective = batch_loss(batches[position])
                check_finite_loss(loss, global_step + 1, checkpoints.output)
                accelerator.backward(objective / gradient_accumulation_steps)
            epoch_losses.append(loss.item())
            step_losses.append(loss.item())
            if not is_update:
                continue
            learning_rate = lr_scheduler.get_last_lr()[0]  # the rate this step updates with
            grad_norm = optimizer_step(accelerator, optimizer, lr_scheduler, setup.parameters, settings["max_grad_norm"])
            global_step += 1
            step_loss = mean_over_processes(accelerator, step_losses)
            step_losses = []
            metrics.log_step(global_step, loss=step_loss, learning_rate=learning_rate, epoch=epoch_index, grad_norm=grad_norm)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{learning_rate:.2e}")
            if checkpoint_due(checkpoints, global_step, accelerator):
                checkpoints.save(checkpoints.output, global_step, trainable=checkpoints.trainable_state(),
                                 optimizer=optimizer, lr_scheduler=lr_scheduler, generators=checkpoints.generators,
                                 state={"epoch": epoch_index, "epoch_losses": epoch_losses, **extra_state()},
                                 total_limit=checkpoints.total_limit, run=checkpoints.run)
            if global_step >= plan.total_steps:
                break
        is_last = global_step >= plan.total_steps
        end_of_epoch(EpochEnd(epoch_index, global_step, is_last, epoch_losses))
        if is_last:
            break
    progress.close()
    return global_step
