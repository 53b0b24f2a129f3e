"""The job commands that follow, resume and remove a run: `tinypipe logs`, `tinypipe resume`, `tinypipe rm`, and
`start_job`, which records a checked request as a job and runs it here or in the background (the train commands and
`resume` share it).

Every job command takes a job id, a unique prefix of one, or a job name no other job has (`JobStore.find`).

```
tinypipe logs my-lora --follow        # the log so far, then each new line until the job ends
tinypipe resume 3f2a                  # a failed or cancelled job continues from its newest checkpoint (same job)
tinypipe rm 3f2a --delete-output      # forget the job, its log, and (only when asked) its repo
```
"""

import argparse
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

__all__ = ["add_job_commands", "start_job", "start_detached_job", "launch_job", "follow_log", "remove_job", "resume_job",
           "resume_request"]

# What a training run writes into its output folder; `rm --delete-output` removes a folder holding nothing else.
_RUN_ENTRIES = frozenset({"model", "model_code", "trainer", "validation", "checkpoints", "logs", "wandb", "metrics.jsonl",
                          "metrics.json", "README.md"})


def start_job(request, output: Optional[Path], *, detach: bool) -> int:
    """Record a checked `TrainRequest` as a job, then run it in this process or start it in the background.

    Args:
        request: The checked request (`runner.check_request`).
        output: The repo folder (None: the job's own folder).
        detach: Start it in the background and print its id.

    Returns:
        The exit code: that of the run (`run_job`), or 0 once a detached job started.
    """
    from .jobs import JobStore

    store = JobStore()
    job = store.create(request.name, request.kind, request.method, asdict(request), output)
    return launch_job(store, job, detach=detach)


def launch_job(store, job, *, detach: bool) -> int:
    """Run a queued job in this process, or start it in the background (`--detach`) and print its id.

    Returns:
        The exit code: that of the run (`run_job`), or 0 once a detached job started.
    """
    from .runner import run_job, start_detached

    if detach:
        start_detached(store, job)
        print(job.id)
        print(f"Started job {job.id} in the background. Follow it with `tinypipe logs {job.id} --follow`; "
              f"its log is {job.log_file}.", file=sys.stderr)
        return 0
    request = job.arguments
    print(f"Job {job.id}: {job.kind} {job.method} of {request.get('model')}; log {job.log_file}", file=sys.stderr)
    code = run_job(store, job, foreground=True)
    job = store.get(job.id)
    if job.status == "succeeded":
        print(f"Job {job.id} succeeded in {job.duration:.0f} s. Repo: {job.output}\n"
              f"Zip the weights and validation images with `tinypipe download-model {job.id}`.", file=sys.stderr)
    else:
        print(f"tinypipe: error: job {job.id} {job.status}: {job.error}", file=sys.stderr)
    return code


def start_detached_job(request, output: Optional[Path]):
    """Record a checked `TrainRequest` as a job and start it in the background, as `--detach` does (the web UI's form).

    Returns:
        The new `Job`, its process started.
    """
    from .jobs import JobStore
    from .runner import start_detached

    store = JobStore()
    job = store.create(request.name, request.kind, request.method, asdict(request), output)
    start_detached(store, job)
    return store.get(job.id)


# -- logs ------------------------------------------------------------------------------------------------


def follow_log(store, job_id: str, write: Callable[[str], None], *, follow: bool,
               wait: Callable[[], None] = lambda: time.sleep(0.5)) -> str:
    """Write a job's log through `write`; with `follow`, keep writing what is appended until the job has ended.

    Args:
        store: The job store.
        job_id: The job's id.
        write: Receives the log's text, piece by piece.
        follow: Keep reading while the job is queued or running.
        wait: Called between two reads of a followed log.

    Returns:
        The job's status when the log was last read.
    """
    from .jobs import ACTIVE

    position = 0
    while True:
        job = store.get(job_id)  # read before the log: whatever a finished job wrote is then read below
        try:
            with open(job.log_file, "rb") as log:
                log.seek(position)
                data = log.read()
        except FileNotFoundError:
            data = b""
        if data:
            position += len(data)
            write(data.decode("utf-8", "replace"))
        if not follow or job.status not in ACTIVE:
            return job.status
        wait()


