"""Every `tinypipe train-*` option is honoured or refused before a job is recorded; no option switches the method."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tinypipe.cli import main
from tinypipe.jobs import JobStore

TRAIN = ["train-diffuser", "run", "tinypipe/tiny-sd", "tinypipe/shapes", "a photo of sks circle"]
LM = ["train-lm", "run", "tinypipe/tiny-llama", "tinypipe/tiny-instructions"]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a CUDA machine")
def test_fp16_without_a_gpu_is_refused_before_a_job_is_recorded_naming_what_works(capsys):
    code, error = run(capsys, *TRAIN, "--training-args", '{"mixed_precision": "fp16"}')
    assert code == 2 and "mixed_precision='fp16'" in error and "bf16" in error
    code, error = run(capsys, *LM, "--training-args", '{"mixed_precision": "fp8"}')
    assert code == 2 and "mixed_precision='fp8' is not known" in error
    assert JobStore().recent() == []


@pytest.mark.parametrize("argv, message", [
    ([*TRAIN, "--training-args", '{"max_train_steps": 0}'], "max_train_steps must be a whole number >= 1"),
    ([*TRAIN, "--training-args", '{"learning_rate": -1e-4}'], "learning_rate must be a number > 0"),
    ([*LM, "--training-args", '{"lora_dropout": 1.5}'], "lora_dropout must be a number in"),
    ([*LM, "--lora-rank", "4", "--training-args", '{"r": 8}'], "--lora-rank gives r=4 but --training-args gives r=8"),
    ([*TRAIN, "--training-args", '{"instance_prompt": "a photo of a dog"}'], "PROMPT gives instance_prompt="),
    ([*TRAIN, "--initializer-token", "circle"], "--initializer-token is for --method textual-inversion, not --method lora"),
])
def test_settings_that_cannot_work_or_disagree_are_refused_before_a_job_is_recorded(capsys, argv, message):
    code, error = run(capsys, *argv)
    assert code == 2 and message in error
    assert JobStore().recent() == []


@pytest.fixture(scope="module")
def prior_lora_job(new_home):
    """One `--method lora` run with prior preservation and --log-level DEBUG, as a user starts it."""
    home = new_home()
    class_dir = home / "new" / "my_class_images"  # created by the run, which generates the class images into it
    env = {**os.environ, "TINYPIPE_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    arguments = {"max_train_steps": 2, "num_validation_images": 0, "class_inference_steps": 2, "sample_batch_size": 2}
    result = subprocess.run([sys.executable, "-m", "tinypipe", *TRAIN, "--prior-class-prompt", "a photo of a circle",
                             "--num-prior-class-images", "2", "--prior-class-image-dir", str(class_dir), "--log-level", "DEBUG",
                             "--output", str(home / "out"), "--training-args", json.dumps(arguments)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    job = JobStore(home / "jobs").recent(1)[0]
    return job, class_dir, result.stderr


def test_prior_class_prompt_on_method_lora_trains_lora_with_prior_preservation_at_the_lora_learning_rate(prior_lora_job):
    job, class_dir, _ = prior_lora_job
    trainer = json.loads((job.output / "trainer" / "config.json").read_text())
    train_config = json.loads((job.output / "trainer" / "train_config" / "config.json").read_text())
    assert job.method == "lora" and trainer["__module__"].endswith("LoRATrainer")  # --method alone chose the trainer
    assert train_config["with_prior_preservation"] and train_config["class_prompt"] == "a photo of a circle"
    assert train_config["learning_rate"] == 5e-4  # diffusers' train_dreambooth_lora.py default, not DreamBooth's 5e-6
    assert train_config["class_data_dir"] == str(class_dir.resolve())
    assert (job.output / "model" / "pytorch_lora_weights.safetensors").is_file()


def test_a_new_prior_class_image_dir_is_created_with_the_generated_class_images_and_the_log_says_so(prior_lora_job):
    job, class_dir, _ = prior_lora_job
    assert len(list(class_dir.glob("*.png"))) == 2
    assert f"0 class images found in {class_dir.resolve()}, 2 generated into it" in job.log_file.read_text()


def test_log_level_debug_shows_the_libraries_progress_bars_and_warnings(prior_lora_job):
    _, _, stderr = prior_lora_job
    assert "Loading pipeline components" in stderr  # diffusers' own bar, hidden on a normal run


def test_log_level_debug_adds_resolved_settings_and_a_data_summary_to_the_job_log(prior_lora_job):
    job, _, _ = prior_lora_job
    debug = [line for line in job.log_file.read_text().splitlines() if " DEBUG " in line]
    assert any("Resolved settings" in line for line in debug) and any("Data:" in line for line in debug)
