"""The errors tinypipe raises on bad input.

Every message names the argument, key or file at fault and says how to fix it. They derive from
`ValueError` (bad input) so code that already catches that keeps working.
"""


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
