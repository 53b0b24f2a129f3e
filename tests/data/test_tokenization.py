"""tinypipe.data.chat_templates + tokenization + token_cache: templates render as named, exactly the assistant turns are
learned, truncation keeps whole turns and counts them, and a second tokenization of the same data is read from the cache."""

import logging

import pytest

from tinypipe import ConfigError, DataError, TrainingError
from tinypipe.builtin.tiny_llama import load_tiny_llama_tokenizer, tiny_instructions
from tinypipe.data import token_cache, tokenization
from tinypipe.data.chat_formats import load_training_data
from tinypipe.data.chat_templates import end_of_turn_ids, prepare_tokenizer, render_messages, resolve_chat_template
from tinypipe.data.instructions import IGNORE_INDEX, render_prompt, tokenize_example
from tinypipe.data.token_cache import cached_tokenization
from tinypipe.data.tokenization import log_truncation, tokenize_training_data
from tinypipe.training.causal_lm_steps import preflight

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome."}]


def prepared(choice, data_format="messages"):
    tokenizer = load_tiny_llama_tokenizer()
    template = resolve_chat_template(choice, data_format, tokenizer)
    prepare_tokenizer(tokenizer, template)
    return tokenizer, template


def learned_text(example, tokenizer) -> list[str]:
    """The learned tokens of an example, decoded run by run."""
    runs, current = [], []
    for token_id, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            current.append(token_id)
        elif current:
            runs.append(tokenizer.decode(current)), current.clear()
    return runs + ([tokenizer.decode(current)] if current else [])


def test_alpaca_templates_render_stanford_and_alpaca_lora_prompts_byte_for_byte():
    tokenizer, _ = prepared("alpaca")
    user = {"role": "user", "content": "Add the numbers.", "input": "2 and 3"}
    answer = {"role": "assistant", "content": "5."}
    assert render_messages([user, answer], tokenizer) == "<s>" + render_prompt("Add the numbers.", "2 and 3") + "5.</s>"
    assert render_messages([{"role": "user", "content": "Hi"}, answer], tokenizer) == "<s>" + render_prompt("Hi") + "5.</s>"
    tokenizer, _ = prepared("alpaca-lora")
    assert render_messages([user], tokenizer, add_generation_prompt=True).endswith("### Input:\n2 and 3\n\n### Response:\n")


def test_alpaca_records_tokenize_as_before_chat_templates():
    tokenizer, template = prepared(None, "alpaca")
    data = load_training_data(tiny_instructions()[:12], log=False)
    tokenized = tokenize_training_data(data, tokenizer, template, max_length=512)
    assert list(tokenized.examples) == [tokenize_example(example, tokenizer, 512) for example in data.examples]


@pytest.mark.parametrize("choice, end", [("chatml", "<|im_end|>"), ("llama-3", "<|eot_id|>")])
def test_every_assistant_turn_and_its_end_of_turn_token_is_learned_and_nothing_else(choice, end):
    tokenizer, template = prepared(choice)
    data = load_training_data([{"messages": CONVERSATION}], log=False)
    example = tokenize_training_data(data, tokenizer, template, max_length=512).examples[0]
    assert learned_text(example, tokenizer) == [f"Paris.{end}", f"Rome.{end}"]
    # The exact positions: the tokens of each answer and the end-of-turn token right after it.
    ids = example.input_ids
    end_id = tokenizer.convert_tokens_to_ids(end)
    ends = [index for index, token in enumerate(ids) if token == end_id]
    learned = [index for index, label in enumerate(example.labels) if label != IGNORE_INDEX]
    answer_ends = [ends[2], ends[4]]  # system, user, assistant, user, assistant
    paris, rome = (len(tokenizer("Paris.", add_special_tokens=False)["input_ids"]),
                   len(tokenizer("Rome.", add_special_tokens=False)["input_ids"]))
    assert learned == list(range(answer_ends[0] - paris, answer_ends[0] + 1)) + list(range(answer_ends[1] - rome, answer_ends[1] + 1))
    assert all(example.labels[index] == ids[index] for index in learned)
    assert end_of_turn_ids(tokenizer, template) >= {end_id}


def test_train_on_inputs_learns_every_token():
    tokenizer, template = prepared("chatml")
    data = load_training_data([{"messages": CONVERSATION}], log=False)
    example = tokenize_training_data(data, tokenizer, template, max_length=512, train_on_inputs=True).examples[0]
    assert example.labels == example.input_ids


