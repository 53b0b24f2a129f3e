"""Tests for `tinypipe.models.peft_adapter`: PEFT's adapter folder, written as peft does and checked before use."""

import json

import pytest
import torch

from tinypipe import RepoError
from tinypipe.models.peft_adapter import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    adapter_mismatch,
    read_adapter_config,
    read_adapter_weights,
    write_adapter_files,
)

SETTINGS = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": {"v_proj", "q_proj"}, "base_model_name_or_path": "m"}
STATE = {"base_model.model.q_proj.lora_A.weight": torch.ones(4, 16), "base_model.model.q_proj.lora_B.weight": torch.zeros(16, 4)}


def test_written_files_read_back_as_peft_settings_and_tensors(tmp_path):
    write_adapter_files(tmp_path, SETTINGS, STATE)
    config_path, settings, lora = read_adapter_config(tmp_path)
    assert config_path == tmp_path / ADAPTER_CONFIG_NAME and settings["target_modules"] == ["q_proj", "v_proj"]
    assert (lora.r, lora.lora_alpha, set(lora.target_modules)) == (4, 8, {"q_proj", "v_proj"})
    state = read_adapter_weights(tmp_path)
    assert state.keys() == STATE.keys() and all(torch.equal(state[key], STATE[key]) for key in STATE)


def test_empty_or_corrupt_adapter_file_is_a_clear_error(tmp_path):
    write_adapter_files(tmp_path, SETTINGS, STATE)
    (tmp_path / ADAPTER_WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(RepoError, match="adapter_model.safetensors is empty"):
        read_adapter_config(tmp_path)
    (tmp_path / ADAPTER_WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(RepoError, match="not a valid safetensors file"):
        read_adapter_weights(tmp_path)


def test_an_adapter_of_another_peft_method_or_a_config_that_is_not_json_is_refused(tmp_path):
    write_adapter_files(tmp_path, {**SETTINGS, "peft_type": "IA3"}, STATE)
    with pytest.raises(RepoError, match=r"adapter_config.json describes a IA3 adapter; tinypipe loads LoRA adapters only"):
        read_adapter_config(tmp_path)
    (tmp_path / ADAPTER_CONFIG_NAME).write_text('{"r": 4,', encoding="utf-8")
    with pytest.raises(RepoError, match=r"adapter_config.json is not valid JSON"):
        read_adapter_config(tmp_path)
    (tmp_path / ADAPTER_CONFIG_NAME).write_text(json.dumps([SETTINGS["r"]]), encoding="utf-8")
    with pytest.raises(RepoError, match=r"not a valid LoRA adapter config: it holds a JSON list"):
        read_adapter_config(tmp_path)


def test_a_mismatch_names_missing_unexpected_and_wrong_shape_keys():
    expected = {key: tensor.shape for key, tensor in STATE.items()}
    assert adapter_mismatch(expected, STATE) is None
    state = {"base_model.model.q_proj.lora_A.weight": torch.ones(2, 16), "extra": torch.ones(1)}
    assert adapter_mismatch(expected, state) == ("missing: ['base_model.model.q_proj.lora_B.weight'] (1); unexpected: ['extra'] (1); "
                                                 "wrong shape: ['base_model.model.q_proj.lora_A.weight'] (1)")
