"""`tinypipe.models.diffusers_lora`: the LoRA file in diffusers' format, written and read back as diffusers does."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tinypipe import RepoError
from tinypipe.models import TINY_SD, DiffusionPipeline
from tinypipe.models.diffusers_lora import (
    LORA_WEIGHTS_NAME,
    UNET_LORA_TARGETS,
    load_lora_file,
    loaded_lora_settings,
    save_lora_file,
)


def test_lora_file_records_rank_and_alpha_in_its_metadata(tmp_path):
    pipeline = DiffusionPipeline(TINY_SD, lora_rank=4, lora_alpha=8, device="cpu")
    save_lora_file(pipeline.pipe, tmp_path, pipeline.lora_configs())
    with safe_open(str(tmp_path / LORA_WEIGHTS_NAME), framework="pt") as file:  # what diffusers' load_lora_weights reads
        metadata = json.loads(file.metadata()["lora_adapter_metadata"])
    assert metadata["unet.r"] == 4 and metadata["unet.lora_alpha"] == 8
    assert all(key.startswith("unet.") for key in load_file(tmp_path / LORA_WEIGHTS_NAME))


def test_a_loaded_lora_file_gives_back_the_settings_and_weights_it_was_saved_with(tmp_path):
    source = DiffusionPipeline(TINY_SD, lora_rank=2, lora_alpha=4, lora_target_modules=("to_q", "to_v"),
                               text_encoder_lora=True, device="cpu")
    save_lora_file(source.pipe, tmp_path, source.lora_configs())
    target = DiffusionPipeline(TINY_SD, device="cpu")
    load_lora_file(target.pipe, tmp_path / LORA_WEIGHTS_NAME, TINY_SD)
    settings = loaded_lora_settings(target.pipe, tmp_path / LORA_WEIGHTS_NAME)
    assert settings["lora_rank"] == 2 and settings["lora_alpha"] == 4 and settings["text_encoder_lora"]
    assert settings["lora_target_modules"] == ("to_q", "to_v") != UNET_LORA_TARGETS
    target._record(**settings)
    saved, loaded = source.lora_state_dicts(), target.lora_state_dicts()
    assert saved.keys() == loaded.keys() == {"unet", "text_encoder"}
    assert all(torch.equal(saved["unet"][key], loaded["unet"][key]) for key in saved["unet"])


def test_a_lora_file_for_another_model_is_a_repo_error_naming_the_file(tmp_path):
    source = DiffusionPipeline(TINY_SD, lora_rank=2, device="cpu")
    layers = source.lora_state_dicts()["unet"]
    key = next(iter(layers))
    layers[key] = torch.zeros(layers[key].shape[0] + 1, *layers[key].shape[1:])  # a layer of another width
    source.pipe.save_lora_weights(tmp_path, unet_lora_layers=layers, weight_name=LORA_WEIGHTS_NAME, safe_serialization=True,
                                  unet_lora_adapter_metadata=source.lora_configs()["unet"].to_dict())
    target = DiffusionPipeline(TINY_SD, device="cpu")
    with pytest.raises(RepoError, match=rf"{LORA_WEIGHTS_NAME} does not fit the base model '{TINY_SD}'"):
        load_lora_file(target.pipe, tmp_path / LORA_WEIGHTS_NAME, TINY_SD)
