"""tinypipe.data.chat_formats: alpaca, messages, ShareGPT and text records detected from every source; clear errors."""

import json
import logging

import pytest

from tinypipe import ConfigError, DataError
from tinypipe.builtin import TINY_CHATS
from tinypipe.data.chat_formats import ConversationExample, TextExample, load_training_data, parse_field_map
from tinypipe.data.instructions import InstructionExample

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5."}
MESSAGES = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}]}
SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                              {"from": "gpt", "value": "Hello!"}]}
TEXT = {"text": "Once upon a time."}


@pytest.mark.parametrize("record, expected", [(ALPACA, "alpaca"), (MESSAGES, "messages"), (SHAREGPT, "sharegpt"), (TEXT, "text")])
@pytest.mark.parametrize("source", ["list", "jsonl", "json", "dataset"])
def test_each_format_is_detected_from_each_source(tmp_path, caplog, record, expected, source):
    records = [record, record]
    if source == "jsonl":
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif source == "json":
        data = tmp_path / "data.json"
        data.write_text(json.dumps(records), encoding="utf-8")
    elif source == "dataset":
        datasets = pytest.importorskip("datasets")
        data = datasets.Dataset.from_list(records)
    else:
        data = records
    with caplog.at_level(logging.INFO, logger="tinypipe.data.chat_formats"):
        loaded = load_training_data(data)
    assert loaded.format == expected and len(loaded.examples) == 2
    assert f"2 {expected} records" in caplog.text
    example = loaded.examples[0]
    if expected == "alpaca":
        assert example == InstructionExample("Add the numbers.", "2 and 3", "5.", example.source)
    elif expected == "text":
        assert example == TextExample("Once upon a time.", example.source)
    else:  # ShareGPT's human / gpt turns are read as user / assistant turns
        assert isinstance(example, ConversationExample)
        assert example.messages == tuple(MESSAGES["messages"])


def test_the_builtin_chat_data_is_messages_with_multi_turn_and_system_turns():
    data = load_training_data(TINY_CHATS)
    assert data.format == "messages" and len(data.examples) >= 24
    roles = [[message["role"] for message in example.messages] for example in data.examples]
    assert any(r[0] == "system" for r in roles) and any(r.count("assistant") > 1 for r in roles)


def test_a_record_of_another_format_names_its_line_and_fields(tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps(MESSAGES) + "\n\n" + json.dumps(ALPACA) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed.jsonl line 3 is alpaca .*fields \['input', 'instruction', 'output'\].*"
                                        r"line 1 is messages"):
        load_training_data(data)


def test_a_record_of_no_known_format_names_its_fields_and_the_formats():
    with pytest.raises(DataError, match=r"record 0 is in no format .*fields \['answer', 'question'\].*alpaca.*messages.*"
                                        r"sharegpt.*text.*field_map"):
        load_training_data([{"question": "Hi?", "answer": "Hello."}])
    with pytest.raises(DataError, match=r"record 1 is in no known format .*fields \['prompt'\]"):
        load_training_data([TEXT, {"prompt": "x"}])


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, r"messages\[0\]: 'role' is 'robot'"),
    ({"messages": [{"role": "user", "content": 3}]}, r"messages\[0\]: 'content' must be a string"),
    ({"conversations": [{"from": "human"}]}, r"conversations\[0\] must be an object with 'from' and 'value'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "system turn after the first"),
    ({"text": ""}, "'text' must be a non-empty string"),
])
def test_bad_turns_are_clear_errors_naming_the_record(record, message):
    with pytest.raises(DataError, match=r"record 0.*" + message):
        load_training_data([record])


def test_field_map_reads_other_field_names():
    data = load_training_data([{"question": "Hi?", "context": "", "answer": "Hello."}],
                              field_map={"instruction": "question", "input": "context", "output": "answer"})
    assert data.format == "alpaca" and data.examples[0].instruction == "Hi?" and data.examples[0].output == "Hello."
    chats = load_training_data([{"dialog": [{"speaker": "user", "text": "Hi"}, {"speaker": "assistant", "text": "Yo"}]}],
                               field_map={"messages": "dialog", "role": "speaker", "content": "text"})
    assert chats.examples[0].messages == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"})


def test_field_map_option_is_parsed_and_checked():
    assert parse_field_map("instruction=question, output=answer") == {"instruction": "question", "output": "answer"}
    with pytest.raises(ConfigError, match="'instruction' is not STANDARD=YOURS"):
        parse_field_map("instruction")
    with pytest.raises(ConfigError, match="field_map key 'prompt' is not a field tinypipe reads"):
        parse_field_map("prompt=question")


def test_a_file_checked_before_and_unchanged_is_read_only_when_its_examples_are_used(tmp_path, monkeypatch):
    from tinypipe.data import chat_formats

    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(MESSAGES) + "\n" + json.dumps(MESSAGES) + "\n", encoding="utf-8")
    first = load_training_data(path)
    reads = []
    read = chat_formats.read_records_file
    monkeypatch.setattr(chat_formats, "read_records_file", lambda file: reads.append(file) or read(file))
    second = load_training_data(path)
    assert second.format == "messages" and second.digest() == first.digest() and reads == []
    assert second.examples == first.examples and len(reads) == 1
    path.write_text(json.dumps(MESSAGES) + "\n" + json.dumps(ALPACA) + "\n", encoding="utf-8")  # changed: checked again
    with pytest.raises(DataError, match="chats.jsonl line 2 is alpaca"):
        load_training_data(path)
