"""A repo saved with its own code (`model_code/`), for the tests of `trust_remote_code` wherever a repo is loaded."""

import sys
import textwrap

import pytest

SENTINEL_MODULE = textwrap.dedent('''
    import os
    from pathlib import Path
    from tinypipe import ConfigMixin, save_config

    Path(os.environ["SENTINEL_FILE"]).write_text("code ran")

    class CustomModel(ConfigMixin):
        @save_config
        def __init__(self, size: int = 2):
            self.size = size
''')


@pytest.fixture
def custom_repo(tmp_path, monkeypatch):
    """`(repo, sentinel)`: a repo saved from a user module that writes the file `sentinel` whenever it is imported."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "sentinel_model.py").write_text(SENTINEL_MODULE)
    sentinel = tmp_path / "sentinel"
    monkeypatch.setenv("SENTINEL_FILE", str(sentinel))
    monkeypatch.syspath_prepend(str(code))
    import sentinel_model

    sentinel_model.CustomModel(size=5).save_pretrained(tmp_path / "repo")
    del sys.modules["sentinel_model"]
    sys.path.remove(str(code))
    (code / "sentinel_model.py").unlink()
    sentinel.unlink()
    yield tmp_path / "repo", sentinel
    sys.modules.pop("sentinel_model", None)