def _logs(arguments: argparse.Namespace) -> int:
    from .jobs import JobStore

    store = JobStore()
    job = store.find(arguments.job)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    status = follow_log(store, job.id, write, follow=arguments.follow)
    if arguments.follow:
        print(f"Job {job.id} {status}.", file=sys.stderr)
    return 0


# -- resume ----------------------------------------------------------------------------------------------


def resume_request(job):
    """The request that continues `job` from its newest checkpoint: the same arguments, `resume_from_checkpoint="latest"`.

    The resume continues the job's own run only: the newest checkpoint in its output folder whose recorded settings
    are this run's (`training.run_fingerprint`); other runs' checkpoints there are left alone.

    Raises:
        JobError: The job is still queued or running, it already succeeded (nothing is left to run), or its output
            holds no complete checkpoint.
    """
    from .jobs import ACTIVE, JobError
    from .runner import TrainRequest

    if job.status in ACTIVE:
        raise JobError(f"Job {job.id} is still {job.status}; resume it once it has ended (or `tinypipe cancel {job.id}`).")
    folder = job.output / "checkpoints"
    found = sorted(folder.glob("checkpoint-*/complete.json")) if folder.is_dir() else []
    if job.status == "succeeded":
        further = (f"; with --output {job.output} and \"resume_from_checkpoint\": \"latest\" it continues from this run's "
                   "newest checkpoint instead of starting over" if found else
                   f" (it starts over: this run wrote no checkpoint in {folder})")
        raise JobError(
            f"Job {job.id} ({job.name}) already succeeded: it ran all its steps, so resuming it would train none. To train "
            f"further, start a new job with a larger max_train_steps in --training-args (same model, data and options)"
            f"{further}.")
    if not found:
        every = job.arguments.get("train_arguments", {}).get("checkpointing_steps")
        raise JobError(f"Job {job.id} has no checkpoint to resume from: {folder} holds none (it writes one every "
                       f"{every if every is not None else 'checkpointing_steps'} steps, and the job stopped "
                       f"before the first: see `tinypipe logs {job.id}`). Start it again with `tinypipe {job.kind}`.")
    request = TrainRequest(**job.arguments)
    return replace(request, train_arguments={**request.train_arguments, "resume_from_checkpoint": "latest"})


def resume_job(store, job, *, detach: bool) -> int:
    """Continue a failed or cancelled job as its next attempt (same id, name and output; its log appended), from the
    newest checkpoint of its own run: what `tinypipe resume JOB` does.

    Args:
        store: The job store.
        job: The job (`JobStore.find`).
        detach: Run it in the background (print its id) instead of in this process.

    Returns:
        The exit code (see `launch_job`).

    Raises:
        JobError: See `resume_request`; or another process resumed or removed the job meanwhile.
        ConfigError, DataError: Its arguments no longer check (`runner.check_request`: a data set gone, ...).
    """
    from .jobs import JobError
    from .runner import check_request

    request = resume_request(job)
    check_request(request)
    if not store.reopen(job.id, asdict(request)):  # another process resumed or removed it meanwhile
        raise JobError(f"Job {job.id} is no longer failed or cancelled (now: {store.get(job.id).status}); nothing was resumed.")
    job = store.get(job.id)
    with open(job.log_file, "a", encoding="utf-8") as log:
        log.write(f"\n--- attempt {job.attempts}: `tinypipe resume` continues from the newest checkpoint of this run ---\n")
    print(f"Resuming job {job.id} ({job.name}), attempt {job.attempts}, from the newest checkpoint in "
          f"{job.output / 'checkpoints'}.", file=sys.stderr)
    return launch_job(store, job, detach=detach)


