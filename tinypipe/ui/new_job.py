"""The New-job page: a form that becomes the command line `tinypipe train-diffuser` / `train-lm` would get.

The form is turned into that argv (`form_argv`), which goes through the CLI's own parser (`cli.build_parser`, handed to
`create_app` as `command_line`) and its own checks (`cli_arguments.train_request`): a mistake is refused with exactly
the line the CLI prints, before any job is recorded, and a job that passes starts in the background as `--detach`
starts it. The page also shows the
equivalent command line. An uploaded data set is kept by its content in `<tinypipe home>/uploads/`; a zip is then
extracted by the CLI's own `dataset_path` (which refuses members that would land outside its folder).
"""

import argparse
import contextlib
import functools
import hashlib
import importlib
import io
import json
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import APIRouter, Request, UploadFile
from starlette.responses import RedirectResponse, Response

from ..builtin import SHAPES_DATA, TINY_INSTRUCTIONS, TINY_LLAMA, TINY_SD, builtin_names
from ..errors import ConfigError, TinypipeError
from ..files import tinypipe_home
from ..runner import DIFFUSER_METHODS, LM_METHOD
from .pages import render

__all__ = ["router", "form_argv", "start_from_argv", "CommandLineError", "HYPERPARAMETERS", "warm_up"]

router = APIRouter()


class CommandLineError(ConfigError):
    """The CLI's parser refused the command line; the message is the line it prints (`tinypipe train-lm: error: ...`)."""


# The common hyperparameters the form offers as fields (the rest go in the "advanced" --training-args JSON).
HYPERPARAMETERS = {
    "train-diffuser": ("max_train_steps", "num_train_epochs", "learning_rate", "train_batch_size", "resolution", "rank",
                       "validation_epochs", "num_validation_images", "validation_inference_steps", "checkpointing_steps",
                       "seed", "mixed_precision"),
    "train-lm": ("max_train_steps", "num_train_epochs", "learning_rate", "train_batch_size", "gradient_accumulation_steps",
                 "checkpointing_steps", "seed", "mixed_precision"),
}
# form field -> the CLI option it fills
_OPTIONS = {
    "train-diffuser": {"method": "--method", "prior_class_prompt": "--prior-class-prompt",
                       "prior_class_image_dir": "--prior-class-image-dir", "num_prior_class_images": "--num-prior-class-images",
                       "placeholder_token": "--placeholder-token", "initializer_token": "--initializer-token"},
    "train-lm": {"chat_template": "--chat-template", "field_map": "--field-map", "lora_rank": "--lora-rank",
                 "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout", "target_modules": "--target-modules"},
}
_COMMON_OPTIONS = {"revision": "--revision", "log_level": "--log-level", "output": "--output", "report_to": "--report-to"}
_POSITIONALS = {"train-diffuser": ("name", "model", "dataset", "prompt"), "train-lm": ("name", "model", "dataset")}


