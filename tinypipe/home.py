"""Where tinypipe keeps files of its own: caches, built-in models, the job store."""

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from .errors import StorageError, disk_full_as_error


def tinypipe_home() -> Path:
    """The tinypipe home folder: `$TINYPIPE_HOME`, else `$XDG_CACHE_HOME/tinypipe`, else `~/.cache/tinypipe`.

    Returns:
        The folder (created if missing).

    Raises:
        StorageError: The folder cannot be created or written.
    """
    if os.environ.get("TINYPIPE_HOME"):
        home = Path(os.environ["TINYPIPE_HOME"])
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = Path(cache) / "tinypipe"
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"The tinypipe home {home} cannot be created ({error.strerror}); set TINYPIPE_HOME to a "
                           "writable folder.") from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise StorageError(f"The tinypipe home {home} is not writable; make it writable or set TINYPIPE_HOME to a "
                           "writable folder.")
    return home


# Written last into a materialised folder: a folder without it (or with another fingerprint) is never used.
_COMPLETE_MARKER = "tinypipe_cache.json"


def cached_folder(name: str, fingerprint: dict, build: Callable[[Path], None], *, area: str = "builtin") -> Path:
    """Build a folder under `tinypipe_home() / area` once and reuse it while `fingerprint` is unchanged.

    `build` writes the folder's contents into a temporary sibling; the fingerprint is written in last and
    the sibling is renamed into place, so a crash never leaves a half-written folder that gets used. Writers
    take a file lock, so concurrent processes (an `accelerate launch`) build it once, and a folder with the
    right fingerprint is never moved while someone reads it. Under torch.distributed every rank must call it
    (as every rank of a data-parallel run does): rank 0 builds, the others wait. A folder with another fingerprint (an older
    library version, other shipped files) is moved aside and rebuilt.

    Args:
        name (`str`):
            The folder's name, such as `"tinypipe/tiny-sd"` (`/` becomes `--`).
        fingerprint (`dict`):
            JSON-encodable values that change whenever the folder's contents would change.
        build (`Callable[[Path], None]`):
            Writes the contents into the (existing, empty) folder it is given.
        area (`str`, *optional*, defaults to `"builtin"`):
            The sub-folder of the tinypipe home that holds such folders (`"class_images"` for DreamBooth's cache).

    Returns:
        The folder.
    """
    folder_name = name.replace("/", "--")
    if folder_name in ("", ".", "..") or "\\" in folder_name or "\0" in folder_name:
        raise ValueError(f"cached_folder: {name!r} is not a plain folder name under {tinypipe_home() / area}.")
    # Under `accelerate launch`, transformers writes weights only on rank 0: the other ranks wait for it.
    rank = _distributed_rank()
    if rank is not None and rank > 0:
        _barrier()
    try:
        return _build_once(tinypipe_home() / area / folder_name, fingerprint, build)
    finally:
        if rank == 0:
            _barrier()


def _distributed_rank() -> int | None:
    """This process's rank when torch.distributed is initialised, else `None`."""
    import torch  # here, so that the job commands of the CLI start without torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return None


def _barrier() -> None:
    import torch

    torch.distributed.barrier()


def _build_once(folder: Path, fingerprint: dict, build: Callable[[Path], None]) -> Path:
    if _read_marker(folder) == fingerprint:
        return folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(f".{folder.name}.lock")):
        if _read_marker(folder) == fingerprint:  # another process built it while we waited
            return folder
        staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
        staging.mkdir()
        try:
            # 1. Build the complete folder where no one else looks; the marker goes in last.
            with disk_full_as_error(folder, f"Writing {folder}"):
                build(staging)
                (staging / _COMPLETE_MARKER).write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
            # 2. Move a stale or damaged folder out of the way, then publish atomically.
            if folder.exists():
                stale = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.stale")
                os.replace(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _read_marker(folder: Path) -> dict | None:
    """The fingerprint recorded in a materialised folder, or `None` if the folder is missing or incomplete."""
    try:
        return json.loads((folder / _COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
