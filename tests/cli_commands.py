"""Running the `tinypipe` command line as a user does, for the CLI tests: a subprocess per command, offline."""

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from tinypipe.jobs import JobStore

DIFFUSER_ARGS = '{"max_train_steps": 4, "num_validation_images": 1, "validation_inference_steps": 2, "learning_rate": 0.003}'
LM_ARGS = '{"max_train_steps": 6, "train_batch_size": 4, "learning_rate": 0.003}'


def tinypipe(home: Path, *args: str, cwd: Path | None = None, launcher: tuple = (sys.executable, "-m", "tinypipe"),
             expect: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINYPIPE_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([*launcher, *args], cwd=cwd or home, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    return result


def wait_for(home: Path, job_id: str, limit: float = 240.0):
    """Poll the job store until the job ends (a finished job never changes again)."""
    store, deadline = JobStore(home / "jobs"), time.monotonic() + limit
    while (job := store.get(job_id)).status in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {limit} s"
        time.sleep(0.3)
    return job


def extract(archive: Path, folder: Path) -> Path:
    with zipfile.ZipFile(archive) as zip_file:
        zip_file.extractall(folder)
    return folder


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)
