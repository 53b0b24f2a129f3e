"""Running the CLI's training jobs: check a request, record it as a job, run it here or in the background.

`check_request` validates everything it can before a job exists (data set, method, training arguments), so
bad input fails at once with a clear message and no job. `run_job` executes a recorded job - in the
foreground process or in a detached `python -m tinypipe run-job ID` - and records how it ended.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError, DataError, TinypipeError
from .jobs import ACTIVE, Job, JobError, JobStore, process_started

__all__ = ["DIFFUSER_METHODS", "TrainRequest", "cancel_job", "check_request", "run_job", "start_detached"]

logger = logging.getLogger(__name__)

# method -> (trainer module, trainer class, its train-config class)
DIFFUSER_METHODS = {
    "lora": ("tinypipe.trainers.lora", "LoRATrainer", "LoRATrainConfig"),
    "dreambooth": ("tinypipe.trainers.dreambooth", "DreamBoothTrainer", "DreamBoothTrainConfig"),
    "textual-inversion": ("tinypipe.trainers.textual_inversion", "TextualInversionTrainer", "TextualInversionTrainConfig"),
}
LM_METHOD = ("tinypipe.trainers.causal_lm", "CausalLMTrainer", "CausalLMTrainConfig")
# Given by the command's own arguments, so not accepted in --training-args.
_RESERVED = {"data": "DATASET", "base_model": "MODEL", "output_dir": "--output", "filter_fn": "(Python only)"}


@dataclass
class TrainRequest:
    """What a `train-diffuser` / `train-lm` command asks for, as stored in the job record."""

    kind: str  # "train-diffuser" or "train-lm"
    name: str
    method: str
    model: str
    dataset: str
    revision: Optional[str] = None
    log_level: str = "INFO"
    train_arguments: dict = field(default_factory=dict)  # the trainer's train() keyword arguments
    resumed_from: Optional[str] = None  # the job this one resumed (records of older versions, whose resume made a new job)

    def trainer_path(self) -> tuple[str, str, str]:
        """The trainer that runs: chosen by the command and `--method` alone, never by another option."""
        if self.kind == "train-lm":
            return LM_METHOD
        return DIFFUSER_METHODS[self.method]


def _import(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def parse_training_args(text: Optional[str]) -> dict:
    """`--training-args` as a dict.

    Raises:
        ConfigError: Not JSON (with the line and column), or not a JSON object.
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--training-args is not valid JSON: {error.msg} at line {error.lineno} column {error.colno} "
                          f"(near {text[max(0, error.pos - 10):error.pos + 10]!r}). Example: "
                          """'{"num_train_epochs": 5, "learning_rate": 1e-4}'.""") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--training-args must be a JSON object like '{{\"learning_rate\": 1e-4}}', not {type(value).__name__}.")
    return value


def check_request(request: TrainRequest) -> None:
    """Check the method, the training arguments and the data set before any job exists.

    Raises:
        ConfigError: An unknown method or training argument (the valid ones are listed), a value that cannot work
            here (a `mixed_precision` this machine cannot run, a count <= 0, ...), or options that do not fit.
        DataError: A missing, empty or unreadable data set.
    """
    from .models.base_models import check_base_model

    if request.kind == "train-diffuser" and request.method not in DIFFUSER_METHODS:
        raise ConfigError(f"Unknown --method {request.method!r}; use one of {', '.join(DIFFUSER_METHODS)}.")
    model_kind = "causal-lm" if request.kind == "train-lm" else "diffusion"
    # a built-in name or a local folder is checked at once, before the trainer's libraries load (seconds); a hub id
    # after the training arguments, which need no network
    model_is_local = request.model.startswith("tinypipe/") or Path(request.model).exists()
    if model_is_local:
        check_base_model(request.model, kind=model_kind, revision=request.revision)
    from .config.base import check_unknown_keys
    from .training.settings import check_training_settings

    module, _, config_name = request.trainer_path()
    config_class = _import(module, config_name)
    valid = [name for name in config_class._valid_argument_names() if name not in _RESERVED]
    for key in request.train_arguments:
        if key in _RESERVED:
            raise ConfigError(f"--training-args may not set {key!r}; give it as {_RESERVED[key]} instead.")
    check_unknown_keys(request.train_arguments, valid, "--training-args", "keys")
    for key, value in request.train_arguments.items():
        _check_type(key, value, config_class._arguments_signature.parameters[key].default)
    defaults_to_none = tuple(name for name, parameter in config_class._arguments_signature.parameters.items()
                             if parameter.default is None)
    check_training_settings(request.train_arguments, "--training-args", none_means_default=defaults_to_none)
    if not model_is_local:
        check_base_model(request.model, kind=model_kind, revision=request.revision)
    elif request.kind == "train-diffuser":
        _check_family_options(request, config_class)
    _check_dataset(request)


