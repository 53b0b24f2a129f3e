"""`filelist.txt`: the sha256 of every file of a repo folder, written on save and checked on load.

Format: one line per file below the folder, `<relative posix path> <sha256 hex>`, sorted, the list
itself excluded. Loading refuses a missing file, an extra file, a changed byte, and any path that
could escape the folder (`..`, absolute, drive letters, backslashes, symlinks pointing out).

Hashing streams the file. A file verified once is remembered in a stamp (size, mtime, ctime, inode
and hash) under the tinypipe home, so loading an unchanged multi-GB repo again costs a `stat` per
file. Like git's index, a file changed within two seconds of being stamped is never trusted from
the stamp ("racy" timestamps), so a same-tick edit is still caught.
"""

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..errors import RepoError, StorageError
from ..files import open_regular_file, read_json, read_text, tinypipe_home, write_atomic

__all__ = ["FILELIST", "write_filelist", "verify_filelist", "sha256_file"]

FILELIST = "filelist.txt"
_CHUNK = 4 << 20
_RACY_SECONDS = 2.0
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path) -> str:
    """Stream a file through sha256 and return the hex digest.

    Raises:
        RepoError: `path` is not a regular file (a FIFO, device, socket) or cannot be read.
    """
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open_regular_file(path) as file:
        while True:
            count = file.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


def _files_below(folder: Path) -> list[str]:
    """Every file (and symlink) below `folder` as sorted posix paths, `filelist.txt` excluded."""
    found = []
    for root, directories, files in os.walk(folder):
        relative_root = Path(root).relative_to(folder)
        for name in files + [d for d in directories if (Path(root) / d).is_symlink()]:
            relative = (relative_root / name).as_posix()
            if relative != FILELIST:
                found.append(relative)
    return sorted(found)


def write_filelist(folder: Path, files: Optional[Sequence[str]] = None) -> None:
    """Write `folder/filelist.txt` listing every file below `folder` (or only `files`, posix paths) with its sha256."""
    listed = _files_below(folder) if files is None else sorted(files)
    lines = [f"{relative} {sha256_file(folder / relative)}\n" for relative in listed]
    (folder / FILELIST).write_text("".join(lines), encoding="utf-8")  # inside a folder saved atomically as a whole


def _check_safe_path(folder: Path, relative: str) -> None:
    """Refuse a listed path that is absolute, has a drive, a backslash, or `..`, or resolves outside."""
    bad = (
        not relative
        or "\\" in relative
        or relative.startswith("/")
        or re.match(r"^[A-Za-z]:", relative)
        or any(part in ("", ".", "..") for part in relative.split("/"))
    )
    if bad:
        raise RepoError(f"{folder / FILELIST} lists the unsafe path {relative!r}; a repo may only name files inside its folder.")
    try:
        resolved = (folder / relative).resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise RepoError(f"{folder / relative} cannot be resolved ({error}); remove that link.") from None
    if not resolved.is_relative_to(folder.resolve()):
        raise RepoError(f"{folder / relative} points outside the repo (to {resolved}); remove that link.")


def _parse(folder: Path) -> dict[str, str]:
    listing = folder / FILELIST
    if not listing.is_file():
        raise RepoError(f"{listing} is missing, so the folder's files cannot be checked. Re-save it with save_pretrained.")
    expected: dict[str, str] = {}
    for number, line in enumerate(read_text(listing).splitlines(), start=1):
        if not line.strip():
            continue
        relative, _, digest = line.rpartition(" ")
        if not _HEX64.match(digest):
            raise RepoError(f"{listing} line {number}: expected '<path> <sha256 hex>', got {line!r}.")
        _check_safe_path(folder, relative)
        expected[relative] = digest
    return expected


def _stamp_file(folder: Path) -> Path:
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    return tinypipe_home() / "verified" / f"{key}.json"


def _load_stamps(folder: Path) -> dict:
    try:
        stamps = read_json(_stamp_file(folder))
    except (RepoError, StorageError):  # no stamps (or an unusable home): hash everything
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _save_stamps(folder: Path, stamps: dict) -> None:
    """Remember verified files; the stamps are only a cache, so a home that cannot be written just skips it."""
    try:
        path = _stamp_file(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(stamps))
    except (OSError, StorageError):
        pass


def _identity(stat: os.stat_result) -> list:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def verify_filelist(folder: Path, *, use_stamps: bool = True, listed_only: bool = False) -> None:
    """Check every file below `folder` against `folder/filelist.txt`.

    Args:
        folder: A repo folder (`model/`, `model_code/`, `trainer/`).
        use_stamps: Trust the stamp of a file unchanged since it was last verified.
        listed_only: Check only the files the list names (a published repo's root, whose `filelist.txt` lists the
            files tinypipe placed there beside the component folders, which carry their own lists).

    Raises:
        RepoError: Naming the first file that is missing, changed, unlisted or unsafe.
    """
    expected = _parse(folder)
    present = [relative for relative in _files_below(folder) if relative in expected] if listed_only else _files_below(folder)
    for relative in present:
        if relative not in expected:
            raise RepoError(f"{folder / relative} is not listed in {folder / FILELIST}; remove it or re-save the repo.")
        _check_safe_path(folder, relative)
    missing = sorted(set(expected) - set(present))
    if missing:
        raise RepoError(f"{folder / missing[0]} is listed in {folder / FILELIST} but missing; re-download or re-save the repo.")

    stamps = _load_stamps(folder) if use_stamps else {}
    fresh: dict[str, list] = {}
    now = time.time_ns()
    for relative, digest in expected.items():
        path = folder / relative
        try:
            stat = path.stat()
        except OSError as error:
            raise RepoError(f"{path} cannot be read ({error.strerror}); re-download or re-save the repo.") from None
        identity = _identity(stat)
        if stamps.get(relative) == identity + [digest]:
            fresh[relative] = stamps[relative]
            continue
        if sha256_file(path) != digest:
            raise RepoError(f"{path} has changed since it was saved (sha256 differs from {folder / FILELIST}); re-download or re-save it.")
        if now - max(stat.st_mtime_ns, stat.st_ctime_ns) > _RACY_SECONDS * 1e9:
            fresh[relative] = identity + [digest]
    if use_stamps and fresh != stamps:
        _save_stamps(folder, fresh)

