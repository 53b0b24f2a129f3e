"""Files: where tinypipe keeps its own (the home folder, cached folders), how it writes, and how it reads what it did
not write.

Writing: every file or folder tinypipe replaces is written beside its target under a hidden temporary name and renamed
into place once complete (`atomic_file`, `atomic_folder`, `write_atomic`), so a reader sees the old one or the new one,
never half of one. What moves into place gets the modes the user's umask gives a plain file or folder
(`apply_umask`): safetensors and `tempfile` make theirs private whatever the umask. A folder that is only usable once complete carries a marker written last (`write_marker`,
`read_marker`).

Home: `tinypipe_home()` and the folders materialised under it. Reading without trusting: every name that comes from
a file (a config key used as a sub-folder, a hub id used as a cache folder) goes through `child_path`, which refuses
a name that is empty, absolute, holds `..`, a separator or a NUL, or resolves outside its root. Every file read goes
through `open_regular_file`, which opens without blocking and refuses a FIFO, a device or a socket (which would hang
or never end), and reports a symlink loop; `read_json` also refuses text that is not UTF-8 and JSON nested deeper
than any config tinypipe writes. Each refusal is one `RepoError` naming the file.
"""

import errno
import glob
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

from filelock import FileLock

from .errors import RepoError, StorageError, disk_full_as_error

__all__ = ["tinypipe_home", "cached_folder", "fsync_path", "apply_umask", "atomic_file", "write_atomic", "atomic_folder", "write_marker",
           "read_marker", "MAX_JSON_DEPTH", "child_path", "open_regular_file", "read_text", "read_json"]

# -- writing: beside the target, then one rename ---------------------------------------------------------


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (Windows cannot open folders, and makes renames durable itself)."""
    if os.name == "nt" and Path(path).is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """This process's umask, read without changing it where Linux shows it (`os.umask` sets while it reads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Union[str, Path]) -> None:
    """Give `path`, and all under it when it is a folder, the modes `open` and `mkdir` would: 0o666 and 0o777 less the
    umask (0o644 and 0o755 with the usual 0o022).

    safetensors' `save_file` writes 0o600 and `tempfile.mkdtemp` makes 0o700 whatever the umask, so without this a
    saved repo or checkpoint could be read by its owner alone, unlike every other file the user writes there.
    Symlinks, and a path that does not exist, are left as they are.
    """
    mask = _umask()
    path = Path(path)
    if not path.exists():
        return
    entries = [path] + (list(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
    for entry in entries:
        if entry.is_symlink():
            continue
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)


def _staging_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: Union[str, Path], *, durable: bool = False) -> Iterator[Path]:
    """Write a file beside `target` and rename it into place once the `with` block ends without error.

    Args:
        target: The file to create or replace.
        durable: Flush the file and its folder to disk, so that the new file survives a power cut.

    Yields:
        The temporary path to write (a hidden sibling of `target`); on an error it is removed and `target` is
        left as it was.

    Example:
    ```python
    with atomic_file(folder / "images.zip") as temporary:
        write_zip_into(temporary)
    ```
    """
    target = Path(target)
    temporary = _staging_name(target)
    try:
        yield temporary
        apply_umask(temporary)
        if durable:
            fsync_path(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(target.parent)


def write_atomic(target: Union[str, Path], data: Union[str, bytes], *, durable: bool = False) -> None:
    """Write `data` (text as UTF-8, or bytes) into the file `target`, atomically (see `atomic_file`)."""
    with atomic_file(target, durable=durable) as temporary:
        if isinstance(data, str):
            temporary.write_text(data, encoding="utf-8")
        else:
            temporary.write_bytes(data)


@contextmanager
def atomic_folder(target: Union[str, Path], *, staging: Optional[Path] = None, durable: bool = False) -> Iterator[Path]:
    """Build a folder beside `target` and move it into place once the `with` block ends without error.

    A folder already at `target` is first moved aside (as `<staging>-replaced`) and removed once the new one is in
    place. On an error (or Ctrl-C) the staging folder is removed and `target` is left as it was; a process killed
    outright leaves it, hidden, for its owner's next run to remove.

    Args:
        target: The folder to create or replace.
        staging: The (hidden, sibling) name to build under, for owners that find their leftovers by name;
            default `.<name>.<random>.tmp`.
        durable: Flush the staging folder before the rename and the parent folder after it.

    Yields:
        The empty staging folder to fill.
    """
    target = Path(target)
    staging = Path(staging) if staging is not None else _staging_name(target)
    staging.mkdir()
    replaced = None
    try:
        yield staging
        apply_umask(staging)
        if durable:
            fsync_path(staging)
        if target.exists():
            replaced = staging.with_name(f"{staging.name}-replaced")
            os.replace(target, replaced)
        os.replace(staging, target)
    except BaseException:
        if replaced is not None and replaced.exists() and not target.exists():
            os.replace(replaced, target)  # the new one could not be moved in: the old one goes back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if durable:
        fsync_path(target.parent)
    if replaced is not None:
        _remove(replaced)


def write_marker(folder: Path, marker: str, record: dict, *, durable: bool = False) -> None:
    """Write the complete-folder marker `folder/marker` holding `record`: written last, it says the folder is whole.

    Args:
        folder: The folder, all of whose other files are written.
        marker: The marker's file name (`"complete.json"`, `"tinypipe_cache.json"`, ...).
        record: JSON-encodable facts about the folder (the fingerprint it was built for, its files).
        durable: Flush the marker to disk.
    """
    write_atomic(Path(folder) / marker, json.dumps(record, indent=2, sort_keys=True) + "\n", durable=durable)


def read_marker(folder: Path, marker: str) -> Optional[dict]:
    """The record in the complete-folder marker `folder/marker`, or None when the folder is incomplete (no marker, or
    one that is not a JSON object)."""
    try:
        record = read_json(Path(folder) / marker)
    except RepoError:
        return None
    return record if isinstance(record, dict) else None


# -- the home folder and the folders cached in it ---------------------------------------------------------


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
    if read_marker(folder, _COMPLETE_MARKER) == fingerprint:
        return folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(f".{folder.name}.lock")):
        if read_marker(folder, _COMPLETE_MARKER) == fingerprint:  # another process built it while we waited
            return folder
        for leftover in folder.parent.glob(f".{glob.escape(folder.name)}.*.tmp*"):  # an interrupted build's
            _remove(leftover)
        # Build the complete folder where no one else looks, the marker last; a stale folder is replaced.
        with disk_full_as_error(folder, f"Writing {folder}"), atomic_folder(folder) as staging:
            build(staging)
            write_marker(staging, _COMPLETE_MARKER, fingerprint)
    return folder


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