def _check_family_options(request: TrainRequest, config_class: Any) -> None:
    """Refuse a method or export format the base model's family does not take, before any job exists (the trainer
    checks the same once the model is loaded; a hub model's family is known only then)."""
    from .builtin import BUILTIN_FAMILIES
    from .config.export_formats import check_export_formats
    from .families import family_named, family_of
    from .families.base import method_of

    index = Path(request.model) / "model_index.json"
    if request.model in BUILTIN_FAMILIES:
        family = family_named(BUILTIN_FAMILIES[request.model])
    elif index.is_file():
        family = family_of(index)
    else:
        return
    given = {name: request.train_arguments.get(name, parameter.default)
             for name, parameter in config_class._arguments_signature.parameters.items()}
    family.check_method(method_of(request.method, given))
    check_export_formats(given.get("export_formats") or (), family.name)


# The type of the training arguments whose default is None (the others take the type of their default).
_OPTIONAL_TYPES = {
    "max_train_steps": int, "epoch": int, "resolution": int, "checkpoints_total_limit": int, "batch_size": int,
    "lora_alpha": float, "snr_gamma": float, "max_grad_norm": float, "rank": int, "r": int, "lora_dropout": float,
    "learning_rate": float, "target_modules": list,
    "instance_prompt": str, "validation_prompt": str, "validation_prompts": list, "class_prompt": str, "class_data_dir": str,
    "placeholder_token": str,
    "initializer_token": str, "quantization": str, "revision": str, "resume_from_checkpoint": str,
}
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _check_type(key: str, value: Any, default: Any) -> None:
    """Refuse a `--training-args` value of the wrong JSON type, naming the key, the type expected and the value given."""
    expected = _OPTIONAL_TYPES.get(key) if default is None else type(default)
    if expected is tuple:
        expected = list
    if value is None or expected not in _TYPE_NAMES:
        return
    if expected is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif expected is list:
        fits = isinstance(value, (list, str))  # a list of names, or one name / pattern such as "all-linear"
    else:
        fits = isinstance(value, expected)
    if not fits:
        raise ConfigError(f"--training-args {key!r} must be {_TYPE_NAMES[expected]}, got {json.dumps(value)} "
                          f"({type(value).__name__}). Example: '{{\"{key}\": {json.dumps(_example(expected, default))}}}'.")


def _example(expected: type, default: Any) -> Any:
    return default if default is not None else {bool: True, int: 100, float: 1e-4, str: "...", list: []}[expected]


def _check_dataset(request: TrainRequest) -> None:
    if request.kind == "train-lm":
        from .data.chat_formats import load_training_data

        load_training_data(request.dataset, field_map=request.train_arguments.get("field_map"), log=False)
        return
    from .builtin import builtin_names
    from .data.images import load_image_examples

    named = builtin_names("images")
    if request.dataset not in named and not Path(request.dataset).exists():
        raise DataError(f"The data set {request.dataset} does not exist; give a folder of images, a JSON file listing "
                        f"images (and captions), a .zip of images, or {', '.join(named)}.")
    caption = request.train_arguments.get("instance_prompt") or request.train_arguments.get("validation_prompt")
    if request.method == "textual-inversion":
        caption = caption or "a photo"  # textual inversion writes its own captions from templates
    load_image_examples(request.dataset, default_caption=caption)


def placeholder_from_prompt(prompt: str) -> Optional[str]:
    """The first `<token>` in a prompt (`"a photo of <sks-shape>"` -> `"<sks-shape>"`), if any."""
    found = re.search(r"<[^<>\s]+>", prompt)
    return found.group(0) if found else None


# -- running ----------------------------------------------------------------------------------------


class _Cancelled(BaseException):
    """Raised in a job's process by SIGTERM (`tinypipe cancel`)."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Cancelled()


def _configure_logging(level: str, log_file: Optional[Path]) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    root = logging.getLogger()
    root.handlers[:] = handlers  # the caller's handlers are put back by run_job, not closed here
    root.setLevel(logging.WARNING)
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("tinypipe").setLevel(level)


# The libraries whose FutureWarnings / UserWarnings (deprecations, notices meant for their own developers) a normal run
# does not show; `--log-level DEBUG` shows every warning.
_LIBRARIES = r"(torch|diffusers|transformers|peft|accelerate|huggingface_hub|safetensors|tensorboard|wandb)(\..*)?$"


def _configure_library_warnings(level: str) -> None:
    """Hide the libraries' FutureWarnings and UserWarnings on a normal run; show every warning (once) under DEBUG."""
    if level == "DEBUG":
        warnings.simplefilter("default")
        return
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)


