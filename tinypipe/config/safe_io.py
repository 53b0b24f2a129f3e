"""Reading what a repo holds without trusting it: names that stay inside their folder, regular files only, bounded JSON.

Every name that comes from a file (a config key used as a sub-folder, a hub id used as a cache folder) goes through
`child_path`, which refuses a name that is empty, absolute, holds `..`, a separator or a NUL, or resolves outside
its root. Every file read goes through `open_regular_file`, which opens without blocking and refuses a FIFO, a
device or a socket (which would hang or never end), and reports a symlink loop; `read_json` also refuses text that
is not UTF-8 and JSON nested deeper than any config tinypipe writes. Each refusal is one `RepoError` naming the file.
"""

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import RepoError

__all__ = ["MAX_JSON_DEPTH", "child_path", "open_regular_file", "read_text", "read_json"]

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
