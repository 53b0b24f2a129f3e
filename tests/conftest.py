import os

import pytest
from custom_code import custom_repo  # noqa: F401  (a fixture for every test folder)

# Tests never touch the network; every model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each computes on one thread (more would only fight over the cores). Set
    # before anything imports torch; subprocesses that must match a test's float math get the same count.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def _session_builtins(tmp_path_factory):
    """One folder of built-in models for the whole session: they are deterministic and fingerprinted, and building
    them (random init + save) would otherwise be repeated by every test that names one."""
    return tmp_path_factory.mktemp("tinypipe_builtins")


@pytest.fixture(scope="session")
def new_home(tmp_path_factory, _session_builtins):
    """Makes a new tinypipe home (for a module's CLI subprocesses) whose built-in models are the session's."""

    def make(name: str = "home"):
        home = tmp_path_factory.mktemp(name)
        (home / "builtin").symlink_to(_session_builtins, target_is_directory=True)
        return home

    return make


@pytest.fixture(scope="session", autouse=True)
def _session_home(new_home):
    """A tinypipe home for fixtures wider than one test (module-scoped trainings), which run before `_isolated_home`:
    no test ever reads or writes the user's own `~/.cache/tinypipe` (a stale class-image cache there once made a
    re-run differ)."""
    home = new_home("tinypipe_session_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYPIPE_HOME", str(home))
        yield


@pytest.fixture(autouse=True)
def _isolated_home(request, tmp_path_factory, monkeypatch, new_home):
    """Every test gets its own tinypipe home, so caches and job stores never leak between tests. Its built-in models
    are the session's (see `_session_builtins`), except in a test marked `own_builtins`, which builds (or damages)
    its own."""
    own = request.node.get_closest_marker("own_builtins") is not None
    home = tmp_path_factory.mktemp("tinypipe_home") if own else new_home("tinypipe_home")
    monkeypatch.setenv("TINYPIPE_HOME", str(home))
