import os

import pytest

# Tests never touch the network; every model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory):
    """A tinypipe home for fixtures wider than one test (module-scoped trainings), which run before `_isolated_home`:
    no test ever reads or writes the user's own `~/.cache/tinypipe` (a stale class-image cache there once made a
    re-run differ)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYPIPE_HOME", str(tmp_path_factory.mktemp("tinypipe_session_home")))
        yield


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own tinypipe home, so caches and job stores never leak between tests."""
    monkeypatch.setenv("TINYPIPE_HOME", str(tmp_path_factory.mktemp("tinypipe_home")))