def _field_value(text: str) -> Any:
    """A hyperparameter field as JSON would read it (`1e-4` a number, `true` a bool), else as the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _training_args(kind: str, fields: dict[str, str]) -> Optional[str]:
    """The `--training-args` JSON: the advanced field, with the hyperparameter fields added (a key in both is refused)."""
    from ..runner import parse_training_args

    advanced = fields.get("training_args", "").strip()
    given = {key: _field_value(fields[key].strip()) for key in HYPERPARAMETERS[kind] if fields.get(key, "").strip()}
    if not given:
        return advanced or None  # as typed: a JSON mistake gets the CLI's own message
    merged = parse_training_args(advanced)
    for key, value in given.items():
        if key in merged and merged[key] != value:
            raise ConfigError(f"The field {key} gives {value!r} but --training-args gives {key}={merged[key]!r}; give it once.")
        merged[key] = value
    return json.dumps(merged)


def form_argv(kind: str, fields: dict[str, str]) -> list[str]:
    """The `tinypipe` command line that the New-job form's `fields` stand for (the `tinypipe` word left out).

    Empty fields are left out, so the CLI's defaults apply. The positional arguments come after `--`, so a name or
    prompt that starts with `-` is still taken as typed.

    Raises:
        ConfigError: An unknown `kind`, or a hyperparameter given both as a field and in the advanced JSON.
    """
    if kind not in _POSITIONALS:
        raise ConfigError(f"Unknown kind of job {kind!r}; choose train-diffuser or train-lm.")
    argv = [kind]
    for field, option in {**_OPTIONS[kind], **_COMMON_OPTIONS}.items():
        value = fields.get(field, "").strip()
        if value:
            argv += [option, value]
    training_args = _training_args(kind, fields)
    if training_args:
        argv += ["--training-args", training_args]
    return argv + ["--detach", "--"] + [fields.get(name, "") for name in _POSITIONALS[kind]]


def start_from_argv(argv: list[str], command_line: Callable[[], argparse.ArgumentParser]):
    """Parse and check `argv` exactly as `tinypipe` does, then record and start the job in the background.

    Args:
        argv: The command line, without the `tinypipe` word (`form_argv`).
        command_line: `cli.build_parser`.

    Returns:
        The started `Job`.

    Raises:
        CommandLineError: The CLI's parser refused `argv` (the message is the line it prints).
        TinypipeError: The CLI's checks refused it (`train_request`); no job was recorded.
    """
    from ..cli_arguments import train_request
    from ..cli_jobs import start_detached_job

    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            arguments = command_line().parse_args(argv)
    except SystemExit:
        raise CommandLineError(printed.getvalue().strip()) from None
    request = train_request(arguments)
    output = Path(arguments.output).resolve() if arguments.output else None
    return start_detached_job(request, output)


def keep_upload(upload: UploadFile) -> Path:
    """Save an uploaded data set under `<tinypipe home>/uploads/<sha256[:16]>/<its file name>` and return that path."""
    uploads = tinypipe_home() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    name = Path(upload.filename or "upload").name or "upload"
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=uploads, prefix=".upload-", delete=False) as staging:
        try:
            while chunk := upload.file.read(1 << 20):
                digest.update(chunk)
                staging.write(chunk)
        except BaseException:  # a failed upload leaves nothing behind
            Path(staging.name).unlink(missing_ok=True)
            raise
    folder = uploads / digest.hexdigest()[:16]
    folder.mkdir(exist_ok=True)
    target = folder / name
    if target.is_file():
        Path(staging.name).unlink()
    else:
        shutil.move(staging.name, target)
    return target


@functools.lru_cache(maxsize=None)
def hyperparameter_fields(kind: str) -> list[dict[str, Any]]:
    """The form's hyperparameter fields: name, help line, and each method's default (None: chosen at run time).

    The first call imports the trainers (torch, diffusers: seconds); `tinypipe ui` makes it at start, in the background
    (`warm_up`), so that the form opens at once.
    """
    from ..training.arguments import argument_doc

    methods = DIFFUSER_METHODS if kind == "train-diffuser" else {"lora": LM_METHOD}
    signatures = {method: getattr(importlib.import_module(module), config)._arguments_signature.parameters
                  for method, (module, _, config) in methods.items()}
    return [{"name": name, "help": argument_doc(name),
             "defaults": {method: parameters[name].default for method, parameters in signatures.items() if name in parameters}}
            for name in HYPERPARAMETERS[kind]]


def warm_up() -> None:
    """Import what the New-job form and its checks need (the trainers), so that the first form opens and checks quickly."""
    for kind in HYPERPARAMETERS:
        hyperparameter_fields(kind)


def _page(request: Request, kind: str, fields: dict[str, str], error: Optional[str] = None,
          command: Optional[str] = None) -> Response:
    from ..data.chat_templates import CHAT_TEMPLATES

    return render(request, "new.html", status_code=400 if error else 200, kind=kind, fields=fields, error=error,
                  command=command, hyperparameters=hyperparameter_fields(kind), methods=list(DIFFUSER_METHODS),
                  chat_templates=["tokenizer", *CHAT_TEMPLATES],
                  models=_first(TINY_SD if kind == "train-diffuser" else TINY_LLAMA,
                                builtin_names("diffusion" if kind == "train-diffuser" else "causal-lm")),
                  datasets=_first(SHAPES_DATA if kind == "train-diffuser" else TINY_INSTRUCTIONS,
                                  builtin_names("images" if kind == "train-diffuser" else "instructions")))


def _first(default: str, names: list[str]) -> list[str]:
    """The built-in names with the one the README starts with first (the form's default)."""
    return [default, *(name for name in names if name != default)]


@router.get("/new")
def new_job_page(request: Request, kind: str = "train-diffuser") -> Response:
    return _page(request, kind if kind in _POSITIONALS else "train-diffuser", {})


@router.post("/new")
async def new_job(request: Request) -> Response:
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    kind = fields.get("kind", "train-diffuser")
    upload = form.get("dataset_file")
    command = None
    try:
        if kind not in _POSITIONALS:
            raise ConfigError(f"Unknown kind of job {kind!r}; choose train-diffuser or train-lm.")
        if upload is not None and not isinstance(upload, str) and upload.filename:
            if fields.get("dataset", "").strip():
                raise ConfigError("Give the data set either as a path (or built-in name) or as an uploaded file, not both.")
            fields["dataset"] = str(keep_upload(upload))
        argv = form_argv(kind, fields)
        command = shlex.join(["tinypipe", *argv])
        job = start_from_argv(argv, request.app.state.command_line)
    except TinypipeError as error:
        message = str(error) if isinstance(error, CommandLineError) else f"tinypipe: error: {error}"  # as the CLI prints it
        return _page(request, kind if kind in _POSITIONALS else "train-diffuser", fields, message, command)
    return RedirectResponse(f"/jobs/{job.id}", 303)
