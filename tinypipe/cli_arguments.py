"""What is typed on the `tinypipe` command line, checked and converted: the parser, the option types, and the
train commands' arguments as a trainer's `train()` keyword arguments.

Every mistake on the command line ends the same way: one line naming the option and the fix, exit code 2,
and no job recorded. Nothing heavy is imported at import time, so `--help` stays fast.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["TRAIN_DIFFUSER_EPILOG", "training_arguments_epilog", "OneLineParser", "positive_int", "non_negative_int", "positive_float", "probability", "dataset_path",
           "diffuser_train_arguments", "lm_train_arguments", "train_request"]


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line (`tinypipe generate: error: ...`) and exit code 2.

    Options are never abbreviated: a misspelled `--num-prior-class-image` is an error, not silently taken as
    `--num-prior-class-images`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}. See `{self.prog} --help`.", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """An integer >= 1 (a count of steps, images, lines...)."""
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _parse(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1) (a dropout rate)."""
    value = _parse(text, float, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def _parse(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


# -- the train commands ----------------------------------------------------------------------------


def dataset_path(dataset: str) -> str:
    """The data set to train on: a zip file is extracted (once, by content) into the tinypipe home."""
    path = Path(dataset)
    if path.suffix.lower() != ".zip" or not path.is_file():
        return str(path.resolve()) if path.exists() else dataset
    from filelock import FileLock

    from .archive import safe_extract
    from .config.filelist import sha256_file
    from .files import tinypipe_home

    digest = sha256_file(path)[:16]
    folder = tinypipe_home() / "datasets" / digest
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(f".{digest}.lock")):  # the processes of an accelerate launch extract it once
        if not folder.is_dir():
            safe_extract(path, folder)
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    # A zip of one folder: train on that folder.
    return str(entries[0] if len(entries) == 1 and entries[0].is_dir() else folder)


def _set_option(train: dict, key: str, value, option: str) -> None:
    """Put a command-line option's value into the train() arguments; refuse a different value for it in --training-args."""
    from .errors import ConfigError

    if key in train and train[key] != value:
        raise ConfigError(f"{option} gives {key}={value!r} but --training-args gives {key}={train[key]!r}; give it once.")
    train[key] = value


def _set_report_to(train: dict, arguments: argparse.Namespace) -> None:
    """`--report-to`, when given, as the `report_to` train() argument."""
    if getattr(arguments, "report_to", None):
        _set_option(train, "report_to", arguments.report_to, "--report-to")


def diffuser_train_arguments(arguments: argparse.Namespace) -> dict:
    """`train()` keyword arguments of a train-diffuser command."""
    from .errors import ConfigError, DataError
    from .runner import parse_training_args, placeholder_from_prompt
    from .data.image_sources import IMAGE_EXTENSIONS

    train = parse_training_args(arguments.training_args)
    _set_report_to(train, arguments)
    prompt, method = arguments.prompt, arguments.method
    train.setdefault("validation_prompt", prompt)
    if method == "textual-inversion":
        placeholder = arguments.placeholder_token or train.get("placeholder_token") or placeholder_from_prompt(prompt)
        initializer = arguments.initializer_token or train.get("initializer_token")
        if not placeholder:
            raise ConfigError("--method textual-inversion needs the new token: write it in PROMPT as <name> "
                              "(\"a photo of <my-toy>\") or pass --placeholder-token.")
        if not initializer:
            raise ConfigError("--method textual-inversion needs --initializer-token, a known word close to the concept "
                              "(\"toy\", \"circle\"); its embedding is where the new token starts.")
        if arguments.placeholder_token:
            _set_option(train, "placeholder_token", arguments.placeholder_token, "--placeholder-token")
        if arguments.initializer_token:
            _set_option(train, "initializer_token", arguments.initializer_token, "--initializer-token")
        train.update(placeholder_token=placeholder, initializer_token=initializer)
    else:
        given = [option for option, value in (("--placeholder-token", arguments.placeholder_token),
                                              ("--initializer-token", arguments.initializer_token)) if value]
        if given:
            raise ConfigError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for --method textual-inversion, "
                              f"not --method {method}; leave them out, or choose --method textual-inversion.")
        _set_option(train, "instance_prompt", prompt, "PROMPT")
    if getattr(arguments, "export_formats", None):
        if method == "textual-inversion":
            raise ConfigError("--export-formats writes LoRA files; --method textual-inversion trains none (its "
                              "learned_embeds.safetensors is read by A1111 and ComfyUI as it is). Leave it out.")
        _set_option(train, "export_formats", [name.strip() for name in arguments.export_formats.split(",") if name.strip()],
                    "--export-formats")
    prior = (arguments.prior_class_prompt, arguments.prior_class_image_dir, arguments.num_prior_class_images)
    if any(prior):
        if method == "textual-inversion":
            raise ConfigError("Prior preservation (--prior-class-*) is for --method lora or dreambooth, not textual-inversion.")
        if not arguments.prior_class_prompt:
            raise ConfigError("Prior preservation needs --prior-class-prompt, the prompt of the class (\"a photo of a dog\").")
        count = arguments.num_prior_class_images
        if arguments.prior_class_image_dir:
            folder = Path(arguments.prior_class_image_dir)
            if folder.exists() and not folder.is_dir():
                raise DataError(f"--prior-class-image-dir {folder} is a file, not a folder; give a folder of class images, "
                                "or a new folder's name (it is created and the class images are generated into it).")
            if folder.is_dir():  # a new folder is created by the run, which generates the class images into it
                count = count or sum(1 for entry in folder.iterdir() if entry.suffix.lower() in IMAGE_EXTENSIONS)
            _set_option(train, "class_data_dir", str(folder.resolve()), "--prior-class-image-dir")
        if not count:
            raise ConfigError("Prior preservation needs class images: --num-prior-class-images N (generated with "
                              "--prior-class-prompt, into --prior-class-image-dir when given), or a --prior-class-image-dir "
                              "holding some.")
        # The same method with prior preservation: --method alone chooses the trainer (lora: LoRA at its own learning rate).
        _set_option(train, "with_prior_preservation", True, "--prior-class-prompt")
        _set_option(train, "class_prompt", arguments.prior_class_prompt, "--prior-class-prompt")
        _set_option(train, "num_class_images", count, "--num-prior-class-images")
    return train


