"""Tiny random causal LMs of several transformers families, saved once per session as local model folders."""

import pytest
import torch
import transformers

from tinypipe.builtin.tiny_llama import load_tiny_llama_tokenizer

# family -> (config class, extra settings): 2 layers, hidden size 32, grouped-query attention; a few hundred KB each.
CAUSAL_LM_FAMILIES = {
    "llama": (transformers.LlamaConfig, {}),
    "qwen2": (transformers.Qwen2Config, {}),
    "qwen3": (transformers.Qwen3Config, {"head_dim": 8}),
    "mistral": (transformers.MistralConfig, {}),
    "gemma2": (transformers.Gemma2Config, {"head_dim": 8}),
    "gemma3": (transformers.Gemma3TextConfig, {"head_dim": 8}),
    "phi3": (transformers.Phi3Config, {}),
}


def build_family_model(family: str, tokenizer) -> transformers.PreTrainedModel:
    """A tiny random model of `family` for `tokenizer`'s vocabulary, the same on every call."""
    config_class, extra = CAUSAL_LM_FAMILIES[family]
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="session")
def causal_lm_family_folders(tmp_path_factory) -> dict:
    """`{family: folder}`: each a transformers model folder (safetensors + the tiny Llama's tokenizer files)."""
    from transformers.utils import logging as transformers_logging

    tokenizer = load_tiny_llama_tokenizer()
    root = tmp_path_factory.mktemp("causal_lm_families")
    folders = {}
    transformers_logging.disable_progress_bar()
    try:
        for family in CAUSAL_LM_FAMILIES:
            folders[family] = root / family
            build_family_model(family, tokenizer).save_pretrained(folders[family], safe_serialization=True)
            tokenizer.save_pretrained(folders[family])
    finally:
        transformers_logging.enable_progress_bar()
    return folders


@pytest.fixture(params=sorted(CAUSAL_LM_FAMILIES))
def causal_lm_family(request, causal_lm_family_folders) -> tuple:
    """`(family, folder)`, once for each family: a test that takes it runs for every family."""
    return request.param, causal_lm_family_folders[request.param]
