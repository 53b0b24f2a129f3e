"""Files: where tinypipe keeps its own (the home folder, cached folders) and how it reads what it did not write.

Home: `tinypipe_home()` and the folders materialised under it. Reading without trusting: every name that comes from
a file (a config key used as a sub-folder, a hub id used as a cache folder) goes through `child_path`, which refuses
a name that is empty, absolute, holds `..`, a separator or a NUL, or resolves outside its root. Every file read goes
through `open_regular_file`, which opens without blocking and refuses a FIFO, a device or a socket (which would hang
or never end), and reports a symlink loop; `read_json` also refuses text that is not UTF-8 and JSON nested deeper
than any config tinypipe writes. Each refusal is one `RepoError` naming the file.
"""

import errno
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock

from .errors import RepoError, StorageError, disk_full_as_error

__all__ = ["tinypipe_home", "cached_folder", "MAX_JSON_DEPTH", "child_path", "open_regular_file", "read_text", "read_json"]


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


# tinypipe's own configs nest a few levels; 64 leaves room for users' nested arguments and stays far below
# Python's recursion limit (JSON parsing and `decode_value` recurse once per level).
MAX_JSON_DEPTH = 64

_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def child_path(root: Path, name: Any, what: str) -> Path:
    """`root / name` for a single path component `name` read from a file, checked to stay inside `root`.

    Args:
        root: The folder the name is relative to (a repo folder, the hub cache).
        name: The name as read (a config key, a hub id's part).
        what: What the name is and where it came from, for the message (`"the config key in .../config.json"`).

    Raises:
        RepoError: The name is not one plain folder or file name, or it leads outside `root`.
    """
    bad = (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
           or (len(name) > 1 and name[1] == ":"))
    if bad:
        raise RepoError(f"{what} is {name!r}, which is not a plain folder name inside {root}; a repo may only "
                        "name folders inside itself. Re-save the repo, or remove that entry.")
    path = Path(root) / name
    try:
        resolved, inside = path.resolve(), Path(root).resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise RepoError(f"{path} cannot be resolved ({error}); remove that link.") from None
    if not resolved.is_relative_to(inside):
        raise RepoError(f"{what} is {name!r}, and {path} leads outside {root} (to {resolved}); remove that link.")
    return path


def open_regular_file(path: Path) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file (following links), without ever blocking.

    Raises:
        RepoError: `path` is a FIFO, device, socket or folder, a symlink loop, or cannot be opened.
    """
    try:
        _check_regular(path, os.stat(path).st_mode)  # a socket cannot even be opened: name it first
        # Non-blocking, so that a FIFO swapped in after the check cannot block the open; checked again once open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        reason = "a symlink loop" if error.errno == errno.ELOOP else error.strerror
        raise RepoError(f"{path} cannot be read ({reason}); replace it with the file that was saved there.") from None
    try:
        _check_regular(path, os.fstat(fd).st_mode)
    except RepoError:
        os.close(fd)
        raise
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _check_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise RepoError(f"{path} is {kind}, not a regular file; tinypipe reads only regular files from a repo. "
                        "Replace it with the file that was saved there.")


def read_text(path: Path) -> str:
    """The UTF-8 text of the regular file `path`.

    Raises:
        RepoError: Not a regular file, or not UTF-8 (naming the byte offset).
    """
    with open_regular_file(path) as file:
        data = file.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RepoError(f"{path} is not UTF-8 text (byte {error.start} is {data[error.start:error.start + 1]!r}); "
                        "re-save the repo.") from None


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and dicts, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: Path, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in the regular UTF-8 file `path`, nested at most `max_depth` levels.

    Raises:
        RepoError: Not a regular file, not UTF-8, not JSON, or nested too deeply.
    """
    text = read_text(path)
    try:
        value = json.loads(text)
    except RecursionError:  # the parser recurses once per level
        raise RepoError(f"{path} nests lists or objects more than {max_depth} levels deep; no tinypipe config does. "
                        "Re-save the repo.") from None
    except ValueError as error:
        raise RepoError(f"{path} is not valid JSON: {error}.") from None
    if _depth(value) > max_depth:
        raise RepoError(f"{path} nests lists or objects more than {max_depth} levels deep; no tinypipe config does. "
                        "Re-save the repo.")
    return value
