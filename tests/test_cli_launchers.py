"""The `tinypipe` command line on other launchers and methods: textual inversion from a zip, cancelling a detached
job, `accelerate launch` on two processes (a module of its own, so the suite's workers share the CLI's runs)."""

import sys
import time
import zipfile

import pytest

from cli_commands import DIFFUSER_ARGS, LM_ARGS, extract, tinypipe, wait_for
from tinypipe.jobs import JobStore


@pytest.fixture(scope="module")
def home(new_home):
    """One tinypipe home (job store) shared by this module's commands."""
    return new_home("cli_home")


def test_textual_inversion_from_a_zipped_folder_loads_in_diffusers(home, tmp_path):
    from diffusers import StableDiffusionPipeline

    from tinypipe.builtin.tiny_sd import builtin_model_folder, write_shapes_folder

    images = write_shapes_folder(tmp_path / "shapes")
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        for path in sorted(images.iterdir()):
            zip_file.write(path, f"shapes/{path.name}")
    tinypipe(home, "train-diffuser", "token", "tinypipe/tiny-sd", str(archive), "a photo of <sks-shape>",
             "--method", "textual-inversion", "--initializer-token", "circle", "--training-args",
             '{"max_train_steps": 3, "num_validation_images": 1, "validation_inference_steps": 2, "learning_rate": 0.01}')
    job = JobStore(home / "jobs").recent(1)[0]
    assert (job.status, job.method) == ("succeeded", "textual-inversion")
    tinypipe(home, "download-model", job.id, "--to", str(tmp_path / "ti.zip"))
    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder("tinypipe/tiny-sd"), safety_checker=None)
    plain.load_textual_inversion(extract(tmp_path / "ti.zip", tmp_path / "ti") / "model")
    assert plain.tokenizer.convert_tokens_to_ids("<sks-shape>") != plain.tokenizer.unk_token_id


def test_cancel_stops_a_detached_job(home):
    job_id = tinypipe(home, "train-diffuser", "long", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle",
                      "--training-args", '{"max_train_steps": 100000}', "--detach").stdout.strip()
    store = JobStore(home / "jobs")
    deadline = time.monotonic() + 60
    while store.get(job_id).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = store.get(job_id).pid
    assert "cancelled" in tinypipe(home, "cancel", job_id).stdout
    job = wait_for(home, job_id)
    assert job.status == "cancelled"
    import psutil

    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "already cancelled" in tinypipe(home, "cancel", job_id, expect=2).stderr


@pytest.mark.parametrize("command", [
    ("train-diffuser", "multi", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle", "--training-args", DIFFUSER_ARGS),
    ("train-lm", "multi-lm", "tinypipe/tiny-llama", "tinypipe/tiny-instructions", "--training-args", LM_ARGS),
], ids=["train-diffuser", "train-lm"])
def test_accelerate_launch_runs_a_train_command_on_two_processes(home, tmp_path, command):
    output = tmp_path / "multi"
    result = tinypipe(home, *command, "--output", str(output),
                      launcher=(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tinypipe"),
                      env={"ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")})
    jobs = [job for job in JobStore(home / "jobs").recent(100) if job.name == command[1]]
    assert len(jobs) == 1 and jobs[0].status == "succeeded" and jobs[0].output == output  # one record, by the main process
    weights = "pytorch_lora_weights.safetensors" if command[0] == "train-diffuser" else "adapter_model.safetensors"
    assert (output / "model" / weights).is_file()
    assert result.stderr.count("LoRA training with") == 2  # each process trained; only the main one recorded and saved


