"""The New-job form (`tinypipe/ui/new_job.py`) checks what it is given exactly as the command line does: the same
message, before any job is recorded; and a job it starts is the job `--detach` records."""

import html
import io
import re
import zipfile

import pytest

pytest.importorskip("fastapi", reason="the ui extra is not installed (pip install -e '.[ui]'): the web UI's tests are skipped")

from tinypipe.builtin.tiny_sd import write_shapes_folder  # noqa: E402
from tinypipe.cli import main  # noqa: E402
from tinypipe.jobs import JobStore  # noqa: E402
from tinypipe.runner import cancel_job  # noqa: E402

DIFFUSER = {"kind": "train-diffuser", "name": "circles", "model": "tinypipe/tiny-sd", "dataset": "tinypipe/shapes",
            "prompt": "a photo of sks circle"}
LM = {"kind": "train-lm", "name": "answers", "model": "tinypipe/tiny-llama", "dataset": "tinypipe/tiny-instructions"}
TRAIN_DIFFUSER = ["train-diffuser", "circles", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle"]
TRAIN_LM = ["train-lm", "answers", "tinypipe/tiny-llama", "tinypipe/tiny-instructions"]


def refusal(answer) -> str:
    """The error line a page shows."""
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', answer.text, re.S)
    return html.unescape(found.group(1)) if found else ""


# (what the form is given, what the same user types on the command line)
MISTAKES = {
    "a negative count (the parser)": ({**DIFFUSER, "num_prior_class_images": "-1"}, [*TRAIN_DIFFUSER, "--num-prior-class-images", "-1"]),
    "zero steps (the settings check)": ({**DIFFUSER, "max_train_steps": "0"}, [*TRAIN_DIFFUSER, "--training-args", '{"max_train_steps": 0}']),
    "a number field given text": ({**DIFFUSER, "learning_rate": "fast"}, [*TRAIN_DIFFUSER, "--training-args", '{"learning_rate": "fast"}']),
    "advanced JSON that is not JSON": ({**DIFFUSER, "training_args": "{epochs: 3}"}, [*TRAIN_DIFFUSER, "--training-args", "{epochs: 3}"]),
    "an unknown training argument": ({**DIFFUSER, "training_args": '{"num_epochs": 3}'}, [*TRAIN_DIFFUSER, "--training-args", '{"num_epochs": 3}']),
    "a data folder that does not exist": ({**DIFFUSER, "dataset": "/no/such/photos"}, [*TRAIN_DIFFUSER[:3], "/no/such/photos", TRAIN_DIFFUSER[4]]),
    "textual inversion without its initializer": ({**DIFFUSER, "method": "textual-inversion", "prompt": "a photo of <sks>"},
                                                  [*TRAIN_DIFFUSER[:4], "a photo of <sks>", "--method", "textual-inversion"]),
    "prior preservation without a class prompt": ({**DIFFUSER, "num_prior_class_images": "4"}, [*TRAIN_DIFFUSER, "--num-prior-class-images", "4"]),
    "a job name that is a path": ({**DIFFUSER, "name": "../x"}, ["train-diffuser", "../x", *TRAIN_DIFFUSER[2:]]),
    "an LM dropout of 1.5 (the parser)": ({**LM, "lora_dropout": "1.5"}, [*TRAIN_LM, "--lora-dropout", "1.5"]),
    "an unknown chat template": ({**LM, "chat_template": "vicuna"}, [*TRAIN_LM, "--chat-template", "vicuna"]),
}


def cli_refusal(capsys, argv: list) -> str:
    """The one line `tinypipe ARGV` prints when it refuses the command (exit code 2)."""
    try:
        code = main(argv)
    except SystemExit as exit:  # the parser's own refusals
        code = exit.code
    assert code == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_the_form_refuses_what_the_cli_refuses_with_the_same_message_and_records_no_job(client, capsys, mistake):
    form, argv = MISTAKES[mistake]
    cli_says = cli_refusal(capsys, argv)
    answer = client.post("/new", data=form)
    assert answer.status_code == 400
    assert refusal(answer) == cli_says
    assert JobStore().recent(10) == []


def test_a_field_and_the_advanced_json_giving_the_same_argument_twice_is_refused(client):
    answer = client.post("/new", data={**DIFFUSER, "max_train_steps": "5", "training_args": '{"max_train_steps": 7}'})
    assert answer.status_code == 400 and "max_train_steps" in refusal(answer) and "give it once" in refusal(answer)
    assert JobStore().recent(10) == []


def _zip_of(files: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_an_uploaded_zip_with_a_member_outside_its_folder_is_refused_and_nothing_is_extracted(client, tmp_path):
    upload = _zip_of({"../../escaped.png": b"not really", "a.png": b"x"})
    answer = client.post("/new", data={**DIFFUSER, "dataset": ""}, files={"dataset_file": ("photos.zip", upload, "application/zip")})
    assert answer.status_code == 400 and "whose name would escape the folder" in refusal(answer)
    assert JobStore().recent(10) == [] and not list(tmp_path.parent.rglob("escaped.png"))


def test_a_valid_form_records_the_job_that_tinypipe_train_diffuser_detach_records(client, capsys, tmp_path):
    shapes = write_shapes_folder(tmp_path / "photos", count=4)
    photos = _zip_of({f"photos/{path.name}": path.read_bytes() for path in sorted(shapes.iterdir())})
    answer = client.post("/new", data={**DIFFUSER, "dataset": "", "method": "lora", "max_train_steps": "3", "rank": "2",
                                       "training_args": '{"checkpointing_steps": 2}'},
                         files={"dataset_file": ("photos.zip", photos, "application/zip")}, follow_redirects=False)
    assert answer.status_code == 303
    store = JobStore()
    (from_form,) = store.recent(1)
    assert answer.headers["location"] == f"/jobs/{from_form.id}"
    cancel_job(store, from_form.id)  # the test needs its record, not its run
    uploaded = next((store.folder.parent / "uploads").rglob("photos.zip"))
    assert main([*TRAIN_DIFFUSER[:3], str(uploaded), TRAIN_DIFFUSER[4], "--method", "lora",
                 "--training-args", '{"checkpointing_steps": 2, "max_train_steps": 3, "rank": 2}', "--detach"]) == 0
    from_cli = store.get(capsys.readouterr().out.split()[0])
    cancel_job(store, from_cli.id)
    assert from_form.arguments == from_cli.arguments
    assert from_form.arguments["train_arguments"]["max_train_steps"] == 3 and from_form.arguments["train_arguments"]["rank"] == 2
    assert from_form.arguments["dataset"].startswith(str(store.folder.parent / "datasets"))  # extracted as the CLI does
