"""Tests for `tinypipe.models.transformers_base`: loading a causal LM base model, and quantization refused with the fix."""

import pytest
import torch

from tinypipe import ConfigError
from tinypipe.builtin.tiny_llama import TINY_LLAMA
from tinypipe.models.transformers_base import load_base_model


def test_the_built_in_model_loads_with_a_pad_token_and_records_its_name():
    model, tokenizer = load_base_model(TINY_LLAMA)
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    assert model.name_or_path == TINY_LLAMA  # what peft records as an adapter's base model


def test_an_unknown_quantization_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"quantization='2bit' is not supported; use None, '8bit' or '4bit'"):
        load_base_model(TINY_LLAMA, quantization="2bit")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_quantization_without_bitsandbytes_or_a_gpu_is_refused_before_loading():
    with pytest.raises(ConfigError, match=r"quantization='4bit' .*(bitsandbytes|CUDA GPU).*quantization=None"):
        load_base_model(TINY_LLAMA, quantization="4bit")
