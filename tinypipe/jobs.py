"""The local job store: every `tinypipe train-*` run is a job recorded in one SQLite file, no server.

A job has an id, a name, what it runs (`kind`, `method`, `arguments`), a status (queued, running,
succeeded, failed, cancelled), timestamps, a log file, an output repo and its number of attempts (a failed or
cancelled job that `tinypipe resume` continues runs again as the same job, its log appended). It lives in
`<tinypipe home>/jobs/jobs.sqlite3` (`TINYPIPE_HOME` moves it) and each job's files in
`<tinypipe home>/jobs/<id>/`.

- Several processes share the store: SQLite in WAL mode with a busy timeout serialises the writes, and
  every status change is one conditional `UPDATE`, so a finished or cancelled job is never reopened.
- A job records the process that runs it (pid and start time). Reading a queued or running job whose
  process is gone marks it failed, so a crash is never reported as "running" forever.

Only the standard library and psutil are imported here: `tinypipe --help` and the job commands stay fast.
"""

import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import TinypipeError
from .files import tinypipe_home

__all__ = ["Job", "JobError", "JobStoreError", "JobStore", "ACTIVE", "STATUSES", "check_job_name", "JobProgress",
           "read_progress", "format_time", "format_duration"]

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    method TEXT NOT NULL,
    arguments TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,
    pid_started REAL,
    log_file TEXT NOT NULL,
    output TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1
)
"""
# Columns added after the first release, with their definitions: an older store gains them when it is opened.
_ADDED_COLUMNS = {"attempts": "INTEGER NOT NULL DEFAULT 1"}


class JobError(TinypipeError):
    """An unknown job id, or a job in the wrong state for what was asked."""


class JobStoreError(JobError):
    """The job store itself cannot be used: corrupt, emptied, read-only or unreachable."""


_JOB_ID = re.compile(r"[0-9a-f]{8}")


def check_job_name(name: str) -> str:
    """Refuse a job name that is empty or could become a path elsewhere (`download-model` names its zip after it).

    Raises:
        JobError: The name holds a path separator, `..`, a control character, or is empty.
    """
    if not name or name in (".", "..") or any(char in name for char in "/\\") or not name.isprintable():
        raise JobError(f"The job name {name!r} is not usable: a job name is a plain name without '/', '\\', or "
                       "control characters (it names the job's zip file). Pick a name like 'my-lora'.")
    return name


@dataclass(frozen=True)
class Job:
    """One row of the store. Times are seconds since the epoch."""

    id: str
    name: str
    kind: str
    method: str
    arguments: dict
    status: str
    created_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    pid: Optional[int]
    pid_started: Optional[float]
    log_file: Path
    output: Path
    error: Optional[str]
    attempts: int = 1  # 1, then one more for each `tinypipe resume` (`JobStore.reopen`)

    @property
    def folder(self) -> Path:
        """The job's own folder (its log, and its output unless `--output` named another)."""
        return self.log_file.parent

    @property
    def duration(self) -> Optional[float]:
        """Seconds it ran (so far, while running)."""
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at


