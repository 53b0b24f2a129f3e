"""The local job store: records, status changes, dead processes, and several processes writing at once."""

import subprocess
import sys
import textwrap

import pytest

from tinypipe.jobs import JobError, JobStore, _SCHEMA


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs")


def test_a_job_is_recorded_with_its_folder_log_and_output(store, tmp_path):
    job = store.create("circles", "train-diffuser", "lora", {"model": "tinypipe/tiny-sd"})
    assert job.status == "queued" and job.name == "circles" and job.arguments == {"model": "tinypipe/tiny-sd"}
    assert job.folder.is_dir() and job.log_file == job.folder / "log.txt" and job.output == job.folder / "repo"
    elsewhere = store.create("other", "train-lm", "lora", {}, output=tmp_path / "out")
    assert elsewhere.output == (tmp_path / "out").resolve()
    assert JobStore(store.folder).get(job.id) == job  # another store object (another process) reads the same


def test_status_changes_never_reopen_a_finished_job(store):
    job = store.create("run", "train-diffuser", "lora", {})
    assert store.start(job.id)
    assert store.get(job.id).status == "running" and store.get(job.id).started_at is not None
    assert store.finish(job.id, "cancelled", "cancelled by the user")
    assert not store.finish(job.id, "succeeded")  # the worker finishing late does not overwrite the cancel
    assert not store.start(job.id)
    done = store.get(job.id)
    assert (done.status, done.error) == ("cancelled", "cancelled by the user") and done.finished_at >= done.started_at


def test_recent_lists_the_newest_first_and_at_most_the_limit(store):
    ids = [store.create(f"job-{index}", "train-lm", "lora", {}).id for index in range(12)]
    recent = store.recent()
    assert [job.id for job in recent] == ids[::-1][:10]


def test_an_unknown_id_says_how_to_list_the_jobs(store):
    with pytest.raises(JobError, match="get-most-recent-jobs"):
        store.get("deadbeef")


def test_a_job_whose_process_died_is_reported_failed(store):
    job = store.create("crash", "train-diffuser", "lora", {})
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    store.attach_process(job.id, process.pid)
    assert store.start(job.id, pid=process.pid)
    process.wait()  # the process ends without recording a result, as a crash would
    failed = store.get(job.id)
    assert failed.status == "failed" and f"pid {process.pid}" in failed.error and str(failed.log_file) in failed.error


def test_a_job_of_a_live_process_stays_running(store):
    job = store.create("alive", "train-diffuser", "lora", {})
    assert store.start(job.id)  # this test's own process
    assert store.get(job.id).status == "running"
    assert store.recent()[0].status == "running"


def test_several_processes_writing_at_once_do_not_corrupt_the_store(store):
    script = textwrap.dedent(f"""
        from tinypipe.jobs import JobStore
        store = JobStore({str(store.folder)!r})
        for index in range(15):
            job = store.create(f"job-{{index}}", "train-lm", "lora", {{"index": index}})
            store.start(job.id)
            store.finish(job.id, "succeeded")
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE) for _ in range(4)]
    errors = [worker.communicate()[1].decode() for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), errors
    jobs = store.recent(limit=100)
    assert len(jobs) == 60 and len({job.id for job in jobs}) == 60
    assert {job.status for job in jobs} == {"succeeded"}


def test_a_store_written_before_attempts_were_recorded_opens_with_its_jobs_at_attempt_one(tmp_path):
    import sqlite3

    folder = tmp_path / "jobs"
    folder.mkdir()
    old_schema = _SCHEMA.replace(",\n    attempts INTEGER NOT NULL DEFAULT 1", "")
    assert "attempts" not in old_schema
    with sqlite3.connect(folder / "jobs.sqlite3") as connection:
        connection.execute(old_schema)
        connection.execute("INSERT INTO jobs (id, name, kind, method, arguments, status, created_at, log_file, output) "
                           "VALUES ('0123abcd', 'old', 'train-lm', 'lora', '{}', 'failed', 1.0, '/x/log.txt', '/x/repo')")
    store = JobStore(folder)
    assert store.find("old").attempts == 1
    assert store.reopen("0123abcd", {"resumed": True}) and store.get("0123abcd").attempts == 2
