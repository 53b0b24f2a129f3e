"""Where tinypipe keeps files of its own: caches, built-in models, the job store."""

import os
from pathlib import Path


def tinypipe_home() -> Path:
    """The tinypipe home folder: `$TINYPIPE_HOME`, else `$XDG_CACHE_HOME/tinypipe`, else `~/.cache/tinypipe`.

    Returns:
        The folder (created if missing).
    """
    if os.environ.get("TINYPIPE_HOME"):
        home = Path(os.environ["TINYPIPE_HOME"])
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = Path(cache) / "tinypipe"
    home.mkdir(parents=True, exist_ok=True)
    return home
