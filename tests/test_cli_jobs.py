"""The job commands (`tinypipe/cli_jobs.py`): a job named by id, id prefix or name everywhere; `logs --follow`;
`resume` continuing the same job; `rm` keeping the repo unless asked."""

import json

import pytest

from tinypipe.cli import main
from tinypipe.cli_jobs import follow_log
from tinypipe.jobs import JobError, JobStore

TRAIN = ["train-diffuser", "circles", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ended_job(store: JobStore, name: str, status: str = "succeeded", log: str = "line one\n"):
    job = store.create(name, "train-diffuser", "lora", {"kind": "train-diffuser", "name": name, "method": "lora",
                                                        "model": "tinypipe/tiny-sd", "dataset": "tinypipe/shapes"})
    job.log_file.write_text(log)
    store.start(job.id)
    store.finish(job.id, status)
    return store.get(job.id)


def test_a_job_is_found_by_its_id_a_unique_id_prefix_or_a_unique_name_and_ambiguity_lists_the_matches(tmp_path):
    store = JobStore(tmp_path / "jobs")
    first, second, third = ended_job(store, "cats"), ended_job(store, "dogs"), ended_job(store, "dogs")
    assert store.find(first.id) == first and store.find("cats") == first
    prefix = next(first.id[:length] for length in range(1, 9)
                  if not any(other.id.startswith(first.id[:length]) for other in (second, third)))
    assert store.find(prefix).id == first.id
    with pytest.raises(JobError, match="'dogs' matches 2 jobs") as error:
        store.find("dogs")
    assert second.id in str(error.value) and third.id in str(error.value)
    with pytest.raises(JobError, match="no job id, id prefix or name matches"):
        store.find("birds")


def test_every_job_command_takes_a_job_name(capsys):
    store = JobStore()
    job = ended_job(store, "circles", log="the log of circles\n")
    code, out, _ = run(capsys, "check-job-status", "circles")
    assert code == 0 and f"Job {job.id}: circles" in out
    code, out, _ = run(capsys, "logs", "circles")
    assert code == 0 and out == "the log of circles\n"
    code, _, err = run(capsys, "cancel", "circles")
    assert code == 2 and f"Job {job.id} already succeeded" in err
    code, _, err = run(capsys, "download-model", "circles")
    assert code == 2 and f"Job {job.id} succeeded but its repo" in err  # found; it just has no model/ folder
    ended_job(store, "circles")
    code, _, err = run(capsys, "resume", "circles")
    assert code == 2 and "'circles' matches 2 jobs" in err


def test_logs_follow_prints_what_a_running_job_appends_until_it_ends(tmp_path):
    store = JobStore(tmp_path / "jobs")
    job = store.create("run", "train-diffuser", "lora", {})
    store.start(job.id)  # this process runs it: alive
    job.log_file.write_text("started\n")
    appended = iter(["step 1\n", "step 2\n"])
    written = []

    def next_poll():  # between two reads of the log: the job writes more, then ends
        line = next(appended, None)
        if line is None:
            store.finish(job.id, "succeeded")
        else:
            with open(job.log_file, "a") as log:
                log.write(line)

    status = follow_log(store, job.id, written.append, follow=True, wait=next_poll)
    assert status == "succeeded" and "".join(written) == "started\nstep 1\nstep 2\n"


def test_rm_keeps_the_repo_unless_asked_and_refuses_a_running_job(capsys, tmp_path):
    store = JobStore()
    kept = ended_job(store, "kept")
    (kept.output / "model").mkdir(parents=True)
    code, out, _ = run(capsys, "rm", "kept")
    assert code == 0 and f"The repo stays in {kept.output}" in out
    assert (kept.output / "model").is_dir() and not kept.log_file.exists()
    assert [job.id for job in store.recent()] == []

    deleted = ended_job(store, "deleted")
    (deleted.output / "model").mkdir(parents=True)
    assert run(capsys, "rm", deleted.id, "--delete-output")[0] == 0
    assert not deleted.folder.exists()

    foreign = store.create("mine", "train-diffuser", "lora", {}, output=tmp_path / "my-folder")
    store.start(foreign.id)
    code, _, err = run(capsys, "rm", "mine", "--delete-output")
    assert code == 2 and f"Job {foreign.id} is running; stop it first" in err
    store.finish(foreign.id, "failed")
    (tmp_path / "my-folder").mkdir()
    (tmp_path / "my-folder" / "thesis.tex").write_text("years of work")
    code, _, err = run(capsys, "rm", "mine", "--delete-output")
    assert code == 2 and "thesis.tex, which no tinypipe run writes" in err
    assert (tmp_path / "my-folder" / "thesis.tex").is_file() and store.find(foreign.id)


@pytest.fixture(scope="module")
def resumed():
    """A foreground run cancelled (Ctrl-C) right after its first checkpoint, then `tinypipe resume` of it by name (in the
    session's tinypipe home, whose built-in model the other module-scoped runs share)."""
    import tinypipe.trainers.lora as lora

    arguments = {"max_train_steps": 2, "checkpointing_steps": 1, "num_validation_images": 0}
    save = lora.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        path = save(*args, **kwargs)
        raise KeyboardInterrupt  # as Ctrl-C right after the checkpoint is in place
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lora, "save_checkpoint", save_then_interrupt)
        assert main(["train-diffuser", "resume-me", *TRAIN[2:], "--training-args", json.dumps(arguments)]) == 130
    store = JobStore()
    old = next(job for job in store.recent(100) if job.name == "resume-me")
    assert old.status == "cancelled"
    assert main(["resume", "resume-me"]) == 0  # by its name, unique so far
    return store, old


