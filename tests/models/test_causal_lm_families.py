"""Any causal-LM family: each tiny model trains with its own default LoRA targets, saves, reloads in tinypipe and in
plain peft with the same logits, and generates; the default targets fall back to peft's, then to a clear error."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tinypipe import AutoModelPipeline, AutoTrainerPipeline, ConfigError
from tinypipe.builtin.tiny_llama import TINY_INSTRUCTIONS
from tinypipe.models import CausalLMPipeline
from tinypipe.models.lora_targets import ATTENTION_PROJECTIONS, FUSED_ATTENTION_PROJECTIONS, default_lora_targets
from tinypipe.trainers import CausalLMTrainer

FUSED_ATTENTION_FAMILIES = {"phi3"}  # the others have separate q/k/v/o projections
TEXT = ["What is the capital of France?", "Add the two numbers."]


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt", padding=True)).logits


def test_each_family_trains_with_its_attention_projections_and_reloads_in_tinypipe_and_peft(causal_lm_family, tmp_path):
    from peft import PeftModel

    family, folder = causal_lm_family
    targets = FUSED_ATTENTION_PROJECTIONS if family in FUSED_ATTENTION_FAMILIES else ATTENTION_PROJECTIONS
    pipeline = CausalLMTrainer().train(data=TINY_INSTRUCTIONS, base_model=str(folder), max_train_steps=2, train_batch_size=4,
                                       learning_rate=1e-2, output_dir=tmp_path / "out")
    expected = logits(pipeline.model, pipeline.tokenizer)

    # 1. The architecture's attention projections are what ran, what the repo records, and what peft reads.
    assert pipeline.config["lora_target_modules"] == targets
    settings = json.loads((tmp_path / "out" / "model" / "adapter_config.json").read_text())
    assert sorted(settings["target_modules"]) == sorted(targets)
    trainer = AutoTrainerPipeline.from_pretrained(tmp_path / "out")
    assert trainer.config["train_config"].target_modules == targets

    # 2. tinypipe reloads it exactly, and generates the same text.
    reloaded = AutoModelPipeline.from_pretrained(tmp_path / "out")
    assert torch.equal(logits(reloaded.model, reloaded.tokenizer), expected)
    reply = reloaded.generate(instruction="What is the capital of France?", max_new_tokens=6)
    assert isinstance(reply, str) and reply == pipeline.generate(instruction="What is the capital of France?", max_new_tokens=6)

    # 3. Plain peft on the plain base model gives the same logits; the trained adapter changed them.
    base = AutoModelForCausalLM.from_pretrained(folder)
    before = logits(base, pipeline.tokenizer)
    assert torch.allclose(logits(PeftModel.from_pretrained(base, str(tmp_path / "out" / "model")), pipeline.tokenizer), expected,
                          atol=1e-5)
    assert not torch.allclose(before, expected, atol=1e-3)


def test_all_linear_wraps_every_linear_layer_but_the_output_head(causal_lm_family_folders):
    pipeline = CausalLMPipeline(str(causal_lm_family_folders["phi3"]), lora_rank=2, lora_target_modules="all-linear")
    wrapped = {name.rsplit(".", 1)[-1] for name, module in pipeline.model.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert pipeline.config["lora_target_modules"] == "all-linear"


class TinyModel(torch.nn.Module):
    """A module with a transformers-like `config.model_type` and the given linear layers."""

    def __init__(self, model_type: str, *names: str):
        super().__init__()
        self.config = type("Config", (), {"model_type": model_type})()
        self.layers = torch.nn.ModuleList([torch.nn.ModuleDict({name: torch.nn.Linear(4, 4) for name in names})])
        self.lm_head = torch.nn.Linear(4, 8)


def test_default_targets_fall_back_to_peft_then_to_the_usual_projection_names():
    # peft's default for an architecture tinypipe has no entry for (GPT-NeoX's fused projection)
    assert default_lora_targets(TinyModel("gpt_neox", "query_key_value", "dense")) == ("query_key_value",)
    # an architecture neither knows, with the usual names
    assert default_lora_targets(TinyModel("someones_llama", *ATTENTION_PROJECTIONS, "up_proj")) == ATTENTION_PROJECTIONS
    assert default_lora_targets(TinyModel("someones_phi", "qkv_proj", "o_proj")) == FUSED_ATTENTION_PROJECTIONS


def test_a_model_with_no_known_attention_projections_is_an_error_listing_its_linear_layers():
    with pytest.raises(ConfigError, match=r"model_type 'mystery'.*linear layers are \['attn_in', 'attn_out', 'lm_head'\]; "
                                          r"name the attention ones in target_modules .*'all-linear'"):
        default_lora_targets(TinyModel("mystery", "attn_in", "attn_out"))
