"""The version of tinypipe, and the rule for reading files written by another version.

The lowest module of the package (above `errors` only), so that every layer can record or check it.
"""

from typing import Optional

from .errors import ConfigError

__all__ = ["__version__", "check_version"]

__version__ = "0.1.0"


def check_version(written_by: Optional[str], source: str) -> None:
    """Refuse a config written by a newer major version of tinypipe than this one.

    Args:
        written_by: The `__version__` recorded in the file (None: not recorded, accepted).
        source: The file or call the version was read from, for the message.

    Raises:
        ConfigError: The version is not like `"0.1.0"`, or its major version is newer than this tinypipe's.
    """
    if written_by is None:
        return
    try:
        major = int(str(written_by).split(".")[0])
    except ValueError:
        raise ConfigError(f"{source}: '__version__' is {written_by!r}, not a version like '0.1.0'.") from None
    if major > int(__version__.split(".")[0]):
        raise ConfigError(
            f"{source} was written by tinypipe {written_by}, a newer major version than this tinypipe {__version__}. "
            "Upgrade tinypipe (pip install -U tinypipe) to load it."
        )