def test_resume_continues_the_same_job_from_its_own_checkpoint_and_appends_its_log(resumed, capsys, monkeypatch):
    store, old = resumed
    monkeypatch.setenv("TINYPIPE_HOME", str(store.folder.parent))
    jobs = [job for job in store.recent(100) if job.name == "resume-me"]
    assert [job.id for job in jobs] == [old.id]  # no second job: the name stays unique
    job = jobs[0]
    assert job.status == "succeeded" and job.attempts == 2 and job.output == old.output
    assert job.arguments["train_arguments"] == {**old.arguments["train_arguments"], "resume_from_checkpoint": "latest"}
    log = job.log_file.read_text()
    assert log.index("cancelled") < log.index("--- attempt 2") < log.index("Resumed from") < log.rindex("succeeded")
    assert "checkpoint-1" in log[log.index("Resumed from"):].splitlines()[0]
    code, out, _ = run(capsys, "check-job-status", "resume-me")
    assert code == 0 and "attempt 2 (resumed)" in out and "status    succeeded" in out


def test_resume_of_a_succeeded_job_is_refused_saying_how_to_train_further(resumed, capsys, monkeypatch):
    store, old = resumed
    monkeypatch.setenv("TINYPIPE_HOME", str(store.folder.parent))
    code, _, err = run(capsys, "resume", old.id)
    assert code == 2 and f"Job {old.id} (resume-me) already succeeded" in err and "larger max_train_steps" in err
    job = store.get(old.id)
    assert job.attempts == 2 and [other.id for other in store.recent(100) if other.name == "resume-me"] == [old.id]


def test_resume_without_a_checkpoint_is_refused_saying_why(capsys):
    job = ended_job(JobStore(), "no-checkpoint", status="failed")
    code, _, err = run(capsys, "resume", job.id)
    assert code == 2 and f"Job {job.id} has no checkpoint to resume from" in err
    assert len(JobStore().recent()) == 1  # no new job


def test_a_succeeded_job_without_checkpoints_is_not_told_to_resume_from_one(capsys):
    job = ended_job(JobStore(), "short", status="succeeded")
    code, _, err = run(capsys, "resume", job.id)
    assert code == 2 and "larger max_train_steps" in err and "it starts over: this run wrote no checkpoint" in err
    assert "resume_from_checkpoint" not in err


def test_every_repo_command_takes_a_job_by_name_or_id_prefix_and_ambiguity_lists_the_ids(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    store = JobStore()
    job = ended_job(store, "my-lora")
    job.output.mkdir()
    for argv in (["push", "my-lora", "me/x"], ["push", job.id[:5], "me/x"], ["export", "my-lora"],
                 ["derive", "my-lora", str(tmp_path / "new"), "--lora", str(job.output)],
                 ["merge", "my-lora", str(tmp_path / "merged")], ["generate", "my-lora", "a photo"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and str(job.output) in err, (argv, err)  # the job's repo was read (it is empty: refused)
    ended_job(store, "my-lora")
    for argv in (["generate", "my-lora", "a photo"], ["export", "my-lora"], ["push", "my-lora", "me/x"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "'my-lora' matches 2 jobs" in err and job.id in err, (argv, err)
    code, _, err = run(capsys, "generate", "no-such-lora", "a photo")
    assert code == 2 and "no-such-lora" in err and "tinypipe get-most-recent-jobs" in err
    running = store.create("busy", "train-diffuser", "lora", {})
    store.start(running.id)
    code, _, err = run(capsys, "generate", "busy", "a photo")
    assert code == 2 and f"Job {running.id} (busy) is running" in err
