"""The jobs list and a job's page (`tinypipe/ui/job_pages.py`, `job_actions.py`): what they show of the job store and
of a job's repo, and their buttons doing what the CLI commands do."""

import html
import io
import re
import zipfile

import pytest

pytest.importorskip("fastapi", reason="the ui extra is not installed (pip install -e '.[ui]'): the web UI's tests are skipped")

from safetensors.torch import load  # noqa: E402

from tinypipe.cli import main  # noqa: E402
from tinypipe.jobs import JobStore  # noqa: E402
from ui_helpers import record_job  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_jobs_list_is_newest_first_and_filters_by_status(client):
    store = JobStore()
    names = [record_job(store, name, status).name for name, status in
             (("oldest", "succeeded"), ("broken", "failed"), ("stopped", "cancelled"), ("newest", "succeeded"))]
    page = client.get("/").text
    assert [page.index(f">{name}</a>") for name in reversed(names)] == sorted(page.index(f">{name}</a>") for name in names)
    for address in ("/?status=failed", "/jobs/rows?status=failed"):
        shown = re.findall(r'<a href="/jobs/\w+">([^<]+)</a>', client.get(address).text)
        assert shown == ["broken"]


def test_a_running_jobs_row_shows_its_progress_and_the_time_left(client):
    bar = "LoRA:  20%|##        | 2/10 [00:01<00:08,  1.00it/s]\rLoRA:  40%|####      | 4/10 [00:02<00:06,  1.00it/s, loss=0.1]"
    record_job(JobStore(), "busy", "running", log=f"started\n{bar}")
    row = client.get("/jobs/rows").text
    assert "4/10" in row and "0:00:06 left" in row and 'value="40"' in row


def test_a_jobs_page_shows_its_loss_curve_validation_images_and_checkpoints(client, trained_job):
    page = html.unescape(client.get(f"/jobs/{trained_job.name}").text)  # a job is named as the CLI names it: id, prefix or name
    images = re.findall(r'src="(/jobs/[^"]+)"', page)
    assert f"/jobs/{trained_job.id}/loss.png" in images
    assert f"/jobs/{trained_job.id}/files/validation/before_after.png" in images
    assert any("/files/validation/epoch-" in image for image in images)
    for image in images:
        answer = client.get(image)
        assert answer.status_code == 200 and answer.content.startswith(PNG), image
    assert '"max_train_steps": 2' in page  # its arguments
    assert "<li>checkpoint-2</li>" in page
    log = client.get(f"/jobs/{trained_job.id}/log").json()
    assert log["status"] == "succeeded" and f"Job {trained_job.id} succeeded" in log["text"]
    tail = client.get(f"/jobs/{trained_job.id}/log", params={"offset": log["offset"] - 10}).json()
    assert tail["text"] == log["text"][-10:]


def test_only_images_inside_the_jobs_repo_are_served(client, trained_job):
    for relative in ("model/config.json", "..%2F..%2Fjobs.sqlite3", "%2e%2e/log.txt", "model/pytorch_lora_weights.safetensors"):
        assert client.get(f"/jobs/{trained_job.id}/files/{relative}").status_code == 404, relative


def test_the_download_button_gives_the_zip_download_model_writes(client, trained_job, tmp_path, capsys):
    answer = client.get(f"/jobs/{trained_job.id}/download")
    assert answer.status_code == 200
    assert f'filename="circles-{trained_job.id}.zip"' in answer.headers["content-disposition"]
    assert main(["download-model", trained_job.id, "--to", str(tmp_path / "cli.zip")]) == 0
    with zipfile.ZipFile(io.BytesIO(answer.content)) as from_page, zipfile.ZipFile(tmp_path / "cli.zip") as from_cli:
        assert sorted(from_page.namelist()) == sorted(from_cli.namelist())
        assert {"model/pytorch_lora_weights.safetensors", "model/config.json", "validation/before_after.png"} <= set(from_page.namelist())
        for name in from_cli.namelist():
            assert from_page.read(name) == from_cli.read(name)


def test_the_export_button_gives_a_kohya_lora_file(client, trained_job):
    answer = client.post(f"/jobs/{trained_job.id}/export", data={"format": "kohya"})
    assert answer.status_code == 200
    assert f'filename="circles-{trained_job.id}-kohya.safetensors"' in answer.headers["content-disposition"]
    tensors = load(answer.content)
    assert tensors and all(key.startswith("lora_unet_") or key.startswith("lora_te") for key in tensors)


