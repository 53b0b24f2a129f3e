"""Zip files in and out: a job's results (`tinypipe download-model`) and zipped data sets.

Writing is atomic (a temporary sibling, then a rename). Extracting refuses any member whose name
would land outside the target folder (`../x`, `/etc/x`, `C:\\x`) or that is a link, before anything
is written.
"""

import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from .errors import DataError, disk_full_as_error
from .files import atomic_file, atomic_folder

__all__ = ["write_zip", "safe_extract"]


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