def test_a_custom_template_file_renders_alpaca_records_as_user_and_assistant_turns(tmp_path):
    path = tmp_path / "qa.jinja"
    path.write_text("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\nA:{% else %} "
                    "{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}", encoding="utf-8")
    tokenizer, template = prepared(str(path), "alpaca")
    assert template.name == "custom" and template.recorded == path.read_text(encoding="utf-8")
    data = load_training_data([{"instruction": "Say hi.", "input": "politely", "output": "Hello there."}], log=False)
    example = tokenize_training_data(data, tokenizer, template, max_length=512).examples[0]
    assert tokenizer.decode(example.input_ids) == "Q: Say hi.\n\npolitely\nA: Hello there.</s>\n"
    assert learned_text(example, tokenizer) == [" Hello there.</s>"]  # the space before the answer is its first token


def test_a_template_that_ends_turns_with_no_token_is_refused_before_training():
    tokenizer, template = prepared("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    data = load_training_data([{"messages": CONVERSATION}], log=False)
    tokenized = tokenize_training_data(data, tokenizer, template, max_length=512)
    with pytest.raises(TrainingError, match=r"No training example would learn an end-of-turn token.*\{\{ eos_token \}\}"):
        preflight(tokenized.examples, tokenized.sources, tokenizer, end_of_turn_ids(tokenizer, template))


def test_bad_template_choices_are_clear_errors(tmp_path):
    tokenizer = load_tiny_llama_tokenizer()
    with pytest.raises(ConfigError, match="'tokenizer', but the tokenizer has no chat template"):
        resolve_chat_template("tokenizer", "messages", tokenizer)
    with pytest.raises(ConfigError, match="not a template tinypipe knows"):
        resolve_chat_template("chatm", "messages", tokenizer)
    with pytest.raises(ConfigError, match="no such file"):
        resolve_chat_template(str(tmp_path / "missing.jinja"), "messages", tokenizer)
    with pytest.raises(ConfigError, match="text records"):
        resolve_chat_template("chatml", "text", tokenizer)
    tokenizer, template = prepared("alpaca")
    with pytest.raises(DataError, match="record 0: the chat template cannot render.*no system turn"):
        tokenize_training_data(load_training_data([{"messages": CONVERSATION}], log=False), tokenizer, template, 512)


def test_truncation_keeps_whole_turns_and_counts_what_it_cut(caplog):
    tokenizer, template = prepared("chatml")
    data = load_training_data([{"messages": CONVERSATION}, {"messages": CONVERSATION[:3]}], log=False)
    full = tokenize_training_data(data, tokenizer, template, max_length=512).examples[0]
    first_turn_end = full.input_ids.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), full.prompt_length) + 1
    tokenized = tokenize_training_data(data, tokenizer, template, max_length=len(full.input_ids) - 2)
    cut = tokenized.examples[0]
    assert cut.input_ids == full.input_ids[:first_turn_end]  # cut after the last whole assistant turn, "Paris."
    assert learned_text(cut, tokenizer) == ["Paris.<|im_end|>"] and cut.turns_cut == 1 and not cut.cut_inside_turn
    assert (tokenized.truncated, tokenized.turns_cut, tokenized.cut_inside_turn) == (1, 1, 0)
    inside = tokenize_training_data(data, tokenizer, template, max_length=first_turn_end - 2)
    assert (inside.truncated, inside.turns_cut, inside.cut_inside_turn) == (2, 3, 2)
    with caplog.at_level(logging.WARNING):
        log_truncation(inside, first_turn_end - 2)
    assert "2 of 2 training examples are longer than" in caplog.text and "3 assistant turns were cut" in caplog.text


def test_a_second_tokenization_of_the_same_data_is_read_from_the_cache(monkeypatch):
    tokenizer, template = prepared("chatml")
    data = load_training_data("tinypipe/tiny-chats", log=False)
    first, digest = cached_tokenization(data, tokenizer, template, max_length=512)
    monkeypatch.setattr(token_cache, "tokenize_training_data", lambda *args, **kwargs: pytest.fail("tokenized again"))
    second, same_digest = cached_tokenization(data, tokenizer, template, max_length=512)
    assert list(second.examples) == list(first.examples) and same_digest == digest
    assert second.examples.learned_counts().sum() == sum(sum(1 for label in e.labels[1:] if label != -100) for e in first.examples)
    # Another max_length (or data, tokenizer, template) is another cache entry.
    monkeypatch.setattr(token_cache, "tokenize_training_data", tokenization.tokenize_training_data)
    other, other_digest = cached_tokenization(data, tokenizer, template, max_length=48)
    assert other_digest != digest and other.truncated > 0


def test_a_conversation_that_ends_with_a_user_turn_keeps_it_unlearned():
    tokenizer, template = prepared("chatml")
    data = load_training_data([{"messages": CONVERSATION + [{"role": "user", "content": "Bye."}]}], log=False)
    example = tokenize_training_data(data, tokenizer, template, max_length=512).examples[0]
    assert tokenizer.decode(example.input_ids).endswith("<|im_start|>user\nBye.<|im_end|>\n")
    assert learned_text(example, tokenizer) == ["Paris.<|im_end|>", "Rome.<|im_end|>"]
