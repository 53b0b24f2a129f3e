"""The `tinypipe` command line, driven as a user drives it: subprocesses, offline, on the built-in models."""

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_commands import DIFFUSER_ARGS, LM_ARGS, as_array, extract, tinypipe, wait_for
from tinypipe.jobs import JobStore


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One tinypipe home (job store, built-in models) shared by this module's commands."""
    return tmp_path_factory.mktemp("cli_home")


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