def process_started(pid: int) -> Optional[float]:
    """The start time of process `pid`, or None when there is no such live process."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


class JobStore:
    """The jobs of this machine (or of one `TINYPIPE_HOME`).

    Args:
        folder: Where the store and the job folders live; `<tinypipe home>/jobs` by default.
    """

    def __init__(self, folder: Optional[Path] = None):
        with self._store_errors():
            self.folder = Path(folder) if folder is not None else tinypipe_home() / "jobs"
            self.path = self.folder / "jobs.sqlite3"
            self.folder.mkdir(parents=True, exist_ok=True)
            self._check_not_emptied()
            with closing(self._connect()) as connection:
                connection.execute("PRAGMA journal_mode = WAL")  # recorded in the file: every later connection uses it
                connection.execute(_SCHEMA)
                present = {row["name"] for row in connection.execute("PRAGMA table_info(jobs)")}
                for column, definition in _ADDED_COLUMNS.items():
                    if column not in present:
                        connection.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")

    @contextmanager
    def _store_errors(self) -> Iterator[None]:
        """Turn a failure of the store (SQLite or the file system) into one `JobStoreError` naming the file and fix."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            path = getattr(self, "path", None)
            text = str(error)
            if "readonly" in text:
                fix = "make it (and its folder) writable, or set TINYPIPE_HOME to a writable folder"
            elif "not a database" in text or "malformed" in text:
                fix = f"move it aside (mv {path} {path}.bad) to start an empty store; the job folders next to it stay"
            elif "disk is full" in text or "full" in text:
                fix = "free disk space"
            else:
                fix = "check that it is a readable, writable SQLite file, or set TINYPIPE_HOME to another folder"
            raise JobStoreError(f"The job store {path} cannot be used ({text}); {fix}.") from None
        except OSError as error:
            where = error.filename or getattr(self, "folder", "the tinypipe home")
            fix = "free disk space" if error.errno == 28 else "make it writable, or set TINYPIPE_HOME to a writable folder"
            raise JobStoreError(f"The job store folder {where} cannot be used ({error.strerror}); {fix}.") from None

    def _check_not_emptied(self) -> None:
        """An empty store file next to job folders replaced a store that had jobs: report it, never start over silently."""
        if not self.path.is_file() or self.path.stat().st_size > 0:
            return
        jobs = [entry.name for entry in self.folder.iterdir() if entry.is_dir() and _JOB_ID.fullmatch(entry.name)]
        if jobs:
            raise JobStoreError(
                f"The job store {self.path} is empty, but {len(jobs)} job folder(s) next to it (such as {sorted(jobs)[0]}) "
                "show it held jobs: it was truncated or replaced. Restore it from a backup, or remove the empty file "
                "to start a new store (the old jobs are then no longer listed)."
            )

    def _connect(self) -> sqlite3.Connection:
        # Autocommit; each statement below is its own transaction. The timeout makes a writer wait for
        # another process's write instead of failing with "database is locked".
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.row_factory = sqlite3.Row
        return connection

    def _execute(self, statement: str, parameters: tuple = ()) -> int:
        with self._store_errors(), closing(self._connect()) as connection:
            return connection.execute(statement, parameters).rowcount

    def _fetch(self, statement: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        with self._store_errors(), closing(self._connect()) as connection:
            return connection.execute(statement, parameters).fetchall()

    # -- create and read ----------------------------------------------------------------------------

    def create(self, name: str, kind: str, method: str, arguments: dict[str, Any], output: Optional[Path] = None) -> Job:
        """Record a new queued job and make its folder.

        Args:
            name: The user's name for the run.
            kind: The command that runs it (`"train-diffuser"`, `"train-lm"`).
            method: The training method (`"lora"`, `"dreambooth"`, ...).
            arguments: Everything needed to run it again, JSON-encodable.
            output: Where the repo goes; `<job folder>/repo` when None.
        """
        check_job_name(name)
        for _ in range(10):
            job_id = secrets.token_hex(4)
            folder = self.folder / job_id
            with self._store_errors():
                if folder.exists():
                    continue
                folder.mkdir()
            target = Path(output).resolve() if output is not None else folder / "repo"
            try:
                self._execute(
                    "INSERT INTO jobs (id, name, kind, method, arguments, status, created_at, log_file, output) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                    (job_id, name, kind, method, json.dumps(arguments, sort_keys=True), time.time(),
                     str(folder / "log.txt"), str(target)),
                )
            except BaseException:  # the job was never recorded: leave no folder behind
                shutil.rmtree(folder, ignore_errors=True)
                raise
            return self.get(job_id)
        raise JobError(f"Could not pick a new job id in {self.folder}; check that the folder is writable.")

    def get(self, job_id: str) -> Job:
        """The job `job_id`, with a dead process's job reported as failed.

        Raises:
            JobError: No such job.
        """
        rows = self._fetch("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = rows[0] if rows else None
        if row is None:
            raise JobError(f"There is no job {job_id!r} in {self.path}; `tinypipe get-most-recent-jobs` lists the job ids.")
        return self._check_alive(_job(row))

    def find(self, reference: str) -> Job:
        """The job `reference` names: its id, a unique prefix of its id, or its name when no other job has that name.

        Raises:
            JobError: No job matches, or several do (they are listed, with their ids to choose from).
        """
        rows = self._fetch("SELECT * FROM jobs WHERE id = ?", (reference,))
        if not rows:
            prefix = reference if re.fullmatch(r"[0-9a-f]{1,8}", reference) else None
            rows = self._fetch("SELECT * FROM jobs WHERE name = ? OR (? IS NOT NULL AND substr(id, 1, ?) = ?) "
                               "ORDER BY created_at DESC, rowid DESC", (reference, prefix, len(reference), prefix))
        if not rows:
            raise JobError(f"There is no job {reference!r} (no job id, id prefix or name matches) in {self.path}; "
                           "`tinypipe get-most-recent-jobs` lists the jobs.")
        if len(rows) > 1:
            matches = "; ".join(f"{row['id']} ({row['name']}, {row['status']})" for row in rows[:10])
            raise JobError(f"{reference!r} matches {len(rows)} jobs: {matches}{' ...' if len(rows) > 10 else ''}. "
                           "Give the job id (or a longer part of it).")
        return self._check_alive(_job(rows[0]))

    def recent(self, limit: int = 10) -> list[Job]:
        """The `limit` newest jobs, newest first."""
        rows = self._fetch("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
        return [self._check_alive(_job(row)) for row in rows]

    def _check_alive(self, job: Job) -> Job:
        if job.status not in ACTIVE or job.pid is None:
            return job
        started = process_started(job.pid)
        if started is not None and (job.pid_started is None or abs(started - job.pid_started) < 1.0):
            return job
        self.finish(job.id, "failed", f"the process that ran it (pid {job.pid}) exited without reporting a result; "
                                      f"see the log {job.log_file}")
        return self.get(job.id)

    # -- status changes -----------------------------------------------------------------------------

    def attach_process(self, job_id: str, pid: int) -> None:
        """Record the process that runs (or will run) the job."""
        self._execute("UPDATE jobs SET pid = ?, pid_started = ? WHERE id = ? AND status IN ('queued', 'running')",
                      (pid, process_started(pid), job_id))

    def start(self, job_id: str, pid: Optional[int] = None) -> bool:
        """Mark a queued job running in process `pid` (this one by default); False if it was cancelled first."""
        pid = os.getpid() if pid is None else pid
        return self._execute(
            "UPDATE jobs SET status = 'running', started_at = ?, pid = ?, pid_started = ? WHERE id = ? AND status = 'queued'",
            (time.time(), pid, process_started(pid), job_id),
        ) == 1

    def finish(self, job_id: str, status: str, error: Optional[str] = None) -> bool:
        """Move an active job to `status` (succeeded, failed, cancelled); False if it had already ended."""
        if status not in STATUSES[2:]:
            raise ValueError(f"A job finishes as one of {STATUSES[2:]}, not {status!r}.")
        return self._execute(
            "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ? AND status IN ('queued', 'running')",
            (status, time.time(), error, job_id),
        ) == 1

    def reopen(self, job_id: str, arguments: dict[str, Any]) -> bool:
        """Queue a failed or cancelled job again as its next attempt (`tinypipe resume`): the same id, name, log and output.

        Args:
            job_id: The job's id.
            arguments: What the new attempt runs (the job's arguments with the resume set), JSON-encodable.

        Returns:
            False if the job is not failed or cancelled (it is active, succeeded, or gone).
        """
        return self._execute(
            "UPDATE jobs SET status = 'queued', arguments = ?, attempts = attempts + 1, started_at = NULL, finished_at = NULL, "
            "pid = NULL, pid_started = NULL, error = NULL WHERE id = ? AND status IN ('failed', 'cancelled')",
            (json.dumps(arguments, sort_keys=True), job_id),
        ) == 1

    def remove(self, job_id: str) -> bool:
        """Forget an ended job (its record only; its files are the caller's to remove); False if it is still active."""
        return self._execute("DELETE FROM jobs WHERE id = ? AND status NOT IN ('queued', 'running')", (job_id,)) == 1


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["arguments"] = json.loads(values["arguments"])
    values["log_file"], values["output"] = Path(values["log_file"]), Path(values["output"])
    return Job(**values)


# -- progress ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobProgress:
    """Where a run's progress bar stands: `step` of `total` optimizer steps, and tqdm's estimate of the time left."""

    step: int
    total: int
    seconds_left: Optional[float]  # None before tqdm has a rate to estimate with


_BAR = re.compile(r"(\d+)/(\d+) \[[\d:]+<([\d:]+|\?)")


def read_progress(log_file: Path) -> Optional[JobProgress]:
    """The newest state of the progress bar (`12/300 [00:05<02:00, ...]`) in the last 64 KiB of a job's log, if any."""
    try:
        with open(log_file, "rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - 65536))
            tail = log.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = _BAR.findall(tail)
    if not found:
        return None
    step, total, left = found[-1]
    seconds = None if left == "?" else float(sum(int(part) * 60 ** index for index, part in enumerate(reversed(left.split(":")))))
    return JobProgress(int(step), int(total), seconds)


def format_time(seconds: Optional[float]) -> str:
    """A job's time as the job commands and the web UI show it: local `2026-12-01 06:45:18` ("-" for None)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def format_duration(seconds: Optional[float]) -> str:
    """A duration as `H:MM:SS` ("-" for None)."""
    if seconds is None:
        return "-"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
