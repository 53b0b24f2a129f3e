"""The REPO argument of the `tinypipe` commands: a repo folder, the job that wrote one (its id, a unique prefix of it, or
its unique name), or a hub id.

`repo_path` finds the local folder (without loading anything); `load_pipeline` loads the pipeline, downloading a
hub repo into the cache first. Used by `generate`, `push`, `derive`, `merge` and `export`.
"""

import argparse
from pathlib import Path
from typing import Any, Optional

__all__ = ["load_pipeline", "looks_like_a_path", "repo_path"]


def repo_path(value: str) -> Optional[Path]:
    """A local repo folder: the path itself, or the output of the job `value` names; None for a hub id.

    A value that is no existing path and holds no `/` names a job (its id, a unique prefix of it, or its name, as
    every job command takes it: `JobStore.find`), since a tinypipe hub repo is named `owner/name`.

    Raises:
        JobError: No job or several match (listed), or the job has not succeeded (it has no repo to read yet).
    """
    path = Path(value)
    if path.exists():
        return path
    if "/" in value or "\\" in value:
        return None
    from .jobs import JobError, JobStore

    try:
        job = JobStore().find(value)
    except JobError as error:
        if "matches" in str(error):  # several jobs: the message lists them
            raise
        raise JobError(f"{value!r} is neither a repo folder, a job (id, id prefix or name), nor a hub id 'owner/name'. "
                       "`tinypipe get-most-recent-jobs` lists the jobs.") from None
    if job.status != "succeeded":
        raise JobError(f"Job {job.id} ({job.name}) is {job.status}, so it has no repo to read yet; "
                       f"see `tinypipe check-job-status {job.id}`.")
    return job.output


def looks_like_a_path(value: str) -> bool:
    """A folder name rather than a hub id: `./out`, `/abs`, `~/x`, `a/b/c`, `C:\\x`."""
    return value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1 or value.endswith("/")


def load_pipeline(arguments: argparse.Namespace, local: Optional[Path]) -> Any:
    """The pipeline of `arguments.repo`: the repo folder `local` (see `repo_path`), else the hub id, downloaded.

    Args:
        arguments: The command's arguments: `repo`, `revision`, `cache_dir`, `trust_remote_code`.
        local: `repo_path(arguments.repo)`.

    Raises:
        RepoError: REPO looks like a folder that does not exist, or the repo is incomplete or altered.
        TrustRemoteCodeError: Loading would run the repo's code without `--trust-remote-code`.
    """
    from .config import AutoModelPipeline
    from .files import tinypipe_home
    from .models import CausalLMPipeline  # noqa: F401  (registers the built-in names a repo id may be)

    if local is None and looks_like_a_path(arguments.repo):
        from .errors import RepoError

        raise RepoError(f"REPO {arguments.repo} does not exist; give a repo folder, a job's id or name, or a hub id (owner/name).")
    if local is not None:
        return AutoModelPipeline.from_pretrained(local, trust_remote_code=arguments.trust_remote_code)
    cache = Path(arguments.cache_dir) if arguments.cache_dir else tinypipe_home() / "hub"
    return AutoModelPipeline.from_pretrained(cache, arguments.repo, revision=arguments.revision,
                                             trust_remote_code=arguments.trust_remote_code)
