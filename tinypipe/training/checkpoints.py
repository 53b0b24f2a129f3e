"""Atomic training checkpoints that let a run resume exactly where it stopped.

A checkpoint is a folder `output_dir/checkpoints/checkpoint-<step>/` holding:

- `trainable.safetensors`: the tensors being trained (LoRA weights, learned embeddings, ...);
- `optimizer.safetensors`: every tensor of the optimizer's and LR scheduler's state;
- `rng_state.safetensors`: the torch CPU (and CUDA) RNG states and each named `torch.Generator`;
- `checkpoint.json`: everything else - the optimizer's and scheduler's non-tensor state, the
  Python and NumPy RNG states, and the trainer's own `state` (epoch, position in the epoch, ...);
- `run.json` (when the trainer gives one): the fingerprint of the run that wrote it, the settings
  that change its result (see `run_fingerprint.py`), so a resume continues only its own run;
- `complete.json`: written last, it lists every file with its size and SHA-256, so a truncated or
  altered file is caught at load time.

A save writes into a hidden `.tmp-checkpoint-<step>-<random>/` sibling and renames it into place
only once every file is on disk, so a run killed mid-save never leaves a folder that
`latest_checkpoint` would pick. No pickle is ever written or read.

With the same code and data, N steps in one go give bit-identical weights, optimizer state and
learning rate to N/2 steps, a save, a fresh process that loads it, and N/2 more steps (on CPU).
Under accelerate, only the main process should save: the RNG states are those of the saving process.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config.filelist import sha256_file
from ..files import atomic_folder, fsync_path, read_json, write_marker
from ..errors import ConfigError, RepoError, disk_full_as_error

logger = logging.getLogger(__name__)

__all__ = ["Checkpoint", "checkpoint_run", "complete_checkpoints", "latest_checkpoint", "load_checkpoint",
           "remove_interrupted_checkpoints", "resolve_checkpoint", "restore_trainable", "save_checkpoint"]

CHECKPOINTS_FOLDER = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"
STATE_FILE = "checkpoint.json"
RUN_FILE = "run.json"
COMPLETE_FILE = "complete.json"
FORMAT_VERSION = 1
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
_TEMP_PREFIX = ".tmp-checkpoint-"
_EXPECTED = f"{TRAINABLE_FILE}, {OPTIMIZER_FILE}, {RNG_FILE}, {STATE_FILE} and, written last, {COMPLETE_FILE}"


@dataclass
class Checkpoint:
    """What `load_checkpoint` hands back once the optimizer, scheduler and RNGs are restored.

    Args:
        path (`Path`): The checkpoint folder.
        step (`int`): The training step the checkpoint was saved at.
        trainable (`dict[str, torch.Tensor]`): The trained tensors, on CPU, as saved.
        state (`dict`): The trainer's own state passed to `save_checkpoint` (epoch, position, ...).
    """

    path: Path
    step: int
    trainable: dict[str, torch.Tensor]
    state: dict


def _encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """JSON-able form of a nested state; tensors go into `tensors` and are referenced by `key`.

    Tuples and int-keyed dicts (the optimizer's per-parameter state) are tagged so they come back
    as they were. Tensors are copied: safetensors refuses tensors that share memory (bitsandbytes
    shares one quantization map between all parameters).
    """
    if isinstance(value, torch.Tensor):
        if key in tensors:
            raise TypeError(f"Two tensors of the state would both be stored as {key!r}; rename the key holding '/'.")
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, tensors, f"{key}/{i}") for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, tensors, f"{key}/{i}") for i, item in enumerate(value)]
    if isinstance(value, dict):
        encoded = {str(k): _encode(v, tensors, f"{key}/{k}") for k, v in value.items()}
        if all(isinstance(k, str) for k in value):
            return encoded
        if all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            return {"$int_keys": encoded}
    raise TypeError(f"Cannot store {key!r} (a {type(value).__name__}) in a checkpoint: only tensors, numbers, "
                    "strings, None and lists, tuples and str- or int-keyed dicts of them can be stored.")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_encode`."""
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {"$tensor"}:
        return tensors[value["$tensor"]]
    if value.keys() == {"$tuple"}:
        return tuple(_decode(item, tensors) for item in value["$tuple"])
    if value.keys() == {"$int_keys"}:
        return {int(k): _decode(v, tensors) for k, v in value["$int_keys"].items()}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})
    fsync_path(path)


