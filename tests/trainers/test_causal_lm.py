"""CausalLMTrainer on the built-in tiny Llama: it learns, the config flow of seed 003, repos, resume, preflight, bad input."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tinypipe import (
    AutoModelPipeline,
    AutoTrainerPipeline,
    ConfigError,
    DataError,
    TrainingError,
)
from tinypipe.models import CausalLMPipeline
from tinypipe.builtin.tiny_llama import TINY_INSTRUCTIONS, TINY_LLAMA, tiny_instructions
from tinypipe.trainers import CausalLMTrainConfig, CausalLMTrainer, finetune
from tinypipe.data.instructions import render_prompt

# A few quick steps: enough to exercise everything, not to learn.
FAST = dict(data=TINY_INSTRUCTIONS, max_train_steps=4, train_batch_size=4, learning_rate=1e-3)


def exact_and_stopped(pipeline: CausalLMPipeline, records: list[dict]) -> tuple[int, int]:
    """How many responses greedy generation reproduces exactly, and how many generations end with <eos>."""
    ids = pipeline.generate_ids([render_prompt(r["instruction"], r["input"]) for r in records], max_new_tokens=24)
    texts = [pipeline.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    exact = sum(text == record["output"] for text, record in zip(texts, records))
    return exact, sum(pipeline.tokenizer.eos_token_id in row for row in ids)


def adapter(output) -> dict[str, torch.Tensor]:
    return load_file(output / "model" / "adapter_model.safetensors")


def test_training_makes_greedy_generation_reproduce_the_responses_and_stop():
    records = tiny_instructions()
    untrained_exact, untrained_stopped = exact_and_stopped(CausalLMPipeline(TINY_LLAMA), records)
    trainer = CausalLMTrainer()
    pipeline = trainer.train(data=records, num_train_epochs=60, train_batch_size=8, learning_rate=3e-3, lr_schedule="constant",
                             r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", seed=0)
    exact, stopped = exact_and_stopped(pipeline, records)
    print(f"\nexact responses: untrained {untrained_exact}/{len(records)}, trained {exact}/{len(records)}; "
          f"stopped at <eos>: untrained {untrained_stopped}, trained {stopped}; final train loss {trainer.metrics[-1]['train_loss']:.4f}")
    assert exact >= 0.9 * len(records) and stopped == len(records)
    assert untrained_exact == 0 and untrained_stopped <= 0.1 * len(records)


def test_seed_003_flow_update_config_and_one_call_finetune(tmp_path):
    train_config = CausalLMTrainConfig(data=TINY_INSTRUCTIONS, max_train_steps=2, output_dir=str(tmp_path / "out"))
    assert train_config.update_config({"learning_rate": 5e-4, "batch_size": 32}) is train_config
    with pytest.raises(ConfigError, match=r"unknown keys \['learning_rat'\]; valid keys are .*'learning_rate'"):
        train_config.update_config({"learning_rat": 1e-3})
    assert train_config.learning_rate == 5e-4 and train_config.batch_size == 32

    pipeline = finetune(train_config=train_config)
    assert isinstance(pipeline, CausalLMPipeline) and pipeline.has_lora
    saved = json.loads((tmp_path / "out" / "trainer" / "train_config" / "config.json").read_text())
    assert saved["learning_rate"] == 5e-4 and saved["base_model"] == TINY_LLAMA
    assert saved["train_batch_size"] == 32 and saved["batch_size"] is None  # one name records what ran
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics[-1]["step"] == 2  # batch_size=32 won over train_batch_size: 40 examples are 2 batches per epoch
    assert isinstance(AutoModelPipeline.from_pretrained(tmp_path / "out").generate(instruction="Say hi.", max_new_tokens=4), str)


def test_saved_trainer_reruns_the_same_training_and_call_time_arguments_win(tmp_path):
    trainer = CausalLMTrainer(train_config=CausalLMTrainConfig(max_train_steps=2, learning_rate=1e-3))
    trainer.train(**{**FAST, "max_train_steps": 3}, output_dir=str(tmp_path / "first"), validation_split=0.1)
    saved = json.loads((tmp_path / "first" / "trainer" / "train_config" / "config.json").read_text())
    assert saved["max_train_steps"] == 3 and saved["data"] == TINY_INSTRUCTIONS  # the call-time value won

    reloaded = AutoTrainerPipeline.from_pretrained(tmp_path / "first")
    assert isinstance(reloaded, CausalLMTrainer)
    reloaded.train(output_dir=str(tmp_path / "second"))  # everything else from the saved config
    first, second = adapter(tmp_path / "first"), adapter(tmp_path / "second")
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)

    again = AutoTrainerPipeline.from_pretrained(tmp_path / "first")
    again.train(epoch=1, max_train_steps=None, output_dir=str(tmp_path / "third"))  # the caller wins
    assert json.loads((tmp_path / "third" / "metrics.json").read_text())[-1]["step"] == 9  # 36 examples / 4 per batch


def test_validation_split_reports_an_eval_loss_that_falls(tmp_path):
    trainer = CausalLMTrainer()
    trainer.train(data=TINY_INSTRUCTIONS, validation_split=0.25, num_train_epochs=3, train_batch_size=8, learning_rate=3e-3,
                  target_modules="all-linear", train_on_inputs=True, output_dir=str(tmp_path / "out"), checkpointing_steps=0)
    eval_losses = [record["eval_loss"] for record in trainer.metrics]
    assert len(eval_losses) == 3 and eval_losses[-1] < eval_losses[0]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == trainer.metrics
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_resume_from_a_checkpoint_gives_the_same_adapter(tmp_path):
    settings = dict(FAST, max_train_steps=4, checkpointing_steps=2, lora_dropout=0.1, lr_schedule="linear")
    CausalLMTrainer().train(**settings, output_dir=str(tmp_path / "full"))
    assert (tmp_path / "full" / "checkpoints" / "checkpoint-2").is_dir()
    # An interrupted run: only the step-2 checkpoint made it to disk.
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-2", tmp_path / "resumed" / "checkpoints" / "checkpoint-2")
    trainer = CausalLMTrainer()
    trainer.train(**settings, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest")
    full, resumed = adapter(tmp_path / "full"), adapter(tmp_path / "resumed")
    assert all(torch.equal(full[key], resumed[key]) for key in full)
    assert [record["step"] for record in trainer.metrics] == [4]


def test_packing_trains_the_same_adapter_as_padded_batches(tmp_path):
    records = tiny_instructions()[:16]
    for record in records[::4]:  # a few long responses, so the short examples share rows
        record["output"] = " ".join([record["output"]] * 12)
    settings = dict(FAST, data=records, max_train_steps=3, train_batch_size=8, lora_dropout=0.0, train_on_inputs=True)
    CausalLMTrainer().train(**settings, packing=True, output_dir=str(tmp_path / "packed"))
    CausalLMTrainer().train(**settings, packing=False, output_dir=str(tmp_path / "padded"))
    packed, padded = adapter(tmp_path / "packed"), adapter(tmp_path / "padded")
    assert all(torch.allclose(packed[key], padded[key], atol=1e-5) for key in packed)
    assert any(padded[key].abs().sum() > 0 for key in padded if "lora_B" in key)


def test_preflight_logs_one_example_with_its_loss_mask(caplog):
    with caplog.at_level(logging.INFO, logger="tinypipe.training.causal_lm_steps"):
        CausalLMTrainer().train(**{**FAST, "max_train_steps": 1})
    preflight = next(record.getMessage() for record in caplog.records if record.getMessage().startswith("Preflight"))
    assert "tinypipe/tiny-instructions record 0" in preflight and "learned (in [brackets])" in preflight
    assert "### Response:[The][ capital][ of][ France][ is][ Paris][.][</s>]" in preflight


def test_no_learned_eos_stops_before_training():
    with pytest.raises(TrainingError, match=r"No training example would learn an end-of-turn token \('</s>'\).*raise max_length"):
        CausalLMTrainer().train(**FAST, max_length=20)


def test_bad_settings_and_data_are_clear_errors(tmp_path):
    trainer = CausalLMTrainer()
    with pytest.raises(ConfigError, match="needs data"):
        trainer.train(max_train_steps=1)
    with pytest.raises(DataError, match="No records in the list of 0 records"):
        trainer.train(data=[], max_train_steps=1)
    with pytest.raises(DataError, match="record 0: the record has no 'output' key"):
        trainer.train(data=[{"instruction": "a"}], max_train_steps=1)
    with pytest.raises(ConfigError, match=r"unknown arguments \['rank'\]"):
        trainer.train(data=TINY_INSTRUCTIONS, rank=4)
    with pytest.raises(ConfigError, match="either validation_data or validation_split"):
        trainer.train(data=TINY_INSTRUCTIONS, validation_data=TINY_INSTRUCTIONS, validation_split=0.1)
    with pytest.raises(ConfigError, match="batch_size must be a whole number >= 1"):
        trainer.train(data=TINY_INSTRUCTIONS, batch_size=0)
    with pytest.raises(ConfigError, match="resume_from_checkpoint needs output_dir"):
        trainer.train(data=TINY_INSTRUCTIONS, resume_from_checkpoint="latest")
    with pytest.raises(ConfigError, match="bitsandbytes|CUDA GPU"):
        CausalLMTrainer().train(data=TINY_INSTRUCTIONS, quantization="8bit")


@pytest.mark.parametrize("stopped_at", [2, 4], ids=["mid_epoch", "end_of_epoch"])
def test_metrics_after_a_resume_equal_those_of_an_uninterrupted_run(tmp_path, stopped_at):
    # 30 training examples in batches of 8: 4 steps an epoch; checkpoints at steps 2 (mid-epoch), 4 (end of epoch 1), 6.
    settings = dict(FAST, train_batch_size=8, validation_split=0.25, max_train_steps=6, checkpointing_steps=2)
    CausalLMTrainer().train(**settings, output_dir=str(tmp_path / "full"))
    checkpoint = f"checkpoints/checkpoint-{stopped_at}"
    shutil.copytree(tmp_path / "full" / checkpoint, tmp_path / "resumed" / checkpoint)  # what a run killed there leaves
    CausalLMTrainer().train(**settings, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest")
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert [(record["epoch"], record["step"]) for record in full] == [(1, 4), (2, 6)] and "eval_loss" in full[0]
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text()) == full
