"""Where a resumed loop starts (`epochs_to_run`, `batches_to_run`, used by every trainer): resumed from any
checkpoint, with any steps per epoch and gradient accumulation, the run does exactly what the uninterrupted run did
after that checkpoint - the same batches and optimizer steps, the same end-of-epoch work, and never an extra step."""

import math

import pytest

from tinypipe.training.resume import batches_to_run, epochs_to_run


def run(batch_count: int, accumulation: int, total_steps: int, checkpoint_every: int, resume_at: int = 0) -> list:
    """The events of a trainer's loop (same shape as theirs): batches, optimizer steps, checkpoints, epoch ends."""
    updates_per_epoch = math.ceil(batch_count / accumulation)
    global_step, events = resume_at, []
    for epoch in epochs_to_run(global_step, total_steps, updates_per_epoch):
        for position in batches_to_run(global_step, total_steps, epoch, updates_per_epoch, accumulation, batch_count):
            events.append(("batch", epoch, position))
            if (position + 1) % accumulation and position != batch_count - 1:
                continue
            global_step += 1
            events.append(("step", global_step))
            if global_step % checkpoint_every == 0:
                events.append(("checkpoint", global_step))
            if global_step >= total_steps:
                break
        events.append(("end of epoch", epoch))
        if global_step >= total_steps:
            break
    return events


SHAPES = [(4, 1, 6), (4, 1, 8), (5, 2, 7), (3, 2, 2), (1, 1, 3), (6, 4, 5), (4, 1, 4)]


@pytest.mark.parametrize("batch_count, accumulation, total_steps", SHAPES)
def test_a_run_resumed_from_any_checkpoint_repeats_exactly_what_followed_it(batch_count, accumulation, total_steps):
    straight = run(batch_count, accumulation, total_steps, checkpoint_every=1)
    assert straight.count(("step", total_steps)) == 1 and ("step", total_steps + 1) not in straight
    for step in range(1, total_steps + 1):
        after_checkpoint = straight[straight.index(("checkpoint", step)) + 1:]
        resumed = run(batch_count, accumulation, total_steps, checkpoint_every=1, resume_at=step)
        assert resumed == after_checkpoint, f"resumed at step {step}"


def test_a_run_resumed_at_its_last_step_trains_nothing_and_redoes_its_last_epoch_end():
    assert run(4, 1, 6, checkpoint_every=1, resume_at=6) == [("end of epoch", 1)]
    assert run(4, 1, 8, checkpoint_every=1, resume_at=8) == [("end of epoch", 1)]


def test_a_causal_lm_run_killed_after_its_last_checkpoint_resumes_to_the_same_adapter_and_metrics(tmp_path):
    import json
    import shutil

    import torch
    from safetensors.torch import load_file

    from tinypipe.builtin.tiny_llama import TINY_INSTRUCTIONS
    from tinypipe.trainers import CausalLMTrainer

    # 40 records in batches of 16: 3 steps per epoch, so step 4 is the first of the second epoch.
    settings = dict(data=TINY_INSTRUCTIONS, max_train_steps=4, train_batch_size=16, learning_rate=1e-3, lr_schedule="constant",
                    checkpointing_steps=1, validation_split=0.1)
    CausalLMTrainer().train(**settings, output_dir=str(tmp_path / "straight"))
    # What a kill during the final evaluation or save leaves: everything but the final repo and metrics.
    shutil.copytree(tmp_path / "straight" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    CausalLMTrainer().train(**settings, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest")

    straight, resumed = (load_file(tmp_path / name / "model" / "adapter_model.safetensors") for name in ("straight", "resumed"))
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [f"checkpoint-{step}" for step in range(1, 5)]
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("straight", "resumed")]
    assert metrics[0] == metrics[1] and [record["step"] for record in metrics[1]] == [3, 4]