def _write_json(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """`(step, folder)` of every complete checkpoint under `output_dir`, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS_FOLDER
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(child.name)
        if match and (child / COMPLETE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    generators: dict[str, torch.Generator] | None = None,
    state: dict | None = None,
    total_limit: int | None = None,
    run: dict | None = None,
) -> Path:
    """Save everything needed to resume training at `step`, atomically.

    Args:
        output_dir (`Path`): The training output folder; checkpoints go in its `checkpoints/` sub-folder.
        step (`int`): The number of optimizer steps done; names the folder `checkpoint-<step>`.
        trainable (`dict[str, torch.Tensor]`): The tensors being trained (e.g. the LoRA weights).
        optimizer (`torch.optim.Optimizer`): Any optimizer whose state is tensors and numbers (AdamW,
            bitsandbytes' 8-bit AdamW, ...).
        lr_scheduler (`torch.optim.lr_scheduler.LRScheduler`, *optional*): The learning-rate schedule.
        generators (`dict[str, torch.Generator]`, *optional*): Named generators (noise, timesteps, data
            shuffling) whose state must be restored too.
        state (`dict`, *optional*): The trainer's own JSON-able state: epoch, position in the epoch, ...
        total_limit (`int`, *optional*): Keep at most this many checkpoints of this run; its older ones
            are deleted once the new one is in place. Another run's checkpoints are never deleted nor
            counted. `None` keeps all.
        run (`dict`, *optional*): The fingerprint of the run (JSON-able settings), written to `run.json`.

    Raises:
        RepoError: A checkpoint of another run already sits at `step` (it is never replaced).

    Returns:
        `Path`: The new checkpoint folder.

    Example:
        ```python
        if global_step % checkpointing_steps == 0:
            save_checkpoint(output_dir, global_step, trainable=get_peft_model_state_dict(unet),
                            optimizer=optimizer, lr_scheduler=lr_scheduler, generators={"noise": generator},
                            state={"epoch": epoch, "step_in_epoch": i + 1}, total_limit=3)
        ```
    """
    if total_limit is not None and total_limit < 1:
        raise ConfigError(f"total_limit must be at least 1 (or None to keep all), got {total_limit}.")
    folder = Path(output_dir) / CHECKPOINTS_FOLDER
    target = folder / f"checkpoint-{step}"
    if (target / COMPLETE_FILE).is_file() and checkpoint_run(target) != run:
        raise RepoError(f"{target} belongs to another run; it is not replaced. Write this run's checkpoints into another "
                        "output_dir, or remove that checkpoint.")
    folder.mkdir(parents=True, exist_ok=True)
    # 1. Finish what a killed save or prune left: temp folders are never picked up; delete them.
    remove_interrupted_checkpoints(output_dir)

    # 2. Split the states into tensors (safetensors) and everything else (JSON).
    optimizer_tensors: dict[str, torch.Tensor] = {}
    rng_tensors = {"torch_cpu": torch.get_rng_state()}
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    rng_tensors.update({f"cuda/{index}": cuda_state for index, cuda_state in enumerate(cuda_states)})
    for name, generator in (generators or {}).items():
        rng_tensors[f"generator/{name}"] = generator.get_state()
    optimizer_json = _encode(optimizer.state_dict(), optimizer_tensors, "optimizer")
    scheduler_json = None
    if lr_scheduler is not None:
        scheduler_json = _encode(lr_scheduler.state_dict(), optimizer_tensors, "lr_scheduler")
    numpy_state = np.random.get_state()
    try:  # everything but the caller's `state` is JSON-able by now
        checkpoint_json = json.dumps({
            "format_version": FORMAT_VERSION,
            "step": step,
            "optimizer": optimizer_json,
            "lr_scheduler": scheduler_json,
            "python_random": _encode(random.getstate(), {}, "python_random"),
            "numpy_random": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
            "generators": sorted(generators or {}),
            "cuda_devices": len(cuda_states),
            "state": state or {},
        }, indent=2, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"save_checkpoint(state=...) must be JSON-serializable ({error}); keep tensors in "
                        "`trainable` and only numbers, strings, lists and dicts in `state`.") from error

    # 3. Write every file into a temp folder, the completion marker last, then rename it into place (the same step
    #    saved again replaces the old one, moved aside under the temp name first).
    temp = folder / f"{_TEMP_PREFIX}{step}-{secrets.token_hex(4)}"
    with disk_full_as_error(temp, f"Saving checkpoint {step}"), atomic_folder(target, staging=temp, durable=True):
        _write_checkpoint_files(temp, step, trainable, optimizer_tensors, rng_tensors, checkpoint_json, run)
    logger.info("Saved checkpoint %s", target)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Checkpoint %s: %d trainable tensors; files %s.", target.name, len(trainable),
                     ", ".join(f"{path.name} ({path.stat().st_size} bytes)" for path in sorted(target.iterdir())))

    # 4. Only now that the new checkpoint is complete, delete this run's oldest beyond `total_limit`.
    if total_limit is not None:
        others = [path for _, path in complete_checkpoints(output_dir) if path != target and checkpoint_run(path) == run]
        for old in others[: max(len(others) - (total_limit - 1), 0)]:
            logger.info("Deleting checkpoint %s (total_limit=%d)", old, total_limit)
            _delete_checkpoint(old)
    return target


def _delete_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder so that a kill half-way never leaves a partial `checkpoint-<step>`: first rename it
    to a temp name (one atomic step), then delete that; `remove_interrupted_checkpoints` finishes an interrupted one."""
    doomed = path.with_name(f"{_TEMP_PREFIX}{path.name}-{secrets.token_hex(4)}-deleted")
    path.rename(doomed)
    shutil.rmtree(doomed)


def remove_interrupted_checkpoints(output_dir: Path) -> None:
    """Finish what killed saves and prunes left under `output_dir/checkpoints`: their temp folders (a save's, or a
    pruned checkpoint renamed aside), which nothing loads.

    Args:
        output_dir (`Path`): The training output folder.
    """
    folder = Path(output_dir) / CHECKPOINTS_FOLDER
    if not folder.is_dir():
        return
    for stale in folder.glob(f"{_TEMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_checkpoint_files(temp: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_tensors: dict[str, torch.Tensor],
                            rng_tensors: dict[str, torch.Tensor], checkpoint_json: str, run: dict | None) -> None:
    """Write a checkpoint's files into `temp` (`run.json` if `run` is given), `complete.json` (sizes and hashes of the
    others) last."""
    _write_safetensors(temp / TRAINABLE_FILE, {name: tensor.detach().to("cpu", copy=True).contiguous()
                                               for name, tensor in trainable.items()})
    _write_safetensors(temp / OPTIMIZER_FILE, optimizer_tensors)
    _write_safetensors(temp / RNG_FILE, rng_tensors)
    _write_json(temp / STATE_FILE, checkpoint_json)
    names = [TRAINABLE_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE]
    if run is not None:
        _write_json(temp / RUN_FILE, json.dumps(run, indent=2, sort_keys=True) + "\n")
        names.append(RUN_FILE)
    files = {name: {"size": (temp / name).stat().st_size, "sha256": sha256_file(temp / name)} for name in names}
    write_marker(temp, COMPLETE_FILE, {"step": step, "files": files}, durable=True)


def checkpoint_run(path: Path) -> dict | None:
    """The fingerprint of the run that wrote the checkpoint at `path` (its `run.json`), or `None` if it has none."""
    run_file = Path(path) / RUN_FILE
    return _read_json(run_file) if run_file.is_file() else None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under `output_dir/checkpoints`, or `None`.

    Folders from an interrupted save (temp folders, or no `complete.json`) are ignored.
    """
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(output_dir: Path, resume_from_checkpoint: str | os.PathLike | None) -> Path | None:
    """The checkpoint folder a `resume_from_checkpoint` setting points at.

    Args:
        output_dir (`Path`): The training output folder.
        resume_from_checkpoint (`str` or `os.PathLike`, *optional*): `None` (start from scratch),
            `"latest"` (the latest complete checkpoint of any run, or from scratch if there is none), a path
            to a checkpoint folder, or the bare name of one in `output_dir/checkpoints` (`"checkpoint-500"`).
            Trainers call `run_fingerprint.checkpoint_to_resume`, which also checks the checkpoint is of their run.

    Returns:
        `Path` or `None`: The checkpoint folder to load, or `None` to start from scratch.

    Raises:
        RepoError: The folder does not exist or is not a complete checkpoint.
    """
    if resume_from_checkpoint is None:
        return None
    remove_interrupted_checkpoints(output_dir)
    if str(resume_from_checkpoint) == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            logger.info("resume_from_checkpoint='latest': no checkpoint found in %s, starting from scratch.",
                        Path(output_dir) / CHECKPOINTS_FOLDER)
        return found
    path = Path(resume_from_checkpoint).expanduser()
    in_output_dir = Path(output_dir) / CHECKPOINTS_FOLDER / path
    if not path.exists() and not path.is_absolute() and in_output_dir.exists():
        path = in_output_dir
    if not path.is_dir():
        raise RepoError(f"resume_from_checkpoint={str(resume_from_checkpoint)!r}: the checkpoint folder {path} does "
                        f"not exist. Pass 'latest', None, or a folder containing {_EXPECTED}.")
    if not (path / COMPLETE_FILE).is_file():
        raise RepoError(f"resume_from_checkpoint={str(resume_from_checkpoint)!r}: {path} is not a complete "
                        f"checkpoint (no {COMPLETE_FILE}; its save was probably interrupted). A checkpoint "
                        f"contains {_EXPECTED}. Pick another one, or pass 'latest'.")
    return path


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)  # a regular file of bounded JSON, or RepoError
    except RepoError as error:
        raise RepoError(f"Checkpoint file {error} Resume from another checkpoint.") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise RepoError(f"Checkpoint file {path} is corrupt ({error}); resume from another checkpoint.") from error


@torch.no_grad()
def restore_trainable(parameters: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor], path: Path, settings: str) -> None:
    """Copy a checkpoint's trained tensors into the parameters of the same names, exactly.

    Args:
        parameters (`dict[str, torch.nn.Parameter]`): The parameters this run trains, by name.
        saved (`dict[str, torch.Tensor]`): `Checkpoint.trainable`.
        path (`Path`): The checkpoint, for messages.
        settings (`str`): The settings that decide the trained tensors' names and shapes (`"rank, train_text_encoder"`),
            named in the error.

    Raises:
        ConfigError: The checkpoint holds other tensors, or tensors of other shapes, than this run trains.
    """
    missing, unexpected = sorted(set(parameters) - set(saved)), sorted(set(saved) - set(parameters))
    if missing or unexpected:
        raise ConfigError(f"Checkpoint {path} holds other weights than this run trains (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); resume with the settings it was saved with ({settings}).")
    for name, parameter in parameters.items():
        if saved[name].shape != parameter.shape:
            raise ConfigError(f"Checkpoint {path} holds {name} of shape {tuple(saved[name].shape)}, but this run trains it with "
                              f"shape {tuple(parameter.shape)}; resume with the settings it was saved with ({settings}).")
    for name, parameter in parameters.items():
        parameter.copy_(saved[name])


def load_checkpoint(
    path: Path,
    *,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    generators: dict[str, torch.Generator] | None = None,
) -> Checkpoint:
    """Restore the optimizer, LR scheduler and every RNG from a checkpoint; return the trained tensors.

    Args:
        path (`Path`): A checkpoint folder (see `resolve_checkpoint`).
        optimizer (`torch.optim.Optimizer`): A fresh optimizer over the same parameters, in the same order.
        lr_scheduler (`torch.optim.lr_scheduler.LRScheduler`, *optional*): A fresh scheduler built the same way.
        generators (`dict[str, torch.Generator]`, *optional*): The named generators to restore; every
            name must have been saved.

    Returns:
        `Checkpoint`: The step, the trained tensors (load them into the model) and the trainer's state.

    Raises:
        RepoError: The folder is incomplete, a file is truncated or corrupt, or the checkpoint does
            not fit the optimizer or generators given.
    """
    # 1. Check and read every file before changing anything.
    path = Path(path)
    if not (path / COMPLETE_FILE).is_file():
        raise RepoError(f"{path} is not a complete checkpoint (no {COMPLETE_FILE}); it should contain {_EXPECTED}.")
    for name, expected in _read_json(path / COMPLETE_FILE)["files"].items():
        size = (path / name).stat().st_size if (path / name).is_file() else None
        if size != expected["size"]:
            raise RepoError(f"Checkpoint file {path / name} is missing or truncated ({size} bytes, {expected['size']} "
                            "expected); resume from another checkpoint.")
        if sha256_file(path / name) != expected["sha256"]:
            raise RepoError(f"Checkpoint file {path / name} is corrupt (its SHA-256 differs from the one in "
                            f"{COMPLETE_FILE}); resume from another checkpoint.")
    trainable = _read_safetensors(path / TRAINABLE_FILE)
    saved_tensors = _read_safetensors(path / OPTIMIZER_FILE)
    rng_tensors = _read_safetensors(path / RNG_FILE)
    saved = _read_json(path / STATE_FILE)
    if saved["format_version"] != FORMAT_VERSION:
        raise RepoError(f"Checkpoint file {path / STATE_FILE} has format_version {saved['format_version']}, this "
                        f"tinypipe reads version {FORMAT_VERSION}; resume with the tinypipe version that saved it.")
    missing = sorted(set(generators or {}) - set(saved["generators"]))
    if missing:
        raise RepoError(f"Checkpoint {path} has no state for generators {missing} (it has {saved['generators']}); "
                        "pass the generator names the run was saved with.")

    # 2. Optimizer and scheduler: tensors come back exactly as saved (dtype, bits).
    try:
        optimizer.load_state_dict(_decode(saved["optimizer"], saved_tensors))
    except (KeyError, ValueError) as error:
        raise RepoError(f"Checkpoint {path} does not fit this optimizer ({error}); build it over the same trainable "
                        "parameters, in the same order, as the run that saved it.") from error
    if lr_scheduler is not None and saved["lr_scheduler"] is not None:
        lr_scheduler.load_state_dict(_decode(saved["lr_scheduler"], saved_tensors))

    # 3. Random number generators.
    torch.set_rng_state(rng_tensors["torch_cpu"])
    cuda_states = [rng_tensors[f"cuda/{index}"] for index in range(saved["cuda_devices"])]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    elif cuda_states:
        logger.warning("Checkpoint %s has the RNG states of %d CUDA devices but %d are visible; they are not restored, "
                       "so GPU randomness will differ from the original run.", path, len(cuda_states),
                       torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for name, generator in (generators or {}).items():
        generator.set_state(rng_tensors[f"generator/{name}"])
    random.setstate(_decode(saved["python_random"], {}))
    name, keys, *rest = saved["numpy_random"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    return Checkpoint(path=path, step=saved["step"], trainable=trainable, state=saved["state"])
