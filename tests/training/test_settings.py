"""Every train() setting of the four trainers is honoured, or refused before any heavy work with a clear message."""

import json
import logging

import pytest
import torch

from tinypipe import ConfigError
from tinypipe.models import CausalLMPipeline, DiffusionPipeline
from tinypipe.trainers import CausalLMTrainer, DreamBoothTrainer, LoRATrainer, TextualInversionTrainer

TINY_INSTRUCTIONS = "tinypipe/tiny-instructions"
TRAINERS = [LoRATrainer, DreamBoothTrainer, TextualInversionTrainer, CausalLMTrainer]
# A data set that does not exist: a setting refused "before heavy work" is refused before this is ever read.
NO_DATA = "/no/such/data"
LM_FAST = dict(data=TINY_INSTRUCTIONS, max_train_steps=1, train_batch_size=4, checkpointing_steps=0)
SD_FAST = dict(data="tinypipe/shapes", instance_prompt="a photo of sks circle", max_train_steps=1, num_validation_images=0,
               use_8bit_adam=False, checkpointing_steps=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a CUDA machine")
@pytest.mark.parametrize("trainer_class", TRAINERS)
def test_fp16_without_a_gpu_is_refused_before_heavy_work_naming_what_works(trainer_class):
    with pytest.raises(ConfigError, match=r"mixed_precision='fp16' needs a CUDA GPU .* use one of \['no', 'bf16'\]"):
        trainer_class().train(data=NO_DATA, mixed_precision="fp16")


@pytest.mark.parametrize("trainer_class", TRAINERS)
@pytest.mark.parametrize("setting, value, message", [
    ("mixed_precision", "fp32", "mixed_precision='fp32' is not known"),
    ("max_train_steps", 0, "max_train_steps must be a whole number >= 1"),
    ("train_batch_size", -2, "train_batch_size must be a whole number >= 1"),
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be a whole number >= 1"),
    ("learning_rate", 0.0, "learning_rate must be a number > 0"),
    ("warmup_steps", -1, "warmup_steps must be a whole number >= 0"),
    ("lr_schedule", "cosine_restarts", "lr_schedule 'cosine_restarts' is not known; choose one of"),
    ("adam_beta2", 1.0, r"adam_beta2 must be a number in \[0, 1\)"),
    ("checkpoints_total_limit", 0, "checkpoints_total_limit must be a whole number >= 1"),
])
def test_a_setting_that_cannot_work_is_refused_before_the_data_is_read(trainer_class, setting, value, message):
    with pytest.raises(ConfigError, match=message):
        trainer_class().train(data=NO_DATA, **{setting: value})


def test_a_second_train_in_one_process_with_other_accelerate_settings_trains():
    CausalLMTrainer().train(**LM_FAST, mixed_precision="no")
    second = CausalLMTrainer().train(**LM_FAST, mixed_precision="bf16")
    assert second.has_lora
    third = LoRATrainer().train(**SD_FAST, mixed_precision="bf16")  # another trainer, yet another run
    assert third.has_lora


def test_num_train_epochs_given_now_wins_over_an_epoch_saved_by_an_earlier_call():
    trainer = CausalLMTrainer()
    settings = dict(data=TINY_INSTRUCTIONS, train_batch_size=40, checkpointing_steps=0)  # 40 examples: one step per epoch
    trainer.train(**settings, epoch=1)
    assert (trainer.train_config.num_train_epochs, trainer.train_config.epoch) == (1, None)  # one name records what ran
    trainer.train(**settings, num_train_epochs=2)
    assert [record["epoch"] for record in trainer.metrics] == [1, 2]
    assert (trainer.train_config.num_train_epochs, trainer.train_config.epoch) == (2, None)


def test_a_run_cut_short_by_max_train_steps_records_the_epochs_it_ran_not_the_default(caplog):
    trainer = CausalLMTrainer()  # num_train_epochs defaults to 3
    with caplog.at_level("INFO", logger="tinypipe.training.loop"):
        trainer.train(data=TINY_INSTRUCTIONS, train_batch_size=20, max_train_steps=3, checkpointing_steps=0)  # 2 steps an epoch
    assert '"num_train_epochs": 2' in caplog.text and '"num_train_epochs": 3' not in caplog.text  # the log says so too
    assert [(record["epoch"], record["step"]) for record in trainer.metrics] == [(1, 2), (2, 3)]  # per epoch
    assert (trainer.train_config.num_train_epochs, trainer.train_config.max_train_steps) == (2, 3)


def test_an_epoch_saved_in_the_train_config_loses_to_num_train_epochs_given_now():
    trainer = CausalLMTrainer(train_config={"epoch": 3, "batch_size": 40})
    trainer.train(data=TINY_INSTRUCTIONS, num_train_epochs=1, train_batch_size=20, checkpointing_steps=0)
    assert [(record["epoch"], record["step"]) for record in trainer.metrics] == [(1, 2)]  # 1 epoch of 2 batches of 20
    assert trainer.train_config.config["train_batch_size"] == 20 and trainer.train_config.config["batch_size"] is None


def test_epoch_and_num_train_epochs_given_together_with_different_values_are_refused():
    with pytest.raises(ConfigError, match="epoch=1 and num_train_epochs=2 are the same setting; give one of them"):
        LoRATrainer().train(data=NO_DATA, epoch=1, num_train_epochs=2)


def test_target_modules_typo_is_refused_with_existing_names():
    with pytest.raises(ConfigError, match=r"\['v_projj'\] match no module .*'v_projj' -> 'v_proj'.*'q_proj'"):
        CausalLMPipeline("tinypipe/tiny-llama", lora_rank=4, lora_target_modules=("q_proj", "v_projj"))
    with pytest.raises(ConfigError, match=r"\['k_projection'\] match no module"):
        CausalLMTrainer().train(data=TINY_INSTRUCTIONS, target_modules=["q_proj", "k_projection"])
    with pytest.raises(ConfigError, match=r"lora_target_modules: \['to_kk'\] match no module of the UNet .*'to_k'"):
        DiffusionPipeline("tinypipe/tiny-sd", lora_rank=4, lora_target_modules=("to_q", "to_kk"))


def test_lora_settings_other_than_those_of_the_pipelines_lora_are_refused():
    trainer = LoRATrainer().init_model(DiffusionPipeline("tinypipe/tiny-sd", lora_rank=2))
    with pytest.raises(ConfigError, match=r"rank=8 \(the pipeline's LoRA has 2\)"):
        trainer.train(**SD_FAST, rank=8)
    with pytest.raises(ConfigError, match="has no text-encoder part"):
        trainer.train(**SD_FAST, train_text_encoder=True)
    trainer.train(**SD_FAST)  # leaving the rank out trains the pipeline's own LoRA, and records it
    assert trainer.train_config.rank == 2
    lm = CausalLMTrainer().init_model(CausalLMPipeline("tinypipe/tiny-llama", lora_rank=4))
    with pytest.raises(ConfigError, match=r"r=16 \(the pipeline's LoRA has 4\)"):
        lm.train(**LM_FAST, r=16)


def test_the_recorded_use_8bit_adam_is_the_optimizer_that_ran(tmp_path):
    LoRATrainer().train(**{**SD_FAST, "use_8bit_adam": True}, output_dir=str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "trainer" / "train_config" / "config.json").read_text())
    try:
        import bitsandbytes  # noqa: F401
        runs_8bit = torch.cuda.is_available()
    except ImportError:
        runs_8bit = False
    assert saved["use_8bit_adam"] is runs_8bit


