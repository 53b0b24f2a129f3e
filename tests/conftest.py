import os

import pytest

# Tests never touch the network; every model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own tinypipe home, so caches and job stores never leak between tests."""
    monkeypatch.setenv("TINYPIPE_HOME", str(tmp_path_factory.mktemp("tinypipe_home")))
