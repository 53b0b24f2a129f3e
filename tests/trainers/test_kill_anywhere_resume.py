"""A run killed with SIGKILL at a random point of the whole run - in the loop, while checkpointing, during the final
validation images or the final save - and resumed with `resume_from_checkpoint="latest"` ends bit-identical to the
uninterrupted run, with no extra step, no extra checkpoint and nothing left behind.

The points are drawn at random (from the events the uninterrupted run went through) each time the test runs; the
seed is in the failure message, and `TINYPIPE_KILL_SEED=<seed>` repeats a draw.
"""

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tinypipe import AutoModelPipeline

# 8 shapes, batch 2: 4 optimizer steps per epoch; 5 steps do not fill the second epoch.
STEPS, EVERY = 5, 2

RUN = textwrap.dedent('''
    import os, signal, sys
    from tinypipe.config import repo
    from tinypipe.trainers import lora
    from tinypipe.training import checkpoints, diffusion_steps

    output, mode, log = sys.argv[1], sys.argv[2], sys.argv[3]
    kill_at, seen = int(os.environ.get("KILL_AT", "0")), []

    def watch(owner, name, label=None):
        original = getattr(owner, name)
        def watched(*args, **kwargs):
            seen.append(label or name)
            with open(log, "a") as file:
                file.write(seen[-1] + "\\n")
            if len(seen) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        setattr(owner, name, watched)

    for name in ("denoising_losses", "validation_images", "save_images", "save_before_after"):
        watch(diffusion_steps, name)
    watch(lora, "save_checkpoint")  # the recipe passes its module's save_checkpoint to the loop
    watch(checkpoints, "_write_safetensors")
    for name in ("_write_object", "write_filelist", "_swap_into_place"):
        watch(repo, name)
    watch(os, "rename", "os.rename")

    lora.LoRATrainer().train(
        data="tinypipe/shapes", instance_prompt="a photo of sks circle", resolution=64, train_batch_size=2,
        max_train_steps=%d, checkpointing_steps=%d, learning_rate=1e-3, num_validation_images=1,
        validation_inference_steps=1, use_8bit_adam=False, seed=0, output_dir=output,
        resume_from_checkpoint="latest" if mode == "resume" else None)
''' % (STEPS, EVERY))


def run(tmp_path: Path, output: Path, mode: str, kill_at: int = 0) -> tuple[int, list[str]]:
    script, log = tmp_path / "run.py", tmp_path / f"events-{mode}-{kill_at}.log"
    script.write_text(RUN)
    environment = {**os.environ, "KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(output), mode, str(log)], env=environment,
                            capture_output=True, text=True, timeout=300)
    if not kill_at:
        assert result.returncode == 0, result.stderr[-3000:]
    return result.returncode, log.read_text().split()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("straight")
    _, events = run(tmp_path, tmp_path / "out", "straight")
    return tmp_path / "out", events


def _state(output: Path) -> dict:
    """What a user gets from a run: the weights, the images, the checkpoints, and no hidden leftovers."""
    hidden = sorted(p.relative_to(output.parent).as_posix() for p in output.parent.rglob(".*") if ".tmp" in p.name or ".old-" in p.name)
    return {"weights": load_file(output / "model" / "pytorch_lora_weights.safetensors"),
            "before_after": (output / "validation" / "before_after.png").read_bytes(),
            "checkpoints": sorted(p.name for p in (output / "checkpoints").iterdir()),
            "leftovers": hidden}


def _draw(events: list[str], where: str, seed: int) -> int:
    """A random event number (1-based) of the uninterrupted run: anywhere, or after its last checkpoint was saved."""
    last_checkpoint = max(index for index, name in enumerate(events) if name == "save_checkpoint")
    first = 1 if where == "anywhere" else last_checkpoint + 2  # +2: just after the save_checkpoint call itself
    return random.Random(f"{seed}-{where}").randint(first, len(events))


@pytest.mark.parametrize("where", ["anywhere", "after_the_last_checkpoint"])
def test_kill_at_a_random_point_of_the_whole_run_then_resume_is_bit_identical(straight, tmp_path, where):
    reference, events = straight
    seed = int(os.environ.get("TINYPIPE_KILL_SEED", random.randrange(10**6)))
    kill_at = _draw(events, where, seed)
    context = f"killed before event {kill_at}/{len(events)} ({events[kill_at - 1]}); TINYPIPE_KILL_SEED={seed}"

    output = tmp_path / "out"
    code, _ = run(tmp_path, output, "straight", kill_at)
    assert code == -9, context  # SIGKILL, as kill -9 would
    run(tmp_path, output, "resume")

    expected, actual = _state(reference), _state(output)
    assert actual["leftovers"] == [], context
    assert actual["checkpoints"] == expected["checkpoints"], context  # no checkpoint-6: no extra optimizer step
    assert expected["weights"].keys() == actual["weights"].keys()
    for name in expected["weights"]:
        assert expected["weights"][name].equal(actual["weights"][name]), f"{name}: {context}"
    assert actual["before_after"] == expected["before_after"], context
    assert AutoModelPipeline.from_pretrained(output).has_lora
