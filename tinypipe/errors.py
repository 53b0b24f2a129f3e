"""The errors tinypipe raises on bad input (and on a disk it cannot write).

Every message names the argument, key or file at fault and says how to fix it. They derive from
`ValueError` (bad input) so code that already catches that keeps working.
"""

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager


class TinypipeError(ValueError):
    """Base class of every error tinypipe raises on bad input."""


class ConfigError(TinypipeError):
    """A config value that cannot be recorded, an unknown key, or a `config.json` that does not fit."""


class RepoError(TinypipeError):
    """A repo on disk that is incomplete, altered, or unsafe to load (`filelist.txt`, weights, code)."""


class TrustRemoteCodeError(RepoError):
    """Loading would run code from outside tinypipe, and `trust_remote_code=True` was not given."""


class DataError(TinypipeError):
    """A training data set, image or record that cannot be used."""


class TrainingError(TinypipeError):
    """Training cannot go on: a loss that became NaN/inf, or settings that cannot work together."""


class StorageError(TinypipeError):
    """A folder tinypipe must write cannot be used: read-only, unreachable, or the disk is full."""


@contextmanager
def disk_full_as_error(path: "os.PathLike | str", what: str) -> Iterator[None]:
    """Report a full disk (or quota) while writing `path` as one `StorageError` naming it; other errors pass.

    Args:
        path: The folder or file being written.
        what: What was being written, for the message ("saving the repo").
    """
    try:
        yield
    except Exception as error:
        # Writers in other languages (safetensors) report it as their own error, with the OS message inside.
        full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
            text in str(error) for text in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT)))
        if not full:
            raise
        raise StorageError(f"{what} failed: the disk holding {path} is full ({os.strerror(errno.ENOSPC)}); nothing "
                           "half-written was kept. Free some space and run it again.") from None