def test_a_hub_token_typed_into_the_push_form_is_never_shown_or_stored(client, trained_job, trained_home):
    token = "hf_NeverShowThisToken123"
    answer = client.post(f"/jobs/{trained_job.id}/push", data={"hub_id": "me/circles", "token": token})
    assert answer.status_code == 409 and 'class="error"' in answer.text  # offline: the push fails, saying why
    assert token not in answer.text
    for path in trained_home.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_cancel_resume_and_delete_refuse_as_the_cli_does_and_delete_keeps_the_repo_unless_asked(client, tmp_path):
    store = JobStore()
    kept, removed = tmp_path / "kept", tmp_path / "removed"
    for folder in (kept, removed):
        (folder / "model").mkdir(parents=True)
    first, second = record_job(store, "first", "failed", output=kept), record_job(store, "second", output=removed)
    answer = client.post(f"/jobs/{first.id}/cancel")
    assert answer.status_code == 409 and f"Job {first.id} already failed; there is nothing to cancel." in answer.text
    answer = client.post(f"/jobs/{first.id}/resume")
    assert answer.status_code == 409 and f"Job {first.id} has no checkpoint to resume from" in answer.text
    assert client.post(f"/jobs/{first.id}/delete", follow_redirects=False).status_code == 303
    assert client.post(f"/jobs/{second.id}/delete", data={"delete_output": "on"}, follow_redirects=False).status_code == 303
    assert store.recent(10) == [] and kept.is_dir() and not removed.exists()


def test_the_derive_button_writes_a_new_repo_and_leaves_the_jobs_repo_as_it_was(client, trained_job, tmp_path):
    before = sorted(path.relative_to(trained_job.output) for path in trained_job.output.rglob("*"))
    form = {"replace": "lora", "path": str(trained_job.output), "output": str(tmp_path / "derived")}
    answer = client.post(f"/jobs/{trained_job.id}/derive", data=form)
    assert answer.status_code == 200 and f"Wrote {tmp_path / 'derived'}" in answer.text
    assert (tmp_path / "derived" / "model" / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(path.relative_to(trained_job.output) for path in trained_job.output.rglob("*")) == before
    again = client.post(f"/jobs/{trained_job.id}/derive", data=form)  # the new repo exists now: refused, as the CLI does
    assert again.status_code == 409 and "derived" in again.text and 'class="error"' in again.text


def test_cancel_stops_a_running_job(client):
    store = JobStore()
    job = record_job(store, "queued-one", "queued")
    answer = client.post(f"/jobs/{job.id}/cancel", data={"next": "/"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    assert store.get(job.id).status == "cancelled"


def test_an_unknown_job_is_a_404_naming_it(client):
    answer = client.get("/jobs/no-such-job")
    assert answer.status_code == 404 and "There is no job &#39;no-such-job&#39;" in answer.text


def test_resume_is_offered_for_a_stopped_job_but_not_for_a_succeeded_one(client, trained_job, new_home, monkeypatch):
    # a succeeded job cannot be resumed (the CLI refuses: train further in a new job), so no page offers it
    resume = 'action="/jobs/{}/resume"'
    for page in (client.get("/").text + client.get("/jobs/rows").text, client.get(f"/jobs/{trained_job.id}").text):
        assert resume.format(trained_job.id) not in page
    home = new_home()  # the stopped job in a store of its own: the trained one is shared with other tests
    monkeypatch.setenv("TINYPIPE_HOME", str(home))
    failed = record_job(JobStore(), "stopped", "failed", output=home / "out")
    assert resume.format(failed.id) in client.get(f"/jobs/{failed.id}").text


def test_a_resumed_jobs_page_says_which_attempt_it_is(client, new_home, monkeypatch):
    monkeypatch.setenv("TINYPIPE_HOME", str(new_home()))
    store = JobStore()
    job = record_job(store, "interrupted", "failed")
    assert "job-attempts" not in client.get(f"/jobs/{job.id}").text  # a first attempt says nothing of attempts
    assert store.reopen(job.id, job.arguments)
    store.start(job.id)
    assert "(attempt 2: resumed 1 time)" in client.get(f"/jobs/{job.id}").text
