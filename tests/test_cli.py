"""The `tinypipe` command line, driven as a user drives it: subprocesses, offline, on the built-in models."""

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinypipe.jobs import JobStore

DIFFUSER_ARGS = '{"max_train_steps": 4, "num_validation_images": 1, "validation_inference_steps": 2, "learning_rate": 0.003}'
LM_ARGS = '{"max_train_steps": 6, "train_batch_size": 4, "learning_rate": 0.003}'


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One tinypipe home (job store, built-in models) shared by this module's commands."""
    return tmp_path_factory.mktemp("cli_home")


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


# -- training in the foreground, results downloaded and loaded by the tools users already have -------------


@pytest.fixture(scope="module")
def diffuser_job(home):
    result = tinypipe(home, "train-diffuser", "circles", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle",
                      "--training-args", DIFFUSER_ARGS)
    job = JobStore(home / "jobs").recent(1)[0]
    return job, result


def test_train_diffuser_in_the_foreground_records_a_succeeded_job(home, diffuser_job):
    job, result = diffuser_job
    assert job.status == "succeeded" and job.name == "circles" and job.method == "lora"
    assert f"Job {job.id} succeeded" in result.stderr and f"download-model {job.id}" in result.stderr
    assert (job.output / "model" / "pytorch_lora_weights.safetensors").is_file()
    log = job.log_file.read_text()
    assert "LoRA training with" in log and f"Job {job.id} succeeded" in log
    listing = tinypipe(home, "get-most-recent-jobs").stdout
    assert listing.splitlines()[0].split()[:5] == ["ID", "NAME", "COMMAND", "METHOD", "STATUS"]
    assert any(line.split()[:5] == [job.id, "circles", "train-diffuser", "lora", "succeeded"] for line in listing.splitlines())
    status = tinypipe(home, "check-job-status", job.id, "--include-logs").stdout
    assert "status    succeeded" in status and str(job.output) in status and "LoRA training with" in status


LIBRARY_NOISE = ("Writing model shards", "Loading checkpoint shards", "Loading pipeline components", "FutureWarning",
                 "UserWarning", "requires torchvision")


def test_a_normal_train_run_shows_no_library_progress_bars_or_warnings(diffuser_job):
    _, result = diffuser_job  # the first run in its home: it also builds the built-in model
    assert [noise for noise in LIBRARY_NOISE if noise in result.stderr] == []


def test_builtin_path_prints_a_plain_diffusers_folder_that_loads_a_tinypipe_lora(home, diffuser_job, capsys):
    from diffusers import StableDiffusionPipeline

    job, _ = diffuser_job
    folder = Path(tinypipe(home, "builtin-path", "tinypipe/tiny-sd").stdout.strip())
    assert (folder / "model_index.json").is_file()
    plain = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)  # as the README shows
    plain.load_lora_weights(job.output / "model")
    assert plain.get_active_adapters()
    from tinypipe.cli import main

    assert main(["builtin-path", "tinypipe/shapes"]) == 2
    error = capsys.readouterr().err
    assert "'tinypipe/shapes' is not a built-in model; the built-in models are " in error and "tinypipe/tiny-sd," in error


