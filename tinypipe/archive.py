"""Zip files in and out: a job's results (`tinypipe download-model`, the web UI's download button) and zipped data sets.

Writing is atomic (a temporary sibling, then a rename). Extracting refuses any member whose name
would land outside the target folder (`../x`, `/etc/x`, `C:\\x`) or that is a link, before anything
is written.
"""

import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from .errors import DataError, disk_full_as_error
from .jobs import Job, JobError
from .files import atomic_file, atomic_folder

__all__ = ["write_zip", "safe_extract", "job_zip_members", "job_zip_name"]


def write_zip(members: Mapping[str, Path], target: Path) -> Path:
    """Write `{name in the zip: file on disk}` into the zip file `target`, atomically.

    Returns:
        `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_as_error(target, f"Writing {target}"), atomic_file(target) as staging:
        with zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, path in sorted(members.items()):
                archive.write(path, name)
    return target


def job_zip_members(job: Job) -> dict[str, Path]:
    """The files of a succeeded job's zip: its `model/` folder and its validation images, by their names in the zip.

    Raises:
        JobError: The job has not succeeded (saying why there is nothing yet), or its repo has no `model/` folder.
    """
    if job.status != "succeeded":
        hint = {"queued": "it has not started", "running": "it is still running; wait for it",
                "failed": f"it failed ({job.error}); see `tinypipe check-job-status {job.id} --include-logs`",
                "cancelled": "it was cancelled"}[job.status]
        raise JobError(f"Job {job.id} has no results to download: {hint}.")
    model = job.output / "model"
    if not model.is_dir():
        raise JobError(f"Job {job.id} succeeded but its repo {job.output} has no model/ folder; was it moved or deleted?")
    members = {f"model/{path.relative_to(model).as_posix()}": path for path in model.rglob("*") if path.is_file()}
    validation = job.output / "validation"
    if validation.is_dir():
        members.update({f"validation/{path.relative_to(validation).as_posix()}": path
                        for path in validation.rglob("*.png") if path.is_file()})
    return members


def job_zip_name(job: Job) -> str:
    """`<name>-<id>.zip`, the job's name made a plain file name (whatever an older store recorded as the name)."""
    plain_name = "".join(char if char.isalnum() or char in "-_." else "_" for char in job.name).strip(".") or "job"
    return f"{plain_name}-{job.id}.zip"


def _check_member(info: zipfile.ZipInfo, archive: Path, folder: Path) -> None:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    escapes = not (folder / name).resolve().is_relative_to(folder.resolve())
    if name.startswith("/") or "\0" in name or (parts and (":" in parts[0] or ".." in parts)) or escapes:
        raise DataError(f"{archive} holds the member {info.filename!r}, whose name would escape the folder it is "
                        "extracted into; nothing was extracted. Re-create the zip with relative paths.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"{archive} holds the symbolic link {info.filename!r}; nothing was extracted. "
                        "Re-create the zip with the files themselves.")


def safe_extract(archive: Path, folder: Path) -> Path:
    """Extract the zip file `archive` into `folder` (made complete, then renamed into place).

    Raises:
        DataError: Not a zip file, or a member whose name would escape `folder`.
        StorageError: The disk filled up while extracting (nothing is left behind).
    """
    archive, folder = Path(archive), Path(folder)
    try:
        zip_file = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{archive} is not a readable zip file ({error}).") from error
    with zip_file:
        for info in zip_file.infolist():  # all checked before anything is written
            _check_member(info, archive, folder)
        with disk_full_as_error(folder, f"Extracting {archive}"), atomic_folder(folder) as staging:
            zip_file.extractall(staging)
    return folder