def test_checkpointing_steps_zero_writes_no_checkpoint_in_every_trainer(tmp_path):
    LoRATrainer().train(**SD_FAST, output_dir=str(tmp_path / "lora"))
    CausalLMTrainer().train(**LM_FAST, output_dir=str(tmp_path / "lm"))
    assert not (tmp_path / "lora" / "checkpoints").exists() and not (tmp_path / "lm" / "checkpoints").exists()


def test_debug_logging_records_resolved_settings_data_and_checkpoint_writes(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="tinypipe"):
        LoRATrainer().train(**{**SD_FAST, "checkpointing_steps": 1}, output_dir=str(tmp_path / "out"))
    debug = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert any(message.startswith("Resolved settings: 1 process(es)") for message in debug)
    assert any(message.startswith("Data: ") and "training images" in message for message in debug)
    assert any(message.startswith("Checkpoint checkpoint-1:") for message in debug)


def test_dreambooth_learning_rate_defaults_to_diffusers_rate_for_the_method_and_is_recorded():
    full, lora = DreamBoothTrainer(), DreamBoothTrainer()
    full.train(**SD_FAST)
    lora.train(**SD_FAST, use_lora=True)
    assert (full.train_config.learning_rate, lora.train_config.learning_rate) == (5e-6, 5e-4)


def test_lora_settings_on_a_full_dreambooth_fine_tune_are_refused():
    with pytest.raises(ConfigError, match="rank=8 .* use_lora is False"):
        DreamBoothTrainer().train(data=NO_DATA, instance_prompt="a photo of sks circle", rank=8)


def test_default_settings_ask_for_no_8bit_adam_so_a_cpu_run_warns_of_nothing_it_did_not_ask(tmp_path, caplog):
    fast = {name: value for name, value in SD_FAST.items() if name != "use_8bit_adam"}
    with caplog.at_level(logging.WARNING, logger="tinypipe"):
        LoRATrainer().train(**fast, output_dir=str(tmp_path / "out"))
    assert not [record for record in caplog.records if "8bit" in record.getMessage() or "8-bit" in record.getMessage()]
    saved = json.loads((tmp_path / "out" / "trainer" / "train_config" / "config.json").read_text())
    assert saved["use_8bit_adam"] is False