def add_chat_data_options(parser: argparse.ArgumentParser) -> None:
    """The train-lm options of the data's format and template: --chat-template, --field-map."""
    parser.add_argument("--chat-template", metavar="NAME|FILE",
                        help="Template the records are rendered with: tokenizer (the model's own), alpaca, alpaca-lora, chatml, "
                             "llama-3, or a .jinja file (default: alpaca for alpaca records; for conversations the "
                             "tokenizer's own, or chatml when it has none).")
    parser.add_argument("--field-map", metavar="STANDARD=YOURS,...",
                        help="Your records' field names, e.g. instruction=question,output=answer (standard names: "
                             "instruction, input, output, messages, conversations, text, role, content, from, value).")


def lm_train_arguments(arguments: argparse.Namespace) -> dict:
    """`train()` keyword arguments of a train-lm command."""
    from .errors import ConfigError
    from .runner import parse_training_args

    train = parse_training_args(arguments.training_args)
    _set_report_to(train, arguments)
    options = {"r": arguments.lora_rank, "lora_alpha": arguments.lora_alpha, "lora_dropout": arguments.lora_dropout}
    if arguments.target_modules:
        modules = arguments.target_modules
        names = [name.strip() for name in modules.split(",")]
        if modules != "all-linear" and not all(names):
            raise ConfigError(f"--target-modules {modules!r} has an empty name; give comma-separated module names such as "
                              "'q_proj,v_proj', or all-linear.")
        options["target_modules"] = modules if modules == "all-linear" else names
    if arguments.chat_template:
        path = Path(arguments.chat_template)
        # A file is named by its absolute path, so that a job that runs elsewhere (--detach) reads the same one.
        from .data.chat_templates import CHAT_TEMPLATES

        if not path.is_file() and arguments.chat_template not in (*CHAT_TEMPLATES, "tokenizer"):
            raise ConfigError(f"--chat-template {arguments.chat_template!r} is neither a template name ({', '.join(CHAT_TEMPLATES)}, "
                              "tokenizer) nor a Jinja template file.")
        options["chat_template"] = str(path.resolve()) if path.is_file() else arguments.chat_template
    if arguments.field_map:
        from .data.chat_formats import parse_field_map

        options["field_map"] = parse_field_map(arguments.field_map)
    flags = {"r": "--lora-rank", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout", "target_modules": "--target-modules",
             "chat_template": "--chat-template", "field_map": "--field-map"}
    for key, value in options.items():
        if value is not None:
            _set_option(train, key, value, flags[key])
    return train


def train_request(arguments: argparse.Namespace):
    """The checked `TrainRequest` of a parsed `train-diffuser` / `train-lm` command line (the web UI's form builds one too).

    A zipped DATASET is extracted first (`dataset_path`); then everything is checked before any job exists.

    Returns:
        The `runner.TrainRequest`, checked by `runner.check_request`.

    Raises:
        ConfigError: An option or training argument that cannot work, naming it and the fix.
        DataError: A data set that is missing, empty or unreadable.
    """
    from .runner import TrainRequest, check_request

    kind = arguments.command
    request = TrainRequest(
        kind=kind, name=arguments.name, method=arguments.method if kind == "train-diffuser" else "lora",
        model=arguments.model, dataset=dataset_path(arguments.dataset), revision=arguments.revision,
        log_level=arguments.log_level,
        train_arguments=diffuser_train_arguments(arguments) if kind == "train-diffuser" else lm_train_arguments(arguments),
    )
    check_request(request)
    return request


TRAIN_DIFFUSER_EPILOG = """\
Examples:
  tinypipe train-diffuser my-circles tinypipe/tiny-sd tinypipe/shapes "a photo of sks circle" \\
      --training-args '{"max_train_steps": 100, "learning_rate": 1e-3}'
  tinypipe train-diffuser my-dog runwayml/stable-diffusion-v1-5 photos/ "a photo of sks dog" \\
      --method dreambooth --prior-class-prompt "a photo of a dog" --num-prior-class-images 100 --detach

DATASET is a folder of images (captions in metadata.jsonl or <image>.txt), a JSON file listing images
(and captions), a .zip of either, or the built-in "tinypipe/shapes". The job's repo (model/, trainer/,
validation/, checkpoints/) goes to --output or to the job's folder; `tinypipe download-model ID` zips it.
An interrupted job continues from its last checkpoint with `tinypipe resume NAME` (the same job, same
arguments); a run started by hand resumes with the same --output and
--training-args '{"resume_from_checkpoint": "latest"}'.
Several processes / GPUs: accelerate launch -m tinypipe train-diffuser ... --output DIR
"""


def training_arguments_epilog(*, diffusion: bool) -> str:
    """The --training-args keys the recipes share, with their doc lines (from training/arguments.py, as the docstrings)."""
    from .training.arguments import training_arguments_help

    return ("\nTraining arguments the recipes share (--training-args keys; each method's own are in its train() docstring):\n"
            + training_arguments_help(diffusion=diffusion) + "\n")
