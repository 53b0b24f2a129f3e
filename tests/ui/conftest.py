"""Fixtures of the web UI's tests: the app behind Starlette's TestClient, job records, and one real tiny job."""

import pytest

from tinypipe.cli import build_parser, main
from tinypipe.jobs import JobStore

QUICK = '{"max_train_steps": 2, "checkpointing_steps": 2, "num_validation_images": 1, "validation_inference_steps": 2}'
"""A LoRA run of the built-in tiny model that takes seconds: 2 steps, a checkpoint, one validation image of 2 denoising
steps."""
TRAIN = ["train-diffuser", "circles", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle"]


@pytest.fixture
def client():
    """The UI as `tinypipe ui` serves it (bound to this machine, no token), behind Starlette's TestClient."""
    from tinypipe.ui import create_app
    from ui_helpers import client_for

    return client_for(create_app(build_parser))


@pytest.fixture(scope="session")
def trained_home(new_home):
    """A tinypipe home holding one succeeded tiny LoRA job, trained by `tinypipe train-diffuser` in this process."""
    home = new_home("ui_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYPIPE_HOME", str(home))
        assert main([*TRAIN, "--training-args", QUICK]) == 0
    return home


@pytest.fixture
def trained_job(trained_home, monkeypatch):
    """The succeeded job of `trained_home`, with TINYPIPE_HOME pointing there for this test."""
    monkeypatch.setenv("TINYPIPE_HOME", str(trained_home))
    (job,) = JobStore().recent(1)
    return job


@pytest.fixture
def home(new_home):
    """A fresh tinypipe home for a `tinypipe ui` subprocess, with the session's built-in models."""
    return new_home()