def _resume(arguments: argparse.Namespace) -> int:
    from .jobs import JobStore

    store = JobStore()
    return resume_job(store, store.find(arguments.job), detach=arguments.detach)


# -- rm --------------------------------------------------------------------------------------------------


def remove_job(store, job, *, delete_output: bool) -> list[str]:
    """Forget an ended job: its record and log, and with `delete_output` its repo folder.

    The repo stays unless `delete_output` is given (also when it lies in the job's folder). A repo folder is deleted
    only when it holds nothing but what a run writes, so a mistyped `--output` never costs other files.

    Returns:
        What was removed, for the message.

    Raises:
        JobError: The job is still queued or running, or its output holds files no run writes.
    """
    from .jobs import ACTIVE, JobError

    if job.status in ACTIVE:
        raise JobError(f"Job {job.id} is {job.status}; stop it first with `tinypipe cancel {job.id}`, then remove it.")
    output = job.output
    if delete_output and output.is_dir():
        foreign = sorted(entry.name for entry in output.iterdir()
                         if entry.name not in _RUN_ENTRIES and not entry.name.startswith("."))
        if foreign:
            raise JobError(f"Not deleting {output}: it holds {', '.join(foreign[:5])}, which no tinypipe run writes. "
                           f"Remove the folder yourself, or run `tinypipe rm {job.id}` without --delete-output.")
    store.remove(job.id)
    removed = [f"job {job.id}"]
    if delete_output and output.is_dir():
        shutil.rmtree(output)
        removed.append(str(output))
    inside = output.resolve().is_relative_to(job.folder.resolve())
    if inside and output.exists():
        job.log_file.unlink(missing_ok=True)  # the job's folder keeps the repo
    else:
        shutil.rmtree(job.folder, ignore_errors=True)
    removed.append(str(job.log_file))
    return removed


def _remove(arguments: argparse.Namespace) -> int:
    from .jobs import JobStore

    store = JobStore()
    job = store.find(arguments.job)
    removed = remove_job(store, job, delete_output=arguments.delete_output)
    kept = "" if arguments.delete_output or not job.output.exists() else f" The repo stays in {job.output}."
    print(f"Removed {', '.join(removed)}.{kept}")
    return 0


# -- the parser ------------------------------------------------------------------------------------------


def add_job_commands(commands) -> None:
    """Add `logs`, `resume` and `rm` to the `tinypipe` sub-command parsers."""
    job_help = "The job: its id, a unique prefix of it, or its name (get-most-recent-jobs lists them)."
    logs = commands.add_parser("logs", help="Print a job's log; --follow keeps printing until it ends.",
                               description="Print a job's log. With --follow, keep printing what it appends until the job "
                                           "has succeeded, failed or been cancelled.")
    logs.add_argument("job", metavar="JOB", help=job_help)
    logs.add_argument("--follow", "-f", action="store_true", help="Keep printing new lines until the job ends.")
    logs.set_defaults(handler=_logs)

    resume = commands.add_parser("resume", help="Continue a failed or cancelled job from its newest checkpoint.",
                                 description="Run a failed or cancelled JOB again as the same job (its next attempt, its "
                                             'log appended) with its arguments and resume_from_checkpoint="latest": it '
                                             "continues from the newest checkpoint of its own run. Refused when JOB has "
                                             "no checkpoint, or already succeeded.")
    resume.add_argument("job", metavar="JOB", help=job_help)
    resume.add_argument("--detach", action="store_true", help="Run in the background and print the job's id.")
    resume.set_defaults(handler=_resume)

    remove = commands.add_parser("rm", help="Forget an ended job and its log (its repo stays unless --delete-output).",
                                 description="Remove an ended job from the job list, with its log. Its repo (weights, "
                                             "validation images, checkpoints) stays unless --delete-output is given.")
    remove.add_argument("job", metavar="JOB", help=job_help)
    remove.add_argument("--delete-output", action="store_true", help="Also delete the job's repo folder.")
    remove.set_defaults(handler=_remove)
