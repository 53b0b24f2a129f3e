"""Chat generation: the built-in chat model `tinypipe/tiny-llama-chat`, and `generate(messages=...)` rendered with the
tokenizer's chat template exactly as transformers renders it."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinypipe import AutoModelPipeline, ConfigError
from tinypipe.builtin.tiny_llama import (
    CHATML_CHAT_TEMPLATE,
    TINY_LLAMA,
    TINY_LLAMA_CHAT,
    builtin_lm_folder,
    load_tiny_llama_chat_tokenizer,
    load_tiny_llama_tokenizer,
)
from tinypipe.models import CausalLMPipeline

CONVERSATION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]


@pytest.fixture(scope="module")
def chat_pipeline():
    return CausalLMPipeline(TINY_LLAMA_CHAT)


def test_tiny_llama_chat_tokenizer_has_chatml_tokens_template_and_im_end_as_eos():
    tokenizer, plain = load_tiny_llama_chat_tokenizer(), load_tiny_llama_tokenizer()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>" and tokenizer.chat_template == CHATML_CHAT_TEMPLATE
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [len(plain), len(plain) + 1]
    assert tokenizer("école ¡Hola!")["input_ids"] == plain("école ¡Hola!")["input_ids"][1:]  # same vocabulary, no <s>
    rendered = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
                        "<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_dict=False)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3 and ids.count(tokenizer.eos_token_id) == 2


def test_tiny_llama_chat_folder_loads_in_transformers_with_its_template_and_stops_at_im_end(chat_pipeline):
    folder = builtin_lm_folder(TINY_LLAMA_CHAT)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    assert tokenizer.chat_template == CHATML_CHAT_TEMPLATE and tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    batch = tokenizer(["Hello there"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, chat_pipeline.model(**batch).logits)


def test_the_chat_model_name_loads_through_the_hub_path(tmp_path):
    pipeline = AutoModelPipeline.from_pretrained(tmp_path / "cache", TINY_LLAMA_CHAT)
    assert isinstance(pipeline, CausalLMPipeline) and pipeline.config["base_model"] == TINY_LLAMA_CHAT
    assert pipeline.tokenizer.chat_template == CHATML_CHAT_TEMPLATE


def test_generate_with_messages_replies_as_transformers_does_with_the_chat_template(chat_pipeline):
    tokenizer, model = chat_pipeline.tokenizer, chat_pipeline.model
    # What a transformers user writes: render with the template and its generation prompt, generate, decode the rest.
    batch = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    reply = chat_pipeline.generate(messages=CONVERSATION, max_new_tokens=8)
    assert reply == expected and reply.strip()
    # A list of conversations gives one reply each, the same as one at a time (left padding).
    assert chat_pipeline.generate(messages=[CONVERSATION[:2], CONVERSATION], max_new_tokens=8) == [
        chat_pipeline.generate(messages=CONVERSATION[:2], max_new_tokens=8), reply]


def test_generation_stops_at_the_end_of_turn_token_and_leaves_it_out_of_the_reply(chat_pipeline):
    end_of_turn = chat_pipeline.tokenizer.eos_token_id
    boost = torch.zeros(len(chat_pipeline.tokenizer))
    boost[end_of_turn] = 1e4  # the model now always ends its turn at once
    hook = chat_pipeline.model.lm_head.register_forward_hook(lambda module, inputs, output: output + boost)
    try:
        ids = chat_pipeline.generate_ids(["Hi"], max_new_tokens=8)
        reply = chat_pipeline.generate(messages=CONVERSATION[:2], max_new_tokens=8)
    finally:
        hook.remove()
    assert ids == [[end_of_turn]] and reply == ""


def test_messages_need_a_chat_template_and_the_error_names_the_fix():
    with pytest.raises(ConfigError, match=r"tokenizer of 'tinypipe/tiny-llama' has no chat template.*Train with a chat template"
                                          r".*'tinypipe/tiny-llama-chat'"):
        CausalLMPipeline(TINY_LLAMA).generate(messages=CONVERSATION[:2])


@pytest.mark.parametrize("messages, error", [
    ([{"role": "user"}], r"messages\[0\] has no 'content'"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\] is a int"),
    ("What is the capital of France?", "messages must be a non-empty list"),
    ([], "messages must be a non-empty list"),
    ([[{"role": "user", "content": "Hi"}], ["Hi"]], r"messages\[1\]\[0\] is a str"),
])
def test_bad_messages_are_refused_naming_the_message(chat_pipeline, messages, error):
    with pytest.raises(ConfigError, match=error):
        chat_pipeline.generate(messages=messages)


def test_messages_go_alone(chat_pipeline):
    with pytest.raises(ConfigError, match="messages, a prompt or an instruction: give only one"):
        chat_pipeline.generate("Hi", messages=CONVERSATION[:2])


def test_a_conversation_the_template_refuses_is_a_clear_error(chat_pipeline):
    template = chat_pipeline.tokenizer.chat_template
    chat_pipeline.tokenizer.chat_template = ("{% for message in messages %}{% if message['role'] == 'system' %}"
                                             "{{ raise_exception('no system turns here') }}{% endif %}{% endfor %}")
    try:
        with pytest.raises(ConfigError, match="chat template cannot render these messages .*no system turns here"):
            chat_pipeline.generate(messages=CONVERSATION)
    finally:
        chat_pipeline.tokenizer.chat_template = template


def test_the_chat_model_name_is_a_base_model_everywhere_a_model_id_is():
    from tinypipe.models.base_models import check_base_model

    check_base_model(TINY_LLAMA_CHAT, kind="causal-lm")  # what train-lm checks MODEL with, before a job is recorded
    with pytest.raises(ConfigError, match=r"Did you mean 'tinypipe/tiny-llama-chat'"):
        check_base_model("tinypipe/tiny-llama-chatt", kind="causal-lm")


def rendered_prompts(pipeline, monkeypatch, **arguments) -> list[str]:
    """The prompts `generate(**arguments)` hands the model, as text (special tokens kept)."""
    seen = []

    def generate(batch, *args, **sampling):
        seen.extend(pipeline.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False))
        return [[pipeline.tokenizer.eos_token_id]] * len(batch["input_ids"])
    monkeypatch.setattr(pipeline, "_generate", generate)
    pipeline.generate(**arguments)
    return [text.replace(pipeline.tokenizer.pad_token, "") for text in seen]


def test_an_instruction_to_a_chat_template_repo_is_a_user_turn_of_its_template_not_the_alpaca_prompt(tmp_path, monkeypatch):
    CausalLMPipeline(TINY_LLAMA, chat_template="chatml").save_pretrained(tmp_path / "chatml-repo")
    pipeline = AutoModelPipeline.from_pretrained(tmp_path / "chatml-repo")  # the template recorded in the repo
    prompts = rendered_prompts(pipeline, monkeypatch, instruction=["Add the numbers.", "Name a colour."], input=["2 and 3", ""])
    assert prompts == ["<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n",
                       "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"]
    assert rendered_prompts(pipeline, monkeypatch, instruction="Name a colour.") == prompts[1:]
    alpaca = CausalLMPipeline(TINY_LLAMA)  # no chat template: the alpaca prompt it trains with by default
    assert "### Instruction:\nName a colour.\n\n### Response:" in rendered_prompts(alpaca, monkeypatch, instruction="Name a colour.")[0]
