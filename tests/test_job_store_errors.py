"""The job store fails as clearly as user input does: a corrupt, emptied, read-only or unreachable store (or tinypipe
home) is one `tinypipe: error:` line naming the file and the fix, exit 2, and no orphan job folder."""

import os
import subprocess

import pytest

from tinypipe.cli import main
from tinypipe.jobs import JobStore, JobStoreError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYPIPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinypipe: error: "), lines
    return lines[0]


def test_a_corrupt_store_is_named_with_how_to_start_a_new_one(home, capsys):
    store = JobStore()
    store.create("first", "train-diffuser", "lora", {})
    store.path.write_bytes(os.urandom(8192))
    line = one_error_line(capsys, ["get-most-recent-jobs"])
    assert str(store.path) in line and "not a database" in line and "move it aside" in line


def test_an_empty_store_that_replaced_one_with_jobs_is_reported_not_started_over(home, capsys):
    store = JobStore()
    job = store.create("first", "train-diffuser", "lora", {})
    for path in store.folder.glob("jobs.sqlite3*"):
        path.unlink()
    store.path.write_bytes(b"")
    line = one_error_line(capsys, ["get-most-recent-jobs"])
    assert str(store.path) in line and "is empty" in line and job.id in line and "Restore it from a backup" in line


def test_an_empty_store_without_jobs_is_a_new_store(home, capsys):
    (home / "jobs").mkdir(parents=True)
    (home / "jobs" / "jobs.sqlite3").write_bytes(b"")
    assert main(["get-most-recent-jobs"]) == 0


def test_a_tinypipe_home_that_cannot_be_created_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("TINYPIPE_HOME", str(tmp_path / "a_file" / "home"))
    line = one_error_line(capsys, ["get-most-recent-jobs"])
    assert "a_file/home" in line and "set TINYPIPE_HOME to a writable folder" in line


@pytest.fixture
def read_only_store(home):
    """The store file made read-only: a read-only bind mount as root (root ignores file modes), else chmod."""
    store = JobStore()
    store.create("first", "train-diffuser", "lora", {})
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(store.path), str(store.path)], capture_output=True).returncode == 0
        if not mounted or subprocess.run(["mount", "-o", "remount,bind,ro", str(store.path)], capture_output=True).returncode:
            if mounted:
                subprocess.run(["umount", str(store.path)])
            pytest.skip("a read-only bind mount is not possible here")
        yield store
        subprocess.run(["umount", str(store.path)], check=True)
    else:
        store.path.chmod(0o444)
        yield store
        store.path.chmod(0o644)


def test_a_read_only_store_is_named_and_leaves_no_orphan_job_folder(read_only_store):
    before = sorted(p.name for p in read_only_store.folder.iterdir() if p.is_dir())
    with pytest.raises(JobStoreError, match="readonly.*make it .* writable, or set TINYPIPE_HOME") as error:
        JobStore().create("second", "train-diffuser", "lora", {})
    assert str(read_only_store.path) in str(error.value)
    assert sorted(p.name for p in read_only_store.folder.iterdir() if p.is_dir()) == before  # no orphan job folder
