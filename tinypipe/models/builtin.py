"""Moved to `tinypipe.builtin.tiny_sd`; this name stays so that imports written against tinypipe 0.1 keep working."""

from ..builtin.tiny_sd import *  # noqa: F401,F403
