"""Bad input to the `tinypipe` command: exit code 2, one message naming what is wrong and how to fix it, no job."""

import argparse
import json
import os
import subprocess
import sys
import zipfile

import pytest

from tinypipe.cli import build_parser, main
from tinypipe.jobs import JobStore

TRAIN = ["train-diffuser", "run", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle"]


def run(capsys, *argv: str) -> tuple[int, str]:
    """Run the command in this process; returns (exit code, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    return code, capsys.readouterr().err


def no_jobs() -> bool:
    return JobStore().recent() == []


def test_help_starts_without_importing_the_heavy_libraries():
    # The speed figure is in bench/bench_cli_help.py; this checks the cause: nothing heavy is imported.
    code = ("import sys, contextlib, io\nfrom tinypipe.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for command in ([], ['train-diffuser'], ['get-most-recent-jobs']):\n"
            "        try:\n            main([*command, '--help'])\n        except SystemExit:\n            pass\n"
            "print(sorted(name for name in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_option_of_every_command_is_explained():
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    assert {"train-diffuser", "train-lm", "get-most-recent-jobs", "check-job-status", "download-model", "cancel",
            "generate", "push", "derive", "demo"} <= set(commands.choices)
    listed = {action.dest for action in commands._choices_actions}
    for name, command in commands.choices.items():
        assert name in listed and command.description, f"{name} has no description"
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"tinypipe {name}: {action.option_strings or action.dest} has no help text"


def test_the_job_commands_run_in_a_shell_without_a_store_yet(capsys):
    assert main(["get-most-recent-jobs"]) == 0
    assert "No jobs yet" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-diffuser", "run", "tinypipe/tiny-sd", "no/such/folder", "a photo"], "no/such/folder does not exist"),
        ([*TRAIN, "--training-args", '{"learning_rate": 1e-4,}'], "--training-args is not valid JSON: .* line 1 column"),
        ([*TRAIN, "--training-args", '[1, 2]'], "must be a JSON object"),
        ([*TRAIN, "--training-args", '{"learnin_rate": 1e-4}'], r"--training-args: unknown keys \['learnin_rate'\]; valid keys are .*'learning_rate'"),
        ([*TRAIN, "--training-args", '{"output_dir": "x"}'], "may not set 'output_dir'; give it as --output"),
        ([*TRAIN, "--method", "textual-inversion"], "needs the new token"),
        (["train-diffuser", "run", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of <tok>", "--method", "textual-inversion"],
         "needs --initializer-token"),
        ([*TRAIN, "--num-prior-class-images", "4"], "needs --prior-class-prompt"),
        ([*TRAIN, "--prior-class-prompt", "a photo of a circle"], "needs class images"),
        ([*TRAIN, "--prior-class-prompt", "a circle", "--prior-class-image-dir", __file__], "is a file, not a folder"),
        ([*TRAIN, "--prior-class-prompt", "a circle", "--prior-class-image-dir", "new-folder"], "--num-prior-class-images N"),
        (["train-lm", "run", "tinypipe/tiny-llama", "missing.json"], "missing.json does not exist"),
        (["train-lm", "run", "tinypipe/tiny-llama", "tinypipe/tiny-instructions", "--training-args", '{"rank": 4}'],
         r"--training-args: unknown keys \['rank'\]; valid keys are .*'r'"),
        (["train-diffuser", "run", "tinypipe/tiny-sdd", "tinypipe/shapes", "a photo"],
         "MODEL 'tinypipe/tiny-sdd' is not a built-in model. Did you mean 'tinypipe/tiny-sd'"),
        (["train-diffuser", "run", "tinypipe/tiny-sdx", "tinypipe/shapes", "a photo"],
         "MODEL 'tinypipe/tiny-sdx' is not a built-in model. Did you mean 'tinypipe/tiny-sdxl'"),
        (["train-lm", "run", "tinypipe/tiny-sd", "tinypipe/tiny-instructions"],
         "MODEL 'tinypipe/tiny-sd' is a built-in diffusion model, not a causal LM"),
        (["generate", "tinypipe/tiny-sdx", "a photo"], "'tinypipe/tiny-sdx' is not a built-in model. Did you mean 'tinypipe/tiny-sdxl'"),
        ([*TRAIN, "--training-args", '{"learnin_rate": 1e-4, "max_train_step": 3}'],
         r"Did you mean 'learning_rate' for 'learnin_rate', 'max_train_steps' for 'max_train_step'\?"),
        (["train-lm", "run", "tinypipe/tiny-lama", "tinypipe/tiny-instructions"], "Did you mean 'tinypipe/tiny-llama'"),
        ([*TRAIN, "--training-args", '{"max_train_steps": "sixty"}'], "'max_train_steps' must be an integer, got \"sixty\" \\(str\\)"),
        ([*TRAIN, "--training-args", '{"learning_rate": "1e-4"}'], "'learning_rate' must be a number, got \"1e-4\""),
        ([*TRAIN, "--training-args", '{"use_8bit_adam": "no"}'], "'use_8bit_adam' must be true or false, got \"no\""),
        (["train-lm", "run", "tinypipe/tiny-llama", "tinypipe/tiny-instructions", "--target-modules", "q_proj,,v_proj"],
         "--target-modules 'q_proj,,v_proj' has an empty name"),
        (["generate", "./no/such/repo", "a photo"], "REPO ./no/such/repo does not exist"),
        (["train-diffuser", "run", "tinypipe/tiny-sd3", "tinypipe/shapes", "a photo", "--export-formats", "kohya"],
         "A sd3 LoRA cannot be exported in the kohya format"),
        (["train-diffuser", "run", "tinypipe/tiny-flux", "tinypipe/shapes", "a photo of <tok>", "--method",
          "textual-inversion", "--initializer-token", "circle"], r"Textual inversion \(--method textual-inversion.*\) is not supported for the FLUX.1 family"),
        (["train-diffuser", "run", "tinypipe/tiny-sd3", "tinypipe/shapes", "a photo", "--method", "dreambooth"],
         "not supported for the Stable Diffusion 3 family"),
        ([*TRAIN, "--training-args", '{"rank": 0}'],
         r"--training-args: rank must be a whole number >= 1 \(or None, null in JSON, for the default\), got 0\.$"),
        (["check-job-status", "0badc0de"], "no job '0badc0de'.*get-most-recent-jobs"),
        (["download-model", "0badc0de"], "no job '0badc0de'"),
        (["cancel", "0badc0de"], "no job '0badc0de'"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message_and_no_job(capsys, argv, message, monkeypatch):
    import re

    import huggingface_hub

    def must_not_ask(*args, **kwargs):
        raise AssertionError("the hub was asked")  # every mistake here is known without it (a typo of a built-in name, ...)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", must_not_ask)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", must_not_ask)
    code, error = run(capsys, *argv)
    assert code == 2 and error.startswith("tinypipe: error: "), error
    assert re.search(message, error), error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert no_jobs()


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "a photo", "--steps", "0"], "argument --steps: must be 1 or more, got 0"),
    (["generate", "x", "a photo", "--num-images", "two"], "argument --num-images: must be an integer, got 'two'"),
    (["generate", "x", "a photo", "--max-new-tokens", "-5"], "argument --max-new-tokens: must be 1 or more"),
    (["get-most-recent-jobs", "--limit", "0"], "argument --limit: must be 1 or more"),
    (["check-job-status", "0badc0de", "--tail", "0"], "argument --tail: must be 1 or more"),
    ([*TRAIN, "--num-prior-class-images", "-1"], "argument --num-prior-class-images: must be 0 or more"),
    (["train-lm", "run", "tinypipe/tiny-llama", "tinypipe/tiny-instructions", "--lora-rank", "0"], "--lora-rank: must be 1 or more"),
    (["train-lm", "run", "tinypipe/tiny-llama", "tinypipe/tiny-instructions", "--lora-dropout", "1"], "--lora-dropout: must be at least 0"),
    (["train-lm", "run", "tinypipe/tiny-llama", "tinypipe/tiny-instructions", "--lora-alpha", "nan"], "--lora-alpha: must be a number above 0"),
])
def test_counts_below_one_and_values_of_the_wrong_type_are_one_line_errors(capsys, argv, message):
    code, error = run(capsys, *argv)
    assert code == 2 and message in error, error
    assert len(error.strip().splitlines()) == 1 and error.startswith(f"tinypipe {argv[0]}: error: ")
    assert no_jobs()


def test_kohya_subfolder_layout_names_the_subfolder_to_pass(capsys, tmp_path):
    from PIL import Image

    subfolder = tmp_path / "img" / "10_sks circle"  # kohya-ss: <repeats>_<name>/image.png + image.txt
    subfolder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(subfolder / "photo.png")
    (subfolder / "photo.txt").write_text("a photo of sks circle")
    code, error = run(capsys, "train-diffuser", "run", "tinypipe/tiny-sd", str(tmp_path / "img"), "a photo of sks circle")
    assert code == 2 and "sub-folder(s) '10_sks circle'" in error and repr(str(subfolder)) in error
    assert len(error.strip().splitlines()) == 1 and no_jobs()


def test_an_unknown_method_is_refused_by_the_parser(capsys):
    code, error = run(capsys, *TRAIN, "--method", "hypernetwork")
    assert code == 2 and "invalid choice: 'hypernetwork'" in error and no_jobs()


def test_an_empty_image_folder_is_refused(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, error = run(capsys, "train-diffuser", "run", "tinypipe/tiny-sd", str(tmp_path / "empty"), "a photo")
    assert code == 2 and "contains no images" in error and str(tmp_path / "empty") in error and no_jobs()


def test_an_empty_instruction_file_is_refused(capsys, tmp_path):
    (tmp_path / "data.json").write_text("[]")
    code, error = run(capsys, "train-lm", "run", "tinypipe/tiny-llama", str(tmp_path / "data.json"))
    assert code == 2 and "No records in" in error and no_jobs()


def test_a_zipped_data_set_whose_member_escapes_is_refused_before_extracting(capsys, tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("../../outside.png", b"not really")
    code, error = run(capsys, "train-diffuser", "run", "tinypipe/tiny-sd", str(archive), "a photo")
    assert code == 2 and "would escape" in error and no_jobs()
    assert not (tmp_path.parent / "outside.png").exists()


def test_download_of_a_running_or_failed_job_is_refused(capsys, tmp_path):
    store = JobStore()
    running = store.create("busy", "train-diffuser", "lora", {})
    store.start(running.id)  # this live process runs it
    code, error = run(capsys, "download-model", running.id, "--to", str(tmp_path / "x.zip"))
    assert code == 2 and "still running" in error and not (tmp_path / "x.zip").exists()
    failed = store.create("broken", "train-diffuser", "lora", {})
    store.finish(failed.id, "failed", "DataError: bad image")
    code, error = run(capsys, "download-model", failed.id)
    assert code == 2 and "it failed (DataError: bad image)" in error and f"check-job-status {failed.id}" in error


def test_a_job_whose_process_died_shows_as_failed(capsys):
    store = JobStore()
    job = store.create("crashed", "train-diffuser", "lora", {"model": "m", "dataset": "d"})
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    store.start(job.id, pid=process.pid)
    process.wait()
    assert main(["check-job-status", job.id]) == 0
    out = capsys.readouterr().out
    assert "status    failed" in out and "exited without reporting a result" in out


def test_push_with_no_token_keeps_the_repo_and_says_how_to_log_in(capsys, tmp_path, monkeypatch):
    import huggingface_hub

    from tinypipe.models import DiffusionPipeline

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    repo = DiffusionPipeline("tinypipe/tiny-sd", lora_rank=2).save_pretrained(tmp_path / "repo")
    before = {path: path.read_bytes() for path in repo.rglob("*") if path.is_file()}
    code, error = run(capsys, "push", str(repo), "me/lora")
    assert code == 2 and "hf auth login" in error and "saved and intact" in error
    assert {path: path.read_bytes() for path in repo.rglob("*") if path.is_file()} == before


def test_the_token_given_to_push_is_never_written(capsys, tmp_path, monkeypatch):
    import huggingface_hub

    from tinypipe.models import DiffusionPipeline

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None, **kwargs):
            uploaded["token"] = token

        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["files"] = {path.name: path.read_bytes() for path in __import__("pathlib").Path(folder_path).rglob("*")
                                 if path.is_file()}

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    repo = DiffusionPipeline("tinypipe/tiny-sd", lora_rank=2).save_pretrained(tmp_path / "repo")
    secret = "hf_CliSecretToken0123456789"
    assert main(["push", str(repo), "me/lora", "--token", secret]) == 0
    printed = capsys.readouterr()
    assert uploaded["token"] == secret and "README.md" in uploaded["files"]
    assert "lora" in json.dumps(uploaded["files"]["README.md"].decode())
    assert all(secret.encode() not in content for content in uploaded["files"].values())
    assert secret not in printed.out + printed.err
    assert all(secret.encode() not in path.read_bytes() for path in repo.rglob("*") if path.is_file())
    assert os.environ.get("HF_TOKEN") != secret


def test_resume_from_another_runs_checkpoint_exits_2_with_one_line_listing_what_differs(capsys, tmp_path):
    output = tmp_path / "out"
    settings = {"max_train_steps": 2, "checkpointing_steps": 2, "num_validation_images": 0, "use_8bit_adam": False}
    assert run(capsys, *TRAIN, "--output", str(output), "--training-args", json.dumps({**settings, "learning_rate": 1e-3}))[0] == 0
    resume = {**settings, "resume_from_checkpoint": str(output / "checkpoints" / "checkpoint-2")}
    code, err = run(capsys, *TRAIN, "--output", str(output), "--training-args", json.dumps(resume))
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("tinypipe: error:")]
    assert len(errors) == 1 and "belongs to another run" in errors[0]
    assert "learning_rate is 0.001 there, 0.0005 here" in errors[0] and "another output_dir" in errors[0]


def test_a_misspelled_option_is_refused_not_taken_as_an_abbreviation(capsys):
    code, err = run(capsys, *TRAIN, "--prior-class-prompt", "a photo of a circle", "--num-prior-class-image", "3")
    assert code == 2 and "unrecognized arguments: --num-prior-class-image" in err and no_jobs()


def test_a_job_run_in_this_process_leaves_the_callers_logging_handlers_as_they_were(capsys, tmp_path):
    import logging

    root = logging.getLogger()
    before = root.handlers[:], root.level
    code, _ = run(capsys, *TRAIN, "--output", str(tmp_path / "out"), "--training-args",
                  json.dumps({"max_train_steps": 1, "num_validation_images": 0, "checkpointing_steps": 0}))
    assert code == 0 and (root.handlers, root.level) == before


def test_download_never_replaces_an_existing_file_without_force(capsys, tmp_path):
    store = JobStore()
    job = store.create("done", "train-diffuser", "lora", {}, output=tmp_path / "repo")
    (tmp_path / "repo/model").mkdir(parents=True)
    (tmp_path / "repo/model/config.json").write_text("{}")
    store.start(job.id)
    store.finish(job.id, "succeeded")
    mine = tmp_path / "mine.zip"
    mine.write_bytes(b"the user's own file")
    code, error = run(capsys, "download-model", job.id, "--to", str(mine))
    assert code == 2 and "mine.zip already exists and is left as it is" in error and "--force" in error
    assert mine.read_bytes() == b"the user's own file"
    code, _ = run(capsys, "download-model", job.id, "--to", str(mine), "--force")
    assert code == 0 and zipfile.ZipFile(mine).namelist() == ["model/config.json"]