def run_job(store: JobStore, job: Job, *, foreground: bool) -> int:
    """Run a recorded job and record how it ended.

    Args:
        store: The job store.
        job: The job (queued).
        foreground: Log to the terminal as well as to the job's log file (a detached job's stdout and stderr
            already go to its log file).

    Returns:
        The exit code: 0 succeeded, 1 failed, 2 failed on bad input, 130 cancelled.
    """
    root, package = logging.getLogger(), logging.getLogger("tinypipe")
    saved = root.handlers[:], root.level, package.level
    try:
        with warnings.catch_warnings():
            _configure_library_warnings(TrainRequest(**job.arguments).log_level)
            return _run_recorded_job(store, job, foreground=foreground)
    finally:  # the caller's logging as it was (a job run in-process, from Python or a test, leaves no handler behind)
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        package.setLevel(saved[2])


def _run_recorded_job(store: JobStore, job: Job, *, foreground: bool) -> int:
    request = TrainRequest(**job.arguments)
    _configure_logging(request.log_level, job.log_file if foreground else None)
    if not store.start(job.id):
        logger.warning("Job %s was cancelled before it started.", job.id)
        return 130
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        logger.info("Job %s (%s, %s) started in process %d; output %s", job.id, job.name, request.method, os.getpid(), job.output)
        _train(request, job.output)
    except (_Cancelled, KeyboardInterrupt):
        store.finish(job.id, "cancelled", "cancelled by the user")
        logger.warning("Job %s cancelled; its checkpoints (if any) are in %s.", job.id, job.output / "checkpoints")
        return 130
    except TinypipeError as error:
        store.finish(job.id, "failed", str(error))
        logger.error("Job %s failed: %s", job.id, error)
        return 2
    except Exception as error:  # noqa: BLE001 - any crash is recorded, with its traceback in the log
        store.finish(job.id, "failed", f"{type(error).__name__}: {error}")
        logger.error("Job %s failed:\n%s", job.id, traceback.format_exc())
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    store.finish(job.id, "succeeded")
    logger.info("Job %s succeeded; the repo is %s", job.id, job.output)
    return 0


def _train(request: TrainRequest, output: Path) -> None:
    module, trainer_name, _ = request.trainer_path()
    trainer = _import(module, trainer_name)()
    arguments = dict(request.train_arguments)
    if request.kind == "train-lm":
        from .models.causal_lm import CausalLMPipeline

        trainer.init_model(CausalLMPipeline(request.model, revision=request.revision, quantization=arguments.get("quantization")))
    else:
        from .models.diffusion import DiffusionPipeline

        trainer.init_model(DiffusionPipeline(request.model, revision=request.revision))
    trainer.train(data=request.dataset, output_dir=str(output), **arguments)


def run_unrecorded(request: TrainRequest, output: Path) -> int:
    """Run a request without a job record: the non-main processes of an `accelerate launch`."""
    _configure_logging(request.log_level, None)
    _configure_library_warnings(request.log_level)
    _train(request, output)
    return 0


def start_detached(store: JobStore, job: Job) -> int:
    """Start `python -m tinypipe run-job ID` in its own session, writing to the job's log; returns its pid."""
    with open(job.log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tinypipe", "run-job", job.id],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    store.attach_process(job.id, process.pid)
    process.returncode = 0  # it outlives this process on purpose: do not warn that it is still running
    return process.pid


def cancel_job(store: JobStore, job_id: str) -> Job:
    """Mark an active job cancelled and stop its process (SIGTERM to its process group).

    Args:
        store: The job store.
        job_id: The job's id, a unique prefix of it, or its name (`JobStore.find`).

    Raises:
        JobError: No such job (or several), or a job that already ended.
    """
    job = store.find(job_id)
    job_id = job.id
    if job.status not in ACTIVE:
        raise JobError(f"Job {job_id} already {job.status}; there is nothing to cancel.")
    store.finish(job_id, "cancelled", "cancelled by the user")
    if job.pid is not None and process_started(job.pid) is not None:
        try:
            if os.getpgid(job.pid) == job.pid:
                os.killpg(job.pid, signal.SIGTERM)
            else:
                os.kill(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return store.get(job_id)


def is_distributed() -> bool:
    """True in a process started by `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
