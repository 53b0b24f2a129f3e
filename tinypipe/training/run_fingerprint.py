"""The fingerprint of a training run, and which checkpoint a resume may continue from.

A run's fingerprint is its effective settings that change its result: the data (the SHA-256 of its
content, and where it came from), the base model, the method and its settings (LoRA rank and targets,
prompts, ...), the learning rate and schedule, batch sizes, the seed, the precision, the number of
processes. Not in it: where the output goes, the resume itself, how often checkpoints and validation
images are written, and settings that only trade memory for time. The length of the run counts only
where the schedule depends on it (`total_steps`): with a constant schedule, a longer run of the same
settings continues a shorter one exactly, as diffusers' scripts allow.

Every checkpoint carries the fingerprint as readable JSON (`checkpoint-<step>/run.json`), so:

- `resume_from_checkpoint="latest"` continues the newest checkpoint *of this run*; other runs'
  checkpoints in the same `output_dir` are left alone, and a warning says so;
- a checkpoint named explicitly that belongs to another run, or lies past this run's total steps, is
  refused before any training, listing the settings that differ and how to start fresh;
- a run never writes its checkpoint in place of another run's, and `checkpoints_total_limit` counts
  and deletes only its own (`save_checkpoint(run=...)`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ..errors import ConfigError
from ..files import read_json
from .checkpoints import (
    CHECKPOINTS_FOLDER,
    COMPLETE_FILE,
    RUN_FILE,
    checkpoint_run,
    complete_checkpoints,
    remove_interrupted_checkpoints,
    resolve_checkpoint,
)

logger = logging.getLogger(__name__)

__all__ = ["NOT_RUN_SETTINGS", "content_digest", "run_fingerprint", "checkpoint_to_resume"]

NOT_RUN_SETTINGS = frozenset({
    # Where the results go (and in which extra file formats), and the resume itself.
    "output_dir", "export_formats", "resume_from_checkpoint",
    # How often checkpoints and validation images are written, and what the validation shows.
    "checkpointing_steps", "checkpoints_total_limit", "validation_prompt", "num_validation_images", "validation_epochs",
    "validation_inference_steps", "validation_guidance_scale", "validation_data",
    # Memory for time: the same result either way.
    "gradient_checkpointing",
    # The run's length, and aliases: the trainer gives their effective values (`total_steps`, `train_batch_size`).
    "num_train_epochs", "epoch", "max_train_steps", "batch_size",
})
SCHEDULES_WITHOUT_END = ("constant", "constant_with_warmup")
_SHOWN_LENGTH = 40


def content_digest(items: Iterable[bytes | str]) -> str:
    """SHA-256 of a sequence of byte strings (or text), with each item's length, so no two sequences collide.

    Example:
        ```python
        data_sha256 = content_digest(json.dumps([example.input_ids, example.labels]) for example in train_set)
        ```
    """
    digest = hashlib.sha256()
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def run_fingerprint(arguments: Mapping[str, Any], *, total_steps: int, **effective: Any) -> dict[str, Any]:
    """The settings that identify a run, as JSON-able values.

    Args:
        arguments (`Mapping[str, Any]`): The trainer's effective `train()` arguments (as recorded in its config).
        total_steps (`int`): The optimizer steps of the run; part of the fingerprint unless the learning-rate
            schedule is constant (`lr_schedule` in `arguments`).
        **effective: Further values that decide the result and are not arguments (`data_sha256`, `num_processes`),
            or the effective value of an argument given through an alias (`train_batch_size`).

    Returns:
        `dict[str, Any]`: The fingerprint, as `run.json` stores it.
    """
    settings = {name: value for name, value in arguments.items() if name not in NOT_RUN_SETTINGS}
    settings.update(effective)
    if settings.get("lr_schedule") not in SCHEDULES_WITHOUT_END:
        settings["total_steps"] = total_steps
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= _SHOWN_LENGTH else text[:_SHOWN_LENGTH - 3] + "..."


def _differences(saved: dict[str, Any], run: dict[str, Any]) -> str:
    """`"learning_rate is 0.001 there, 0.0005 here; ..."`: the settings in which two fingerprints differ."""
    missing = object()
    parts = []
    for name in sorted(set(saved) | set(run)):
        there, here = saved.get(name, missing), run.get(name, missing)
        if there != here:
            parts.append(f"{name} is {'not set' if there is missing else _shown(there)} there, "
                         f"{'not set' if here is missing else _shown(here)} here")
    return "; ".join(parts)


def _step(path: Path) -> int:
    return int(read_json(path / COMPLETE_FILE)["step"])


def _not_this_run(path: Path, run: dict[str, Any], total_steps: int) -> Optional[str]:
    """Why the checkpoint at `path` cannot continue this run, or None if it can."""
    saved = checkpoint_run(path)
    if saved is None:
        return (f"{path} has no {RUN_FILE} (it was written by an older tinypipe), so it cannot be shown to belong to this run")
    if saved != run:
        return f"{path} belongs to another run ({_differences(saved, run)}; its settings are in {path / RUN_FILE})"
    if _step(path) > total_steps:
        return (f"{path} is at step {_step(path)}, past this run's total of {total_steps} steps "
                "(raise max_train_steps or num_train_epochs to continue it)")
    return None


def checkpoint_to_resume(output_dir: Optional[Path], resume_from_checkpoint: Any, *, run: dict[str, Any], total_steps: int,
                         checkpointing_steps: Optional[int]) -> Optional[Path]:
    """The checkpoint this run continues from, after checking it belongs to this run; None to start from scratch.

    Args:
        output_dir (`Path`, *optional*): The training output folder (None: the run writes nothing).
        resume_from_checkpoint: `None`, `"latest"` (the newest checkpoint of this run; from scratch if there is none),
            a checkpoint folder, or the name of one in `output_dir/checkpoints`.
        run (`dict`): This run's fingerprint (`run_fingerprint`).
        total_steps (`int`): The run's optimizer steps.
        checkpointing_steps (`int`, *optional*): Every how many steps the run writes a checkpoint.

    Returns:
        `Path` or `None`: The checkpoint to load.

    Raises:
        ConfigError: A resume without `output_dir`; a checkpoint of another run, or past this run's total steps;
            or a checkpoint of another run at a step this run would write one (it is never replaced).
        RepoError: The checkpoint named does not exist or is incomplete.
    """
    if resume_from_checkpoint and output_dir is None:
        raise ConfigError("resume_from_checkpoint needs output_dir, the folder the checkpoints were written to.")
    if output_dir is None:
        return None
    if resume_from_checkpoint is not None:
        remove_interrupted_checkpoints(output_dir)  # finish what a killed save or prune left
    folder = Path(output_dir) / CHECKPOINTS_FOLDER
    fresh_start = f"start fresh with another output_dir, or remove {folder}"
    checkpoints = complete_checkpoints(output_dir)
    others = [(step, path) for step, path in checkpoints if checkpoint_run(path) != run]
    # 1. The checkpoint to continue from, refused unless it is this run's.
    path = None
    if str(resume_from_checkpoint) == "latest" and not checkpoints:
        logger.info("resume_from_checkpoint='latest': no checkpoint found in %s, starting from scratch.", folder)
    elif str(resume_from_checkpoint) == "latest":
        own = [path for _, path in checkpoints if checkpoint_run(path) == run]
        path = own[-1] if own else None
        if others:
            logger.warning("resume_from_checkpoint='latest': %s holds %d checkpoint(s) of other runs (%s), left alone (the newest: %s); %s",
                           folder, len(others), ", ".join(other.name for _, other in others),
                           _not_this_run(others[-1][1], run, total_steps),
                           f"continuing this run's {path.name}." if path else "none is of this run, so it starts from scratch.")
    elif resume_from_checkpoint is not None:
        path = resolve_checkpoint(output_dir, resume_from_checkpoint)
    if path is not None:
        reason = _not_this_run(path, run, total_steps)
        if reason is not None:
            raise ConfigError(f"resume_from_checkpoint={str(resume_from_checkpoint)!r}: {reason}. Continue it with its settings, "
                              f"or {fresh_start}.")
    # 2. Never write a checkpoint in place of another run's.
    start = _step(path) if path is not None else 0
    if checkpointing_steps:
        in_the_way = [other for step, other in others if start < step <= total_steps and step % checkpointing_steps == 0]
        if in_the_way:
            reason = _not_this_run(in_the_way[0], run, total_steps)
            raise ConfigError(f"This run would write its checkpoint {in_the_way[0].name} in place of another run's: {reason}. "
                              f"Remove it or {fresh_start}.")
    return path
