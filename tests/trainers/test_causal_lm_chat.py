"""CausalLMTrainer on chat data: every format trains, the template is recorded and saved with the model so that
transformers renders (and tokenizes) a conversation exactly as training did, and tokens a template added are trained
and reload in tinypipe and in plain peft."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tinypipe import AutoTrainerPipeline
from tinypipe.builtin import TINY_CHATS, TINY_LLAMA
from tinypipe.builtin.tiny_llama import builtin_lm_folder
from tinypipe.data.chat_formats import load_training_data
from tinypipe.data.chat_templates import render_messages, resolve_chat_template
from tinypipe.data.tokenization import tokenize_training_data
from tinypipe.models import CausalLMPipeline
from tinypipe.trainers import CausalLMTrainer

FAST = dict(max_train_steps=2, train_batch_size=4, learning_rate=1e-2, checkpointing_steps=0)
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"},
                {"role": "assistant", "content": "4."}, {"role": "user", "content": "And twice that?"},
                {"role": "assistant", "content": "8."}]


@pytest.fixture(scope="module")
def chat_repo(tmp_path_factory):
    """tiny-llama (no chat template of its own) trained two steps on tiny-chats: chatml is added."""
    output = tmp_path_factory.mktemp("chat") / "repo"
    pipeline = CausalLMTrainer().train(data=TINY_CHATS, output_dir=str(output), **FAST)
    return pipeline, output


def test_a_base_model_without_a_chat_template_gets_chatml_recorded_and_saved(chat_repo):
    pipeline, output = chat_repo
    trainer_config = json.loads((output / "trainer" / "train_config" / "config.json").read_text())
    assert trainer_config["chat_template"] == "chatml"
    assert json.loads((output / "model" / "config.json").read_text())["chat_template"] == "chatml"
    assert pipeline.tokenizer.eos_token == "<|im_end|>"  # generation stops at the end of an assistant turn
    assert AutoTrainerPipeline.from_pretrained(output).train_config.config["chat_template"] == "chatml"


def test_transformers_renders_and_tokenizes_a_conversation_from_the_saved_repo_as_training_did(chat_repo):
    from transformers import AutoTokenizer

    pipeline, output = chat_repo
    saved = AutoTokenizer.from_pretrained(output / "model")
    ours = render_messages(CONVERSATION, pipeline.tokenizer)
    assert saved.apply_chat_template(CONVERSATION, tokenize=False) == ours
    assert ours == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVERSATION)
    data = load_training_data([{"messages": CONVERSATION}], log=False)
    trained_ids = tokenize_training_data(data, pipeline.tokenizer, resolve_chat_template("chatml", "messages", pipeline.tokenizer),
                                         max_length=512).examples[0].input_ids
    transformers_ids = saved.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert list(transformers_ids) == trained_ids


def test_the_added_tokens_embedding_rows_are_trained_and_reload_in_tinypipe_and_plain_peft(chat_repo):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pipeline, output = chat_repo
    weights = load_file(output / "model" / "adapter_model.safetensors")
    rows = {key: value for key, value in weights.items() if "trainable_tokens_delta" in key}
    assert {key.split(".")[-3] for key in rows} == {"embed_tokens", "lm_head"}  # input and (untied) output rows
    lm_head_rows = next(value for key, value in rows.items() if "lm_head" in key)
    fresh = CausalLMPipeline(TINY_LLAMA, chat_template="chatml").model.get_output_embeddings().weight[-2:]
    assert lm_head_rows.shape == fresh.shape and not torch.allclose(lm_head_rows, fresh)  # trained, not the initial rows

    ids = torch.tensor([pipeline.tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]])
    with torch.no_grad():
        expected = pipeline.model(input_ids=ids).logits
        reloaded = CausalLMPipeline.from_pretrained(output)
        assert torch.allclose(reloaded.model(input_ids=ids).logits, expected, atol=1e-5)
        tokenizer = AutoTokenizer.from_pretrained(output / "model")
        plain = AutoModelForCausalLM.from_pretrained(builtin_lm_folder(TINY_LLAMA))
        plain.resize_token_embeddings(len(tokenizer))
        peft_model = PeftModel.from_pretrained(plain, output / "model").eval()
        assert torch.allclose(peft_model(input_ids=ids).logits, expected, atol=1e-5)


@pytest.mark.parametrize("records, settings, data_format", [
    ([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}] * 4,
     {"chat_template": "llama-3"}, "sharegpt"),
    ([{"text": "Once upon a time there was a tiny llama."}] * 4, {}, "text"),
    ([{"question": "Say hi.", "answer": "Hi!"}] * 4,
     {"chat_template": "alpaca-lora", "field_map": {"instruction": "question", "output": "answer"}}, "alpaca"),
], ids=["sharegpt-llama-3", "text", "alpaca-lora-field-map"])
def test_each_format_trains_and_records_its_settings(tmp_path, caplog, records, settings, data_format):
    caplog.set_level("INFO", logger="tinypipe")
    CausalLMTrainer().train(data=records, output_dir=str(tmp_path / "repo"), **FAST, **settings, max_length=64)
    assert f"4 {data_format} records" in caplog.text
    recorded = json.loads((tmp_path / "repo" / "trainer" / "train_config" / "config.json").read_text())
    assert recorded["chat_template"] == settings.get("chat_template") and recorded["field_map"] == settings.get("field_map")
    pipeline = CausalLMPipeline.from_pretrained(tmp_path / "repo")
    if data_format == "alpaca":  # generation renders the instruction with the template trained on
        assert pipeline._prompts(None, "Say hi.", "")[0][0].endswith("### Response:\n")


def test_train_lm_cli_reads_sharegpt_with_a_template_file_and_field_map(tmp_path, monkeypatch):
    from tinypipe.cli import main

    data = tmp_path / "chats.jsonl"
    turns = [{"speaker": "human", "text": "Hi"}, {"speaker": "gpt", "text": "Hello!"}]
    data.write_text("".join(json.dumps({"conversations": turns}) + "\n" for _ in range(4)), encoding="utf-8")
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token if m['role'] == 'assistant' }}\n"
                        "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = main(["train-lm", "chat", TINY_LLAMA, str(data), "--chat-template", "chat.jinja", "--field-map",
                 "from=speaker,value=text", "--training-args", json.dumps(FAST), "--output", "out"])
    assert code == 0
    recorded = json.loads((tmp_path / "out" / "trainer" / "train_config" / "config.json").read_text())
    assert recorded["chat_template"] == template.read_text(encoding="utf-8")  # the template itself, not a local path
    assert recorded["field_map"] == {"from": "speaker", "value": "text"}
    assert (tmp_path / "out" / "model" / "chat_template.jinja").read_text(encoding="utf-8") == template.read_text(encoding="utf-8")


def test_a_chat_repo_trains_on_with_the_template_it_learned_and_refuses_another(chat_repo, tmp_path):
    from tinypipe import ConfigError

    _, output = chat_repo
    pipeline = CausalLMPipeline.from_pretrained(output)
    with pytest.raises(ConfigError, match="renders with chat_template='chatml' already"):
        CausalLMTrainer().init_model(pipeline).train(data=TINY_CHATS, chat_template="llama-3", **FAST)
    CausalLMTrainer().init_model(pipeline).train(data=TINY_CHATS, output_dir=str(tmp_path / "more"), **FAST)
    recorded = json.loads((tmp_path / "more" / "trainer" / "train_config" / "config.json").read_text())
    assert recorded["chat_template"] == "chatml"
    assert len(pipeline.tokenizer) == pipeline.model.get_input_embeddings().weight.shape[0]  # no tokens added twice
