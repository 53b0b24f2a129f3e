"""CausalLMPipeline on the built-in tiny Llama: saving, reloading in tinypipe and peft, merging, bad adapters."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from tinypipe import AutoModelPipeline, ConfigError, RepoError
from tinypipe.models import CausalLMPipeline
from tinypipe.builtin.tiny_llama import (
    TINY_LLAMA,
    build_tiny_llama,
    builtin_lm_folder,
    load_tiny_llama_tokenizer,
)

TEXT = ["What is the capital of France?", "Say hello in Spanish, please."]


def randomize_lora(pipeline: CausalLMPipeline, seed: int = 0) -> None:
    """Stand-in for training: give the (zero-initialised) LoRA B matrices values, so the adapter changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in pipeline.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXT, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A pipeline with a LoRA that changes the output, saved as a repo."""
    pipeline = CausalLMPipeline(TINY_LLAMA, lora_rank=4, lora_alpha=8)
    randomize_lora(pipeline)
    repo = pipeline.save_pretrained(tmp_path_factory.mktemp("causal_lm") / "repo")
    return pipeline, repo


def test_builtin_tokenizer_has_distinct_pad_and_eos_and_round_trips_any_text():
    tokenizer = load_tiny_llama_tokenizer()
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.eos_token == "</s>"
    for text in ("The capital of France is Paris.", "école ¡Hola! 日本 🐱", "### Response:\n"):
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_builtin_model_is_deterministic_and_its_folder_loads_in_transformers():
    tokenizer = load_tiny_llama_tokenizer()
    first, second = build_tiny_llama(), build_tiny_llama()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    folder = builtin_lm_folder(TINY_LLAMA)
    plain = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(plain, LlamaForCausalLM)
    assert torch.equal(logits(plain, tokenizer), logits(first, tokenizer))
    assert AutoTokenizer.from_pretrained(folder)(TEXT[0])["input_ids"] == tokenizer(TEXT[0])["input_ids"]
    with pytest.raises(ConfigError, match="not a built-in causal LM"):
        builtin_lm_folder("tinypipe/nope")


def test_save_writes_peft_adapter_files(adapted):
    _, repo = adapted
    assert sorted(path.name for path in (repo / "model").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "config.json", "filelist.txt"]
    settings = json.loads((repo / "model" / "adapter_config.json").read_text())
    assert settings["r"] == 4 and settings["lora_alpha"] == 8 and settings["peft_type"] == "LORA"
    assert settings["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"] and settings["base_model_name_or_path"] == TINY_LLAMA
    assert all("lora_A" in key or "lora_B" in key for key in load_file(repo / "model" / "adapter_model.safetensors"))


def test_reload_in_tinypipe_gives_the_same_logits(adapted):
    pipeline, repo = adapted
    reloaded = AutoModelPipeline.from_pretrained(repo)
    assert isinstance(reloaded, CausalLMPipeline) and dict(reloaded.config) == dict(pipeline.config)
    assert torch.equal(logits(reloaded.model, reloaded.tokenizer), logits(pipeline.model, pipeline.tokenizer))


def test_plain_peft_loads_the_adapter_with_the_same_logits(adapted):
    from peft import PeftModel

    pipeline, repo = adapted
    base = AutoModelForCausalLM.from_pretrained(builtin_lm_folder(TINY_LLAMA))
    before = logits(base, pipeline.tokenizer)
    peft_model = PeftModel.from_pretrained(base, str(repo / "model"))
    expected = logits(pipeline.model, pipeline.tokenizer)
    assert torch.allclose(logits(peft_model, pipeline.tokenizer), expected, atol=1e-6)
    assert not torch.allclose(before, expected, atol=1e-3)  # the adapter really changes the output


def test_merge_returns_a_plain_model_and_leaves_the_pipeline_alone(adapted, tmp_path):
    pipeline, _ = adapted
    expected = logits(pipeline.model, pipeline.tokenizer)
    merged = pipeline.merge(save_directory=tmp_path / "merged")
    assert type(merged) is LlamaForCausalLM
    # W + BA summed once rounds differently from W x + B(A x): float32 agreement, not bit equality (it once missed 1e-5)
    assert torch.allclose(logits(merged, pipeline.tokenizer), expected, rtol=1e-4, atol=1e-4)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(logits(reloaded, AutoTokenizer.from_pretrained(tmp_path / "merged")), expected, rtol=1e-4, atol=1e-4)
    assert pipeline.has_lora and torch.equal(logits(pipeline.model, pipeline.tokenizer), expected)


def test_builtin_name_loads_through_the_hub_path(tmp_path):
    pipeline = AutoModelPipeline.from_pretrained(tmp_path / "cache", TINY_LLAMA)
    assert isinstance(pipeline, CausalLMPipeline) and not pipeline.has_lora
    assert (tmp_path / "cache" / TINY_LLAMA / "model" / "config.json").is_file()


def test_generate_takes_a_prompt_or_an_instruction():
    pipeline = CausalLMPipeline(TINY_LLAMA)
    single = pipeline.generate(instruction="Say hi.", max_new_tokens=4)
    assert isinstance(single, str)
    assert pipeline.generate(instruction=["Say hi.", "Add the two numbers."], input=["", "2 and 3"], max_new_tokens=4)[0] == single
    assert isinstance(pipeline.generate(["a", "b c"], max_new_tokens=3), list)
    with pytest.raises(ConfigError, match="either a prompt or an instruction"):
        pipeline.generate("x", instruction="y")
    with pytest.raises(ConfigError, match="2 instructions but 1 inputs"):
        pipeline.generate(instruction=["a", "b"], input=["c"])


def test_an_adapter_saved_by_peft_loads_into_a_pipeline(adapted, tmp_path):
    pipeline, _ = adapted
    pipeline.model.save_pretrained(tmp_path / "peft_adapter")  # peft's own writer
    fresh = CausalLMPipeline(TINY_LLAMA)
    fresh.load_adapter(tmp_path / "peft_adapter")
    assert fresh.config["lora_rank"] == 4
    assert torch.equal(logits(fresh.model, fresh.tokenizer), logits(pipeline.model, pipeline.tokenizer))


def test_adapter_for_another_base_model_is_refused_and_leaves_no_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tiny_llama_tokenizer()
    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "other")
    pipeline = CausalLMPipeline(TINY_LLAMA)
    before = logits(pipeline.model, tokenizer)
    with pytest.raises(RepoError, match=r"does not match the base model 'tinypipe/tiny-llama' \(wrong shape"):
        pipeline.load_adapter(tmp_path / "other")
    assert not pipeline.has_lora and torch.equal(logits(pipeline.model, tokenizer), before)


def test_adapter_naming_another_base_model_is_refused_unless_allowed(adapted, tmp_path, caplog):
    pipeline, _ = adapted
    pipeline.model.save_pretrained(tmp_path / "adapter")  # same shapes, but recorded as trained on another base model
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = "someone/other-llama"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(settings))
    fresh = CausalLMPipeline(TINY_LLAMA)
    with pytest.raises(RepoError, match=r"trained on the base model 'someone/other-llama'.*base model is 'tinypipe/tiny-llama'.*"
                                        r"allow_other_base=True"):
        fresh.load_adapter(tmp_path / "adapter")
    assert not fresh.has_lora
    with caplog.at_level("WARNING"):
        fresh.load_adapter(tmp_path / "adapter", allow_other_base=True)
    assert "someone/other-llama" in caplog.text
    assert torch.equal(logits(fresh.model, fresh.tokenizer), logits(pipeline.model, pipeline.tokenizer))


def test_repo_whose_adapter_does_not_fit_is_refused(adapted, tmp_path):
    from tinypipe.config.filelist import write_filelist

    _, repo = adapted
    state = load_file(repo / "model" / "adapter_model.safetensors")
    import shutil

    shutil.copytree(repo, tmp_path / "repo")
    save_file({key: value[:2] if "lora_A" in key else value for key, value in state.items()},
              str(tmp_path / "repo" / "model" / "adapter_model.safetensors"))
    (tmp_path / "repo" / "model" / "filelist.txt").unlink()
    write_filelist(tmp_path / "repo" / "model")
    with pytest.raises(RepoError, match="does not match the base model"):
        AutoModelPipeline.from_pretrained(tmp_path / "repo")


def test_target_modules_that_match_nothing_are_a_clear_error_and_all_linear_works():
    pipeline = CausalLMPipeline(TINY_LLAMA)
    with pytest.raises(ConfigError, match=r"match no module .*'down_proj'.*'all-linear'"):
        pipeline.add_lora(target_modules=("c_attn",))
    assert not pipeline.has_lora
    pipeline.add_lora(rank=2, target_modules="all-linear")
    assert pipeline.config["lora_target_modules"] == "all-linear"
    with pytest.raises(ConfigError, match="already has a LoRA"):
        pipeline.add_lora()
