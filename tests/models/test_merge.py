"""Merging a causal-LM repo's LoRA: a plain transformers folder with the same logits, the tokenizer and its chat
template; written atomically, never over the user's files."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinypipe import ConfigError
from tinypipe.builtin.tiny_llama import CHATML_CHAT_TEMPLATE, TINY_LLAMA_CHAT
from tinypipe.models import CausalLMPipeline
from tinypipe.models.merge import MERGE_MARKER, merge_repo

TEXT = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", "Say hello."]


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt", padding=True)).logits.float()


@pytest.fixture(scope="module")
def chat_repo(tmp_path_factory):
    """A tiny-llama-chat pipeline whose LoRA changes the output, saved as a repo; and its logits."""
    pipeline = CausalLMPipeline(TINY_LLAMA_CHAT, lora_rank=4, lora_alpha=8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipeline.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    repo = pipeline.save_pretrained(tmp_path_factory.mktemp("merge") / "repo")
    return repo, logits(pipeline.model, pipeline.tokenizer)


def test_merge_writes_a_transformers_folder_with_the_same_logits_and_the_chat_template(chat_repo, tmp_path):
    repo, expected = chat_repo
    output = merge_repo(repo, tmp_path / "merged")
    assert sorted(path.name for path in output.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", MERGE_MARKER,
        "tokenizer.json", "tokenizer_config.json"]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(output), AutoTokenizer.from_pretrained(output)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert torch.allclose(logits(model, tokenizer), expected, atol=1e-4)  # W + BA rounds unlike Wx + BAx
    assert tokenizer.chat_template == CHATML_CHAT_TEMPLATE and tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    for path in output.iterdir():  # nothing local is published with it
        assert str(tmp_path) not in path.read_bytes().decode("utf-8", "replace"), path.name
    record = json.loads((output / MERGE_MARKER).read_text())
    assert record["dtype"] == "float32" and record["lora"]["lora_rank"] == 4 and record["base_model"] == TINY_LLAMA_CHAT


@pytest.mark.parametrize("dtype, precision", [("bfloat16", 2 ** -8), ("float16", 2 ** -11)])
def test_merge_in_half_precision_gives_the_same_logits_within_its_precision(chat_repo, tmp_path, dtype, precision):
    repo, expected = chat_repo
    output = merge_repo(repo, tmp_path / "merged", dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(output, dtype="auto")
    assert model.dtype == getattr(torch, dtype)
    error = (logits(model, AutoTokenizer.from_pretrained(output)) - expected).abs().max() / expected.abs().max()
    assert 0 < error < 25 * precision  # rounding errors of a few bits of the dtype's mantissa, through two layers


def test_merge_never_overwrites_other_files_but_replaces_its_own_earlier_output(chat_repo, tmp_path):
    repo, _ = chat_repo
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"OUT .*mine already exists and holds files that tinypipe merge did not write"):
        merge_repo(repo, tmp_path / "mine")
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]

    output = merge_repo(repo, tmp_path / "merged")
    merge_repo(repo, output, dtype="float16")  # an earlier merge's output is replaced
    assert json.loads((output / MERGE_MARKER).read_text())["dtype"] == "float16"
    (output / "README.md").write_text("my card")
    with pytest.raises(ConfigError, match=r"earlier merge's output, but \['README.md'\] were added or changed"):
        merge_repo(repo, output)
    assert (output / "README.md").read_text() == "my card"

    with pytest.raises(ConfigError, match="lies inside the repo"):
        merge_repo(repo, repo / "merged")
    with pytest.raises(ConfigError, match=r"dtype='int8' is not a dtype .*\['float32', 'bfloat16', 'float16'\]"):
        merge_repo(repo, tmp_path / "other", dtype="int8")
    assert not (tmp_path / "other").exists()


def test_the_merged_generation_config_stops_at_the_tokenizers_end_of_sequence_token_too(tmp_path):
    from tinypipe.builtin.tiny_llama import build_tiny_llama, load_tiny_llama_chat_tokenizer
    from tinypipe.models.merged_model import save_merged_model

    model, tokenizer = build_tiny_llama(), load_tiny_llama_chat_tokenizer()  # </s> ends a sequence, <|im_end|> a turn
    save_merged_model(model, tokenizer, tmp_path / "merged")
    stops = json.loads((tmp_path / "merged" / "generation_config.json").read_text())["eos_token_id"]
    assert stops == [model.config.eos_token_id, tokenizer.eos_token_id] and stops[0] != stops[1]


@pytest.mark.parametrize("level, bars_during_the_write", [("INFO", False), ("DEBUG", True)])
def test_merge_shows_transformers_writing_bars_only_under_debug_and_leaves_the_setting_as_it_was(
        chat_repo, tmp_path, monkeypatch, level, bars_during_the_write):
    import logging

    from transformers import PreTrainedModel
    from transformers.utils import logging as transformers_logging

    repo, _ = chat_repo
    seen = []
    writer = PreTrainedModel.save_pretrained
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", lambda self, *args, **kwargs: (
        seen.append(transformers_logging.is_progress_bar_enabled()), writer(self, *args, **kwargs))[1])
    logger = logging.getLogger("tinypipe")
    previous = logger.level
    logger.setLevel(level)  # what --log-level sets
    try:
        transformers_logging.disable_progress_bar()  # a caller that turned them off
        merge_repo(repo, tmp_path / f"merged-{level}")
        assert not transformers_logging.is_progress_bar_enabled()  # still off afterwards
        transformers_logging.enable_progress_bar()
        merge_repo(repo, tmp_path / f"merged-again-{level}")
        assert transformers_logging.is_progress_bar_enabled()
    finally:
        logger.setLevel(previous)
        transformers_logging.enable_progress_bar()
    assert seen == [False, bars_during_the_write]  # off when the caller turned them off, even under DEBUG
