"""The `tinypipe` command line: train, track jobs, download results, generate, publish, derive.

Heavy libraries (torch, diffusers, transformers) are imported inside the commands, so `--help` and the
job commands start fast. Bad input exits with code 2 and one line saying what is wrong and how to fix it.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .builtin import TINY_INSTRUCTIONS, TINY_LLAMA, builtin_names
from .cli_lm import add_chat_options, add_lm_commands, chat, check_chat_arguments
from .cli_repos import load_pipeline, repo_path as _repo_path
from .cli_export import add_export_commands
from .cli_builtin import add_builtin_commands
from .cli_jobs import add_job_commands
from .cli_ui import add_ui_commands
from .jobs import format_duration as _length, format_time as _when
from .runner import DIFFUSER_METHODS
from .version import __version__
from .cli_arguments import (
    TRAIN_DIFFUSER_EPILOG,
    OneLineParser,
    add_chat_data_options,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    train_request,
    training_arguments_epilog,
)


# -- training ---------------------------------------------------------------------------------------


def _train(arguments: argparse.Namespace) -> int:
    from .cli_jobs import start_job
    from .errors import ConfigError
    from .runner import is_distributed, is_main_process, run_unrecorded

    if is_distributed() and (arguments.detach or not arguments.output):
        raise ConfigError("Under accelerate launch / torchrun, give --output DIR (a folder every process can reach) "
                          "and leave out --detach.")
    request = train_request(arguments)
    output = Path(arguments.output).resolve() if arguments.output else None
    if is_distributed() and not is_main_process():
        return run_unrecorded(request, output)
    return start_job(request, output, detach=arguments.detach)


def _run_job(job_id: str) -> int:
    """`tinypipe run-job ID`: the process a --detach job runs in (not listed in --help)."""
    from .jobs import JobStore
    from .runner import run_job

    store = JobStore()
    return run_job(store, store.get(job_id), foreground=False)


# -- jobs -------------------------------------------------------------------------------------------


def _recent_jobs(arguments: argparse.Namespace) -> int:
    from .jobs import JobStore

    jobs = JobStore().recent(arguments.limit)
    if not jobs:
        print("No jobs yet. Start one with `tinypipe train-diffuser NAME MODEL DATASET PROMPT` (see --help).")
        return 0
    rows = [("ID", "NAME", "COMMAND", "METHOD", "STATUS", "CREATED", "DURATION")]
    rows += [(job.id, job.name, job.kind, job.method, job.status, _when(job.created_at), _length(job.duration)) for job in jobs]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
    return 0


def _job_status(arguments: argparse.Namespace) -> int:
    from .jobs import JobStore, read_progress

    job = JobStore().find(arguments.job_id)
    request = job.arguments
    status = job.status
    if status == "running":
        progress = read_progress(job.log_file)
        status += f" for {_length(job.duration)}" + (f", {progress.step}/{progress.total} steps" if progress else "")
    elif job.finished_at:
        status += f" at {_when(job.finished_at)}" + (f" after {_length(job.duration)}" if job.started_at else "")
    lines = [
        f"Job {job.id}: {job.name}",
        f"  status    {status}",
        f"  command   {job.kind} --method {job.method}",
        f"  model     {request.get('model')}" + (f" (revision {request['revision']})" if request.get("revision") else ""),
        f"  dataset   {request.get('dataset')}",
        f"  created   {_when(job.created_at)}" + (f", resuming job {request['resumed_from']}" if request.get("resumed_from") else "")
        + (f"; attempt {job.attempts} (resumed)" if job.attempts > 1 else ""),
        f"  output    {job.output}",
        f"  log       {job.log_file}",
    ]
    if job.error:
        lines.append(f"  error     {job.error}")
    print("\n".join(lines))
    if arguments.include_logs:
        print(f"\n--- {job.log_file} ---")
        try:
            text = job.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = "(no log yet)\n"
        if arguments.tail:
            text = "\n".join(text.replace("\r", "\n").splitlines()[-arguments.tail:]) + "\n"
        sys.stdout.write(text)
    return 0


def _download(arguments: argparse.Namespace) -> int:
    from .archive import job_zip_members, job_zip_name, write_zip
    from .jobs import JobError, JobStore

    job = JobStore().find(arguments.job_id)
    members = job_zip_members(job)
    target = Path(arguments.to) if arguments.to else Path(job_zip_name(job))
    if target.exists() and not arguments.force:
        raise JobError(f"{target} already exists and is left as it is; choose another --to FILE, or pass --force to replace it.")
    write_zip(members, target)
    print(f"Wrote {target} ({len(members)} files: the model/ weights and the validation images).")
    return 0


def _cancel(arguments: argparse.Namespace) -> int:
    from .jobs import JobStore
    from .runner import cancel_job

    job = cancel_job(JobStore(), arguments.job_id)
    print(f"Job {job.id} {job.status}; its checkpoints (if any) are in {job.output / 'checkpoints'}.")
    return 0


# -- repos --------------------------------------------------------------------------------------------


def _generate(arguments: argparse.Namespace) -> int:
    from .models import CausalLMPipeline

    check_chat_arguments(arguments)
    pipeline = load_pipeline(arguments, _repo_path(arguments.repo))
    if arguments.chat or arguments.message is not None:
        return chat(pipeline, arguments)
    if isinstance(pipeline, CausalLMPipeline):
        text_arguments = {"prompt": arguments.prompt} if arguments.raw else {"instruction": arguments.prompt}
        print(pipeline.generate(**text_arguments, max_new_tokens=arguments.max_new_tokens, seed=arguments.seed))
        return 0
    images = pipeline.generate(arguments.prompt, num_inference_steps=arguments.steps, guidance_scale=arguments.guidance_scale,
                               seed=arguments.seed, negative_prompt=arguments.negative_prompt,
                               num_images_per_prompt=arguments.num_images)
    for path in _save_numbered(images, Path(arguments.output), arguments.seed):
        print(path)
    return 0


def _save_numbered(images: list, folder: Path, seed: int) -> list[Path]:
    """Save images as `NNNNN-seed<seed>-<index>.png`, numbered on from the folder's highest `NNNNN-` (as A1111 numbers
    its outputs): a file already there, the user's or an earlier run's, is never replaced."""
    import re

    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(found.group(1)) for entry in folder.iterdir() if (found := re.match(r"(\d{5,})-", entry.name))]
    number, paths = max(numbers, default=-1) + 1, []
    for index, image in enumerate(images):
        while True:
            path = folder / f"{number:05d}-seed{seed}-{index}.png"
            try:
                with open(path, "xb") as file:  # exclusive: fails rather than replace a file written meanwhile
                    image.save(file, format="PNG")
                break
            except FileExistsError:
                number += 1
        paths.append(path)
    return paths


def _push(arguments: argparse.Namespace) -> int:
    from .errors import RepoError
    from .publish import push_repo_folder

    local = _repo_path(arguments.repo)
    if local is None:
        raise RepoError(f"{arguments.repo} is neither a repo folder nor a job; give the folder a training wrote, or its job's id or name.")
    url = push_repo_folder(local, arguments.hub_id, private=arguments.private, token=arguments.token,
                           commit_message=arguments.commit_message, lora_at_root=arguments.lora_at_root)
    print(f"Pushed {local} to {url}")
    return 0


def _derive(arguments: argparse.Namespace) -> int:
    from .derive import derive_pipeline
    from .errors import RepoError

    source = _repo_path(arguments.source)
    if source is None:
        raise RepoError(f"{arguments.source} is neither a repo folder nor a job; give the folder a training wrote, or its job's id or name.")
    output = derive_pipeline(source, Path(arguments.output), lora=arguments.lora, embedding=arguments.embedding,
                             adapter=arguments.adapter, placeholder_token=arguments.placeholder_token,
                             trust_remote_code=arguments.trust_remote_code, allow_other_base=arguments.allow_other_base)
    print(f"Wrote {output}: {source} with its component replaced; {source} is unchanged.")
    return 0


def _demo(arguments: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(arguments.output))
    return 0


# -- the parser -----------------------------------------------------------------------------------------


def _add_job_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--training-args", metavar="JSON",
                         help="Training keyword arguments as a JSON object, e.g. "
                              """'{"num_train_epochs": 5, "learning_rate": 1e-4}'. An unknown key lists the valid ones; """
                              "the keys the recipes share are listed below.")
    command.add_argument("--revision", default="main", help="Hub revision (branch, tag or commit) of MODEL (default: main).")
    command.add_argument("--log-level", choices=("DEBUG", "INFO"), default="INFO",
                         help="How much the job logs (default: INFO); DEBUG adds the resolved settings, a data summary and "
                              "each checkpoint's files.")
    command.add_argument("--output", metavar="DIR",
                         help="Folder for the repo, validation images and checkpoints (default: the job's folder under "
                              "the tinypipe home, $TINYPIPE_HOME or ~/.cache/tinypipe).")
    command.add_argument("--detach", action="store_true",
                         help="Run in the background and print the job id; follow it with `tinypipe logs ID --follow`.")
    command.add_argument("--report-to", choices=("tensorboard", "wandb", "none"),
                         help="Also log to TensorBoard or W&B (metrics.jsonl is written either way); default none.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tinypipe` and its sub-commands."""
    parser = OneLineParser(
        prog="tinypipe",
        description="Fine-tune diffusion and causal-LM models and ship each result as a self-describing repo. "
                    "Jobs are recorded locally (in $TINYPIPE_HOME, default ~/.cache/tinypipe).",
        epilog="Run `tinypipe COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"tinypipe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    diffuser = commands.add_parser(
        "train-diffuser", help="Fine-tune a diffusion model (SD 1/2, SDXL, FLUX.1, SD3) on your images.", formatter_class=raw,
        epilog=TRAIN_DIFFUSER_EPILOG + training_arguments_epilog(diffusion=True),
        description="Fine-tune a diffusion model - SD 1/2, SDXL, FLUX.1 or SD3, the family detected from MODEL: LoRA on\n"
                    "the denoiser's attention (default), DreamBooth, or textual inversion. The run is recorded as a job.")
    diffuser.add_argument("name", metavar="NAME", help="A name for this run (shown in get-most-recent-jobs).")
    diffuser.add_argument("model", metavar="MODEL",
                          help="Base model: a Hub id (runwayml/stable-diffusion-v1-5), a local diffusers folder, or the "
                               f"built-in offline {' or '.join(builtin_names('diffusion'))}.")
    diffuser.add_argument("dataset", metavar="DATASET",
                          help="Training images: a folder, a JSON file listing images (and captions), a .zip, or "
                               f"{' or '.join(builtin_names('images'))}.")
    diffuser.add_argument("prompt", metavar="PROMPT",
                          help="The training prompt with the rare token (\"a photo of sks dog\"); also the validation prompt. "
                               "For textual inversion, write the new token as <name>.")
    diffuser.add_argument("--method", choices=tuple(DIFFUSER_METHODS), default="lora",
                          help="lora: LoRA on the attention processors (default). dreambooth: full fine-tune (or LoRA with "
                               """'{"use_lora": true}'). textual-inversion: learn a new token's embedding.""")
    diffuser.add_argument("--prior-class-image-dir", metavar="DIR",
                          help="Folder of class images for prior preservation; missing ones are generated into it "
                               "(as diffusers does), so a later run finds them there.")
    diffuser.add_argument("--prior-class-prompt", metavar="TEXT",
                          help="Prompt of the class (\"a photo of a dog\"); turns on prior preservation for the --method "
                               "chosen (lora: LoRA with prior preservation at the LoRA learning rate).")
    diffuser.add_argument("--num-prior-class-images", type=non_negative_int, default=0, metavar="N",
                          help="Class images to train with; generated with --prior-class-prompt when the folder has fewer "
                               "(default: 0, or as many as --prior-class-image-dir holds).")
    diffuser.add_argument("--placeholder-token", metavar="TOKEN", help="textual-inversion: the new token (default: the <name> in PROMPT).")
    diffuser.add_argument("--initializer-token", metavar="WORD", help="textual-inversion: a known word the new token starts from.")
    diffuser.add_argument("--export-formats", metavar="FORMATS", help="lora / dreambooth LoRA: also save the LoRA in "
                          "these formats in the repo's model/ (comma-separated: kohya, comfyui; see `tinypipe export --help`).")
    _add_job_options(diffuser)
    diffuser.set_defaults(handler=_train)

    lm = commands.add_parser(
        "train-lm", help="Fine-tune a causal language model with a PEFT LoRA.", formatter_class=raw,
        description="Fine-tune a causal LM on instruction or chat records with a PEFT LoRA.\n"
                    "The run is recorded as a job.",
        epilog="DATASET is a .json list or .jsonl file of alpaca {\"instruction\", \"input\", \"output\"}, messages\n"
               "{\"messages\": [{\"role\", \"content\"}]}, ShareGPT {\"conversations\": [{\"from\", \"value\"}]} or {\"text\"} records,\n"
               f"or the built-in {' or '.join(builtin_names('instructions'))}. Example:\n"
               f"  tinypipe train-lm my-lm {TINY_LLAMA} {TINY_INSTRUCTIONS} --training-args '{{\"num_train_epochs\": 3}}'\n"
               + training_arguments_epilog(diffusion=False))
    lm.add_argument("name", metavar="NAME", help="A name for this run.")
    lm.add_argument("model", metavar="MODEL", help="Base model: a Hub id, a local transformers folder, or the built-in "
                                                   f"{' or '.join(builtin_names('causal-lm'))}.")
    lm.add_argument("dataset", metavar="DATASET", help=f"Training records: .json / .jsonl, or {' or '.join(builtin_names('instructions'))}.")
    add_chat_data_options(lm)
    lm.add_argument("--lora-rank", type=positive_int, metavar="R", help="LoRA rank (default 8).")
    lm.add_argument("--lora-alpha", type=positive_float, metavar="ALPHA", help="LoRA alpha (default 16).")
    lm.add_argument("--lora-dropout", type=probability, metavar="P", help="LoRA dropout (default 0.05).")
    lm.add_argument("--target-modules", metavar="NAMES",
                    help="Comma-separated module names the LoRA wraps (default: the attention projections of its architecture), or all-linear.")
    _add_job_options(lm)
    lm.set_defaults(handler=_train)

    recent = commands.add_parser("get-most-recent-jobs", help="List the most recent jobs, newest first.",
                                 description="List the most recent jobs (id, name, method, status, times), newest first.")
    recent.add_argument("--limit", type=positive_int, default=10, help="How many jobs (default: 10).")
    recent.set_defaults(handler=_recent_jobs)

    status = commands.add_parser("check-job-status", help="Show a job's status, and its log.",
                                 description="Show a job's status, progress, times, output and error; a job whose process "
                                             "died is reported as failed.")
    status.add_argument("job_id", metavar="JOB_ID", help="The job: its id, a unique prefix of it, or its name.")
    status.add_argument("--include-logs", action="store_true", help="Also print the job's log.")
    status.add_argument("--tail", type=positive_int, metavar="N", help="With --include-logs: only the last N lines.")
    status.set_defaults(handler=_job_status)

    download = commands.add_parser("download-model", help="Zip a finished job's weights and validation images.",
                                   description="Write a zip of a succeeded job's model/ folder (LoRA, embedding or adapter "
                                               "weights and their configs) and its validation images.")
    download.add_argument("job_id", metavar="JOB_ID", help="A succeeded job: its id, a unique prefix of it, or its name.")
    download.add_argument("--to", metavar="FILE", help="The zip file to write (default: NAME-JOB_ID.zip here).")
    download.add_argument("--force", action="store_true", help="Replace FILE if it exists.")
    download.set_defaults(handler=_download)

    cancel = commands.add_parser("cancel", help="Stop a queued or running job.",
                                 description="Stop a queued or running job; its checkpoints stay for a later resume.")
    cancel.add_argument("job_id", metavar="JOB_ID", help="A queued or running job: its id, a unique prefix of it, or its name.")
    cancel.set_defaults(handler=_cancel)

    generate = commands.add_parser("generate", help="Generate images (or text) with a repo.",
                                   description="Load a repo (a folder, a job's id or name, or a Hub id) and generate: images into "
                                               "--output for a diffusion repo, text on stdout for a causal LM.")
    generate.add_argument("repo", metavar="REPO", help="A repo folder, a job (its id or name), or a Hub id.")
    generate.add_argument("prompt", metavar="PROMPT", nargs="?",
                          help="The prompt (images), or the instruction a causal LM answers (text; see --raw and --chat).")
    generate.add_argument("--num-images", type=positive_int, default=4, help="Images to generate (default: 4).")
    generate.add_argument("--steps", type=positive_int, default=25, help="Denoising steps (default: 25).")
    generate.add_argument("--guidance-scale", type=float, default=None,
                          help="Guidance scale (default: the model family's: SD/SDXL 7.5, FLUX.1 3.5, SD3 7.0).")
    generate.add_argument("--negative-prompt", help="What to steer the images away from.")
    generate.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    generate.add_argument("--output", default="generated", metavar="DIR",
                          help="Folder for the images (default: generated), named NNNNN-seedS-I.png, numbered on from "
                               "the files there: none is replaced.")
    generate.add_argument("--max-new-tokens", type=positive_int, default=64, help="Causal LM: tokens to generate (default: 64).")
    generate.add_argument("--raw", action="store_true", help="Causal LM: continue PROMPT as is, not as an alpaca instruction.")
    generate.add_argument("--revision", help="Hub revision, for a Hub id.")
    generate.add_argument("--cache-dir", metavar="DIR", help="Where Hub repos are downloaded (default: the tinypipe home's hub/).")
    generate.add_argument("--trust-remote-code", action="store_true", help="Allow the repo's own code (model_code/) to run.")
    add_chat_options(generate)
    generate.set_defaults(handler=_generate)
    add_lm_commands(commands)

    push = commands.add_parser("push", help="Publish a repo to the Hugging Face Hub with a model card.",
                               description="Publish a repo (a folder, or a job's id or name) to the Hub with a model card (base model, "
                                           "method, prompts, training arguments, validation images). Checkpoints are not "
                                           "uploaded; the token is never written anywhere.")
    push.add_argument("repo", metavar="REPO", help="A repo folder, or a job (its id or name).")
    push.add_argument("hub_id", metavar="HUB_ID", help="The Hub repo to create or update, e.g. me/my-lora.")
    push.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    push.add_argument("--token", help="A Hub token (default: HF_TOKEN or the one saved by `hf auth login`).")
    push.add_argument("--commit-message", help="The Hub commit message.")
    push.add_argument("--lora-at-root", action="store_true", help="Also publish the LoRA file at the repo root, so that "
                      "diffusers' load_lora_weights(\"HUB_ID\") needs no subfolder.")
    push.set_defaults(handler=_push)

    derive = commands.add_parser("derive", help="Copy a repo with one component replaced.",
                                 description="Write a new repo: SOURCE with its LoRA, textual-inversion embedding or PEFT "
                                             "adapter replaced by another's. SOURCE is left untouched.")
    derive.add_argument("source", metavar="SOURCE", help="The repo to start from (a folder, or a job's id or name).")
    derive.add_argument("output", metavar="OUTPUT", help="The new repo's folder.")
    replacement = derive.add_mutually_exclusive_group(required=True)
    replacement.add_argument("--lora", metavar="PATH", help="A diffusers LoRA file, or a folder / repo holding one.")
    replacement.add_argument("--embedding", metavar="PATH", help="A textual-inversion embedding file, or a folder / repo holding one.")
    replacement.add_argument("--adapter", metavar="PATH", help="A PEFT adapter folder, or a causal-LM repo.")
    derive.add_argument("--placeholder-token", metavar="TOKEN",
                        help="With --embedding: the textual-inversion token whose vectors it replaces (default: the name stored in it).")
    derive.add_argument("--allow-other-base", action="store_true",
                        help="Accept a replacement made for another base model than SOURCE's (its shapes must still fit).")
    derive.add_argument("--trust-remote-code", action="store_true", help="Allow the repo's own code (model_code/) to run.")
    derive.set_defaults(handler=_derive)

    demo = commands.add_parser("demo", help="Run the offline demo on the built-in tiny model.",
                               description="Fine-tune the built-in tiny model with LoRA, offline, and write its repo.")
    demo.add_argument("--output", default="demo-output", help="Folder the demo writes its repo into (default: demo-output).")
    demo.set_defaults(handler=_demo)

    add_export_commands(commands, local_repo=_repo_path)
    add_job_commands(commands)  # logs, resume, rm
    add_builtin_commands(commands)  # builtin-path
    add_ui_commands(commands, command_line=build_parser)  # ui: the web page (the ui extra)
    return parser


def _collect_once_then_freeze() -> None:
    """At exit: collect the garbage once (finalizers run, open files flush), then freeze the rest, so that the
    interpreter's teardown frees a training run's millions of objects by reference count instead of walking them in
    one full collection after another (seconds after a job, for nothing)."""
    import gc

    gc.collect()
    gc.freeze()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `tinypipe` console script."""
    import atexit

    atexit.unregister(_collect_once_then_freeze)  # once per process, however often main() runs in it
    atexit.register(_collect_once_then_freeze)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "run-job":
        return _run_job(argv[1])
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if not hasattr(arguments, "handler"):
        parser.print_help()
        return 2
    from .errors import TinypipeError

    try:
        return arguments.handler(arguments)
    except TinypipeError as error:
        print(f"tinypipe: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tinypipe get-most-recent-jobs | head -1`: the reader left, which is fine
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
