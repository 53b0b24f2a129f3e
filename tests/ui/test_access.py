"""Who may use the web UI (`tinypipe/ui/security.py`): a UI others can reach answers nothing without its token; a
local UI answers only requests addressed to this machine; a form from another site changes nothing."""

import pytest

pytest.importorskip("fastapi", reason="the ui extra is not installed (pip install -e '.[ui]'): the web UI's tests are skipped")

from tinypipe.cli import build_parser  # noqa: E402
from tinypipe.jobs import JobStore  # noqa: E402
from tinypipe.ui import create_app  # noqa: E402
from ui_helpers import ADDRESS, client_for, record_job  # noqa: E402

NEW_JOB = {"kind": "train-diffuser", "name": "sneaky", "model": "tinypipe/tiny-sd", "dataset": "tinypipe/shapes",
           "prompt": "a photo of sks circle"}


@pytest.fixture
def reachable():
    """The UI as `tinypipe ui --host 0.0.0.0 --auth s3cret-token` serves it."""
    return client_for(create_app(build_parser, "s3cret-token", local_only=False))


def test_a_ui_others_can_reach_refuses_every_request_without_its_token(reachable):
    job = record_job(JobStore(), "private-run")
    for path in ("/", f"/jobs/{job.id}", f"/jobs/{job.id}/log", f"/jobs/{job.id}/download", "/jobs/rows", "/new", "/try",
                 "/static/ui.js"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "tinypipe_ui_token=wrong"}):
            answer = reachable.get(path, headers=headers)
            assert answer.status_code == 401, path
            assert "private-run" not in answer.text and "access token" in answer.text
    assert reachable.post("/new", data=NEW_JOB).status_code == 401
    assert reachable.post(f"/jobs/{job.id}/delete", data={"delete_output": "on"}).status_code == 401
    assert [j.id for j in JobStore().recent(10)] == [job.id]  # nothing recorded, nothing deleted
    answer = reachable.get("/", headers={"Authorization": "Bearer s3cret-token"})
    assert answer.status_code == 200 and "private-run" in answer.text


def test_the_printed_link_sets_a_cookie_and_leaves_the_token_out_of_the_address(reachable):
    answer = reachable.get("/?token=s3cret-token", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"{ADDRESS}/"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert reachable.get("/").status_code == 200  # the cookie now comes with every request
    assert client_for(reachable.app).get("/?token=guess").status_code == 401


def test_a_local_ui_answers_only_requests_addressed_to_this_machine(client):
    assert client.get("/", headers={"Host": "127.0.0.1:7860"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost:7860"}).status_code == 200
    # A site whose name was pointed at 127.0.0.1 (DNS rebinding) gets nothing.
    answer = client.get("/", headers={"Host": "attacker.example:7860"})
    assert answer.status_code == 400 and "127.0.0.1" in answer.text


def test_a_form_sent_from_another_site_is_refused_and_records_no_job(client):
    answer = client.post("/new", data=NEW_JOB, headers={"Origin": "http://attacker.example"})
    assert answer.status_code == 403
    assert JobStore().recent(10) == []


def test_a_ui_others_can_reach_cannot_be_made_without_a_token():
    with pytest.raises(ValueError, match="needs an access token"):
        create_app(build_parser, None, local_only=False)


def test_a_ui_served_to_other_machines_prints_a_link_they_can_open(monkeypatch, capsys):
    import socket

    import uvicorn

    from tinypipe.cli import main

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **options: served.append((host, port)))
    monkeypatch.setattr(socket, "getfqdn", lambda *name: "gpu-box.lab")
    assert main(["ui", "--host", "0.0.0.0", "--port", "7861", "--auth", "s3cret-token"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert served == [("0.0.0.0", 7861)]
    assert printed[:2] == ["tinypipe UI on http://127.0.0.1:7861/?token=s3cret-token",
                           "From other machines: http://gpu-box.lab:7861/?token=s3cret-token"]
