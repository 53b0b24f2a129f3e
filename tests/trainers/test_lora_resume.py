"""Interrupted runs resume bit-identically, and the trainer runs under `accelerate launch`.

Each run is a real process (killed with `os._exit`, as a crash or `kill -9` would end it).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinypipe import AutoModelPipeline

RUN = textwrap.dedent('''
    import os, sys
    from tinypipe.trainers import lora
    from tinypipe.training import checkpoints

    output, mode, steps, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    kill_step = int(os.environ.get("KILL_STEP", "0"))

    if mode == "kill_after_checkpoint":      # the process dies right after checkpoint KILL_STEP is complete
        save = lora.save_checkpoint
        def save_then_die(output_dir, step, **kwargs):
            path = save(output_dir, step, **kwargs)
            if step == kill_step:
                os._exit(137)
            return path
        lora.save_checkpoint = save_then_die
    elif mode == "kill_mid_write":           # the process dies half-way through writing checkpoint KILL_STEP
        write = checkpoints._write_safetensors
        def write_then_die(path, tensors):
            if path.parent.name.startswith(".tmp-checkpoint-%d-" % kill_step) and "optimizer" in path.name:
                path.write_bytes(b"half a file")
                os._exit(137)
            return write(path, tensors)
        checkpoints._write_safetensors = write_then_die

    lora.LoRATrainer().train(
        data="tinypipe/shapes", instance_prompt="a photo of sks circle", max_train_steps=steps, learning_rate=1e-3,
        checkpointing_steps=every, num_validation_images=0, use_8bit_adam=False, output_dir=output,
        resume_from_checkpoint="latest" if mode == "resume" else None)
''')


def run(tmp_path: Path, output: Path, mode: str, steps: int, every: int, kill_step: int = 0) -> int:
    script = tmp_path / "run.py"
    script.write_text(RUN)
    environment = {**os.environ, "KILL_STEP": str(kill_step), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(output), mode, str(steps), str(every)],
                            env=environment, capture_output=True, text=True, timeout=300)
    if mode in ("straight", "resume"):
        assert result.returncode == 0, result.stderr[-3000:]
    return result.returncode


def lora_file(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "model/pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("straight")
    run(tmp_path, tmp_path / "out", "straight", steps=4, every=2)
    return lora_file(tmp_path / "out")


def assert_same(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_kill_after_a_checkpoint_then_resume_is_bit_identical(straight, tmp_path):
    output = tmp_path / "out"
    assert run(tmp_path, output, "kill_after_checkpoint", steps=4, every=2, kill_step=2) == 137
    assert not (output / "model").exists()
    run(tmp_path, output, "resume", steps=4, every=2)
    assert_same(straight, lora_file(output))


def test_kill_in_the_middle_of_a_checkpoint_write_resumes_from_the_previous_one(straight, tmp_path):
    output = tmp_path / "out"
    assert run(tmp_path, output, "kill_mid_write", steps=4, every=1, kill_step=3) == 137
    assert sorted(p.name for p in (output / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    run(tmp_path, output, "resume", steps=4, every=1)
    assert_same(straight, lora_file(output))
    assert not list((output / "checkpoints").glob(".tmp-*"))  # the half-written one was cleaned up


LAUNCHED = textwrap.dedent('''
    import os, sys
    from tinypipe.models.diffusion import DiffusionPipeline
    from tinypipe.trainers import LoRATrainer

    from accelerate import PartialState

    save = DiffusionPipeline.save_pretrained
    def recorded_save(self, path, **kwargs):
        state = PartialState()
        with open(os.path.join(sys.argv[2], "saves.log"), "a") as log:
            log.write(f"{state.process_index}/{state.num_processes}\\n")
        return save(self, path, **kwargs)
    DiffusionPipeline.save_pretrained = recorded_save

    LoRATrainer().train(data="tinypipe/shapes", instance_prompt="a photo of sks circle", max_train_steps=2, learning_rate=1e-3,
                        checkpointing_steps=1, num_validation_images=1, validation_inference_steps=2, use_8bit_adam=False,
                        output_dir=sys.argv[1])
''')


def test_accelerate_launch_two_processes_writes_one_valid_repo(tmp_path):
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", str(script), str(output), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "saves.log").read_text().split() == ["0/2"]  # two processes; only the main one wrote the repo
    pipeline = AutoModelPipeline.from_pretrained(output)
    assert pipeline.has_lora and len(pipeline.generate("a photo of sks circle", num_inference_steps=2)) == 1
    assert sorted(p.name for p in (output / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