def test_download_model_zips_weights_and_images_that_diffusers_loads(home, diffuser_job, tmp_path):
    from diffusers import StableDiffusionPipeline

    from tinypipe.builtin.tiny_sd import builtin_model_folder

    job, _ = diffuser_job
    tinypipe(home, "download-model", job.id, "--to", str(tmp_path / "result.zip"))
    names = zipfile.ZipFile(tmp_path / "result.zip").namelist()
    assert "model/pytorch_lora_weights.safetensors" in names and "validation/before_after.png" in names
    assert not [name for name in names if name.startswith("checkpoints/")]
    folder = extract(tmp_path / "result.zip", tmp_path / "result")
    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder("tinypipe/tiny-sd"), safety_checker=None)
    base = plain("a photo of sks circle", num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images[0]
    plain.load_lora_weights(folder / "model")
    tuned = plain("a photo of sks circle", num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images[0]
    assert np.abs(as_array(tuned) - as_array(base)).mean() > 0.5  # the downloaded LoRA changes the images


def test_generate_writes_numbered_images_from_a_job_and_never_replaces_a_file(home, diffuser_job, tmp_path):
    job, _ = diffuser_job
    folder = tmp_path / "images"
    folder.mkdir()
    mine = {"00000-seed0-0.png": b"my picture", "00003-seed0-1.png": b"an earlier run's", "cat.png": b"my cat"}
    for name, content in mine.items():
        (folder / name).write_bytes(content)
    result = tinypipe(home, "generate", job.id, "a photo of sks circle", "--num-images", "2", "--steps", "2",
                      "--output", str(folder))
    assert result.stdout.split() == [str(folder / "00004-seed0-0.png"), str(folder / "00004-seed0-1.png")]
    assert all(Image.open(path).format == "PNG" for path in result.stdout.split())
    assert {name: (folder / name).read_bytes() for name in mine} == mine


# -- detached jobs, two at once ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detached_jobs(home):
    """A diffusion job and a causal-LM job started in the background one after the other."""
    diffuser = tinypipe(home, "train-diffuser", "bg-circles", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle",
                        "--training-args", DIFFUSER_ARGS, "--detach").stdout.strip()
    status_on_return = JobStore(home / "jobs").get(diffuser).status  # --detach returned without waiting for the run
    lm = tinypipe(home, "train-lm", "bg-lm", "tinypipe/tiny-llama", "tinypipe/tiny-instructions", "--training-args", LM_ARGS,
                  "--lora-rank", "4", "--detach").stdout.strip()
    return wait_for(home, diffuser), wait_for(home, lm), status_on_return


def test_detached_jobs_return_at_once_and_both_succeed(home, detached_jobs):
    diffuser, lm, status_on_return = detached_jobs
    assert status_on_return in ("queued", "running")
    assert (diffuser.status, lm.status) == ("succeeded", "succeeded"), (diffuser.error, lm.error)
    assert diffuser.pid != os.getpid() and lm.pid != diffuser.pid
    logs = tinypipe(home, "check-job-status", lm.id, "--include-logs", "--tail", "5").stdout
    assert f"Job {lm.id} succeeded" in logs


def test_a_normal_train_lm_run_logs_no_library_progress_bars_or_warnings(detached_jobs):
    _, lm, _ = detached_jobs  # the first causal-LM run in its home: it also builds the built-in model's folder
    log = lm.log_file.read_text()
    assert "Causal-LM LoRA training with" in log and [noise for noise in LIBRARY_NOISE if noise in log] == []


def test_train_lm_adapter_downloads_and_loads_in_peft(home, detached_jobs, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tinypipe.builtin.tiny_llama import TINY_LLAMA, builtin_lm_folder

    _, lm, _ = detached_jobs
    tinypipe(home, "download-model", lm.id, "--to", str(tmp_path / "lm.zip"))
    folder = extract(tmp_path / "lm.zip", tmp_path / "lm")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_lm_folder(TINY_LLAMA)), str(folder / "model"))
    assert model.peft_config["default"].r == 4  # --lora-rank reached the trainer
    saved = load_file(folder / "model" / "adapter_model.safetensors")
    loaded = {name: tensor for name, tensor in model.state_dict().items() if "lora_B" in name}
    assert loaded and any(tensor.abs().sum() > 0 for tensor in loaded.values())  # trained: lora_B starts at zero
    assert len(saved) == len([name for name in model.state_dict() if "lora_" in name])
    text = tinypipe(home, "generate", lm.id, "Name a primary colour.", "--max-new-tokens", "8").stdout
    assert text.strip()


# -- other methods ------------------------------------------------------------------------------------------


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


def test_derive_replaces_a_jobs_lora_with_another_jobs(home, diffuser_job, detached_jobs, tmp_path):
    from tinypipe import AutoModelPipeline
    from tinypipe.config.filelist import verify_filelist

    source, _ = diffuser_job
    other = detached_jobs[0]
    before = {path: path.read_bytes() for path in source.output.rglob("*") if path.is_file()}
    result = tinypipe(home, "derive", source.id, str(tmp_path / "derived"), "--lora", str(other.output))
    assert "is unchanged" in result.stdout
    derived = AutoModelPipeline.from_pretrained(tmp_path / "derived")
    replacement = AutoModelPipeline.from_pretrained(other.output)
    settings = dict(num_inference_steps=2, seed=4)
    assert np.array_equal(as_array(derived.generate("a photo of sks circle", **settings)[0]),
                          as_array(replacement.generate("a photo of sks circle", **settings)[0]))
    assert {path: path.read_bytes() for path in source.output.rglob("*") if path.is_file()} == before
    verify_filelist(source.output / "model")
    assert "--lora" in tinypipe(home, "derive", source.id, str(tmp_path / "x"), expect=2).stderr  # one replacement needed
