"""A resume continues only the run it belongs to: the run fingerprint in every checkpoint, and what it allows."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from tinypipe.errors import ConfigError, RepoError
from tinypipe.trainers import CausalLMTrainer, DreamBoothTrainer, LoRATrainer, TextualInversionTrainer
from tinypipe.training.checkpoints import restore_trainable, save_checkpoint
from tinypipe.training.run_fingerprint import checkpoint_to_resume, run_fingerprint

RUN = {"learning_rate": 0.001, "lr_schedule": "constant", "seed": 0}
OTHER_RUN = {**RUN, "learning_rate": 0.005}


def _save(output_dir, step, run, **kwargs):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint(output_dir, step, trainable=dict(model.named_parameters()), optimizer=optimizer, lr_scheduler=None,
                           run=run, **kwargs)


def _names(output_dir):
    return sorted(path.name for path in (output_dir / "checkpoints").iterdir())


def test_fingerprint_holds_what_changes_the_result_and_not_where_or_how_often_it_is_written():
    arguments = {"learning_rate": 1e-3, "lr_schedule": "constant", "rank": 4, "output_dir": "/somewhere", "seed": 0,
                 "resume_from_checkpoint": "latest", "checkpointing_steps": 2, "validation_epochs": 1, "max_train_steps": 8}
    run = run_fingerprint(arguments, total_steps=8, data_sha256="abc", num_processes=1)
    assert run == {"learning_rate": 1e-3, "lr_schedule": "constant", "rank": 4, "seed": 0, "data_sha256": "abc", "num_processes": 1}
    # A schedule that depends on the run's length makes the length part of the run.
    assert run_fingerprint({**arguments, "lr_schedule": "linear"}, total_steps=8)["total_steps"] == 8


def test_resume_latest_ignores_other_runs_checkpoints(tmp_path, caplog):
    own = _save(tmp_path, 2, RUN)
    _save(tmp_path, 8, OTHER_RUN)
    with caplog.at_level(logging.WARNING):
        assert checkpoint_to_resume(tmp_path, "latest", run=RUN, total_steps=4, checkpointing_steps=2) == own
    assert "checkpoint-8" in caplog.text and "learning_rate is 0.005 there, 0.001 here" in caplog.text
    assert _names(tmp_path) == ["checkpoint-2", "checkpoint-8"]


def test_resume_latest_with_only_other_runs_checkpoints_starts_from_scratch_and_keeps_them(tmp_path, caplog):
    _save(tmp_path, 10, OTHER_RUN)
    with caplog.at_level(logging.WARNING):
        assert checkpoint_to_resume(tmp_path, "latest", run=RUN, total_steps=12, checkpointing_steps=500) is None
    assert "none is of this run" in caplog.text
    assert _names(tmp_path) == ["checkpoint-10"]


def test_resume_from_other_runs_checkpoint_is_refused_listing_the_settings_that_differ(tmp_path):
    _save(tmp_path, 2, OTHER_RUN)
    with pytest.raises(ConfigError) as error:
        checkpoint_to_resume(tmp_path, "checkpoint-2", run=RUN, total_steps=4, checkpointing_steps=2)
    message = str(error.value)
    assert "another run" in message and "learning_rate is 0.005 there, 0.001 here" in message and "seed" not in message
    assert "another output_dir" in message and "checkpoints" in message and "\n" not in message


def test_resume_past_this_runs_total_steps_is_refused(tmp_path):
    _save(tmp_path, 8, RUN)
    for resume in ("latest", "checkpoint-8"):
        with pytest.raises(ConfigError, match="step 8, past this run's total of 4 steps.*max_train_steps"):
            checkpoint_to_resume(tmp_path, resume, run=RUN, total_steps=4, checkpointing_steps=2)


def test_checkpoint_without_a_fingerprint_is_refused(tmp_path):
    _save(tmp_path, 2, None)
    with pytest.raises(ConfigError, match="no run.json"):
        checkpoint_to_resume(tmp_path, "checkpoint-2", run=RUN, total_steps=4, checkpointing_steps=2)


def test_run_never_writes_its_checkpoint_in_place_of_another_runs(tmp_path):
    _save(tmp_path, 4, OTHER_RUN)
    with pytest.raises(ConfigError, match="in place of another run's.*checkpoint-4.*learning_rate"):
        checkpoint_to_resume(tmp_path, None, run=RUN, total_steps=4, checkpointing_steps=2)
    assert checkpoint_to_resume(tmp_path, None, run=RUN, total_steps=4, checkpointing_steps=3) is None  # writes only 3
    with pytest.raises(RepoError, match="another run"):
        _save(tmp_path, 4, RUN)
    assert json.loads((tmp_path / "checkpoints/checkpoint-4/run.json").read_text()) == OTHER_RUN


def test_checkpoints_total_limit_neither_deletes_nor_counts_other_runs_checkpoints(tmp_path):
    _save(tmp_path, 6, OTHER_RUN)
    _save(tmp_path, 8, OTHER_RUN)
    for step in (1, 2, 3):
        _save(tmp_path, step, RUN, total_limit=2)
    assert _names(tmp_path) == ["checkpoint-2", "checkpoint-3", "checkpoint-6", "checkpoint-8"]


def test_checkpoint_tensors_of_another_shape_are_a_config_error_naming_the_setting(tmp_path):
    path = _save(tmp_path, 1, RUN)
    wider = {"weight": torch.nn.Parameter(torch.zeros(2, 3)), "bias": torch.nn.Parameter(torch.zeros(2))}
    with pytest.raises(ConfigError, match=r"weight of shape \(2, 2\).*shape \(2, 3\).*\(rank\)"):
        restore_trainable(wider, load_file(path / "trainable.safetensors"), path, "rank")
    with pytest.raises(ConfigError, match=r"other weights.*missing \['other'\].*\(rank\)"):
        restore_trainable({**wider, "other": wider["bias"]}, load_file(path / "trainable.safetensors"), path, "rank")


# -- the four trainers ---------------------------------------------------------------------------------

SHAPES = dict(data="tinypipe/shapes", num_validation_images=0, use_8bit_adam=False)
TRAINERS = {
    "lora": (LoRATrainer, dict(SHAPES, instance_prompt="a photo of sks circle"), ("rank", 4, 8)),
    "dreambooth": (DreamBoothTrainer, dict(SHAPES, instance_prompt="a photo of sks circle", use_lora=True), ("rank", 4, 8)),
    "textual_inversion": (TextualInversionTrainer, dict(SHAPES, placeholder_token="<sks>", initializer_token="circle"),
                          ("num_vectors", 1, 2)),
    "causal_lm": (CausalLMTrainer, dict(data="tinypipe/tiny-instructions", train_batch_size=4), ("r", 4, 8)),
}


@pytest.mark.parametrize("name", TRAINERS)
def test_every_trainer_refuses_a_checkpoint_of_another_run_before_training(name, tmp_path):
    trainer_class, settings, (setting, value, other_value) = TRAINERS[name]
    settings = {**settings, "max_train_steps": 2, "checkpointing_steps": 2, "learning_rate": 1e-3, "output_dir": str(tmp_path)}
    trainer_class().train(**settings, **{setting: value})
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    run = json.loads((checkpoint / "run.json").read_text())
    assert run[setting] == value and run["learning_rate"] == 1e-3 and len(run["data_sha256"]) == 64
    assert "output_dir" not in run and "checkpointing_steps" not in run
    saved = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "model").iterdir()}

    with pytest.raises(ConfigError, match=f"belongs to another run.*{setting} is {value} there, {other_value} here"):
        trainer_class().train(**{**settings, "max_train_steps": 4}, **{setting: other_value}, resume_from_checkpoint=str(checkpoint))
    assert {path.name: path.stat().st_mtime_ns for path in (tmp_path / "model").iterdir()} == saved  # nothing was trained or saved
