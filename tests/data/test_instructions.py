"""Instruction data: the alpaca templates byte for byte, every accepted source, bad records, tokens and loss mask."""

import json
import logging

import pytest

from tinypipe import DataError
from tinypipe.builtin.tiny_llama import (
    TINY_INSTRUCTIONS,
    load_tiny_llama_tokenizer,
    tiny_instructions,
)
from tinypipe.data.instructions import (
    IGNORE_INDEX,
    InstructionExample,
    collate,
    length_grouped_batches,
    load_instruction_examples,
    pack,
    render_loss_mask,
    render_prompt,
    tokenize_example,
    tokenize_examples,
)

GOLDEN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nAdd the two numbers.\n\n### Input:\n2 and 3\n\n### Response:"
)
GOLDEN_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nSay hi.\n\n### Response:"
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_llama_tokenizer()


def test_alpaca_templates_are_byte_exact():
    assert render_prompt("Add the two numbers.", "2 and 3") == GOLDEN_WITH_INPUT
    assert render_prompt("Say hi.", "") == GOLDEN_NO_INPUT
    assert render_prompt("Say hi.") == GOLDEN_NO_INPUT


@pytest.mark.parametrize("record", [{"instruction": "Say hi.", "output": "Hi"},
                                    {"instruction": "Say hi.", "input": "", "output": "Hi"},
                                    {"instruction": "Say hi.", "input": None, "output": "Hi"}], ids=["missing", "empty", "null"])
def test_missing_empty_and_null_input_select_the_no_input_template(record):
    example = load_instruction_examples([record])[0]
    assert example.input == ""
    assert render_prompt(example.instruction, example.input) == GOLDEN_NO_INPUT


def test_json_jsonl_list_and_datasets_give_the_same_examples(tmp_path):
    records = tiny_instructions()[:5]
    (tmp_path / "data.json").write_text(json.dumps(records), encoding="utf-8")
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n", encoding="utf-8")
    datasets = pytest.importorskip("datasets")
    expected = [(r["instruction"], r["input"], r["output"]) for r in records]
    for source in (tmp_path / "data.json", str(tmp_path / "data.jsonl"), records, datasets.Dataset.from_list(records)):
        assert [(e.instruction, e.input, e.output) for e in load_instruction_examples(source)] == expected
    assert len(load_instruction_examples(TINY_INSTRUCTIONS)) == len(tiny_instructions()) == 40


def test_unicode_survives_loading_and_tokenization(tmp_path, tokenizer):
    record = {"instruction": "Übersetze ins Japanische.", "input": "Katze 🐱", "output": "猫です — ¡sí!"}
    (tmp_path / "data.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    example = load_instruction_examples(tmp_path / "data.jsonl")[0]
    assert example.output == record["output"] and example.input == record["input"]
    tokenized = tokenize_example(example, tokenizer, max_length=512)
    learned = [token for token, label in zip(tokenized.input_ids, tokenized.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(learned, skip_special_tokens=True) == record["output"]
    assert tokenizer.unk_token_id not in tokenized.input_ids


@pytest.mark.parametrize("record, words", [
    ({"input": "x", "output": "y"}, ["record 1", "'instruction'"]),
    ({"instruction": "Do it.", "input": "x"}, ["record 1", "'output'"]),
    ({"instruction": "Do it.", "output": 42}, ["record 1", "'output'", "string", "int"]),
    ({"instruction": ["a"], "output": "y"}, ["record 1", "'instruction'", "string", "list"]),
    ({"instruction": "Do it.", "input": 3.5, "output": "y"}, ["record 1", "'input'", "string", "float"]),
    ("just text", ["record 1", "JSON object"]),
], ids=["no-instruction", "no-output", "int-output", "list-instruction", "float-input", "not-a-dict"])
def test_bad_records_name_the_record_and_key(record, words):
    with pytest.raises(DataError) as error:
        load_instruction_examples([{"instruction": "Fine.", "output": "ok"}, record])
    for word in words:
        assert word in str(error.value)


def test_malformed_json_names_the_line(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": }\n')
    with pytest.raises(DataError, match=r"data.jsonl line 2 is not valid JSON"):
        load_instruction_examples(tmp_path / "data.jsonl")
    (tmp_path / "data.json").write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]\n')
    with pytest.raises(DataError, match=r"data.json line 3 is not valid JSON"):
        load_instruction_examples(tmp_path / "data.json")


def test_jsonl_record_errors_name_the_line(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a"}\n')
    with pytest.raises(DataError, match=r"data.jsonl line 3: the record has no 'output' key"):
        load_instruction_examples(tmp_path / "data.jsonl")


def test_empty_dataset_missing_file_and_wrong_type_are_errors(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "object.json").write_text('{"instruction": "a"}')
    with pytest.raises(DataError, match="No instruction examples"):
        load_instruction_examples(tmp_path / "empty.json")
    with pytest.raises(DataError, match="No instruction examples"):
        load_instruction_examples([])
    with pytest.raises(DataError, match="after filter_fn"):
        load_instruction_examples([{"instruction": "a", "output": "b"}], filter_fn=lambda example: False)
    with pytest.raises(DataError, match="does not exist"):
        load_instruction_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="must be a list of records"):
        load_instruction_examples(tmp_path / "object.json")
    with pytest.raises(DataError, match="Cannot read instruction data"):
        load_instruction_examples(42)


def test_prompt_is_masked_and_eos_is_learned(tokenizer):
    example = InstructionExample("What is the capital of France?", "", "The capital of France is Paris.")
    tokenized = tokenize_example(example, tokenizer, max_length=512)
    prompt_ids = tokenizer(render_prompt(example.instruction))["input_ids"]
    assert tokenized.input_ids[:len(prompt_ids)] == prompt_ids and tokenized.input_ids[0] == tokenizer.bos_token_id
    assert tokenized.labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert tokenized.labels[len(prompt_ids):] == tokenized.input_ids[len(prompt_ids):]
    assert tokenized.input_ids[-1] == tokenized.labels[-1] == tokenizer.eos_token_id != tokenizer.pad_token_id
    with_inputs = tokenize_example(example, tokenizer, max_length=512, train_on_inputs=True)
    assert with_inputs.labels == with_inputs.input_ids


def test_loss_mask_rendering_brackets_the_learned_tokens(tokenizer):
    tokenized = tokenize_example(InstructionExample("Say hi.", "", "Hi there."), tokenizer, max_length=512)
    rendered = render_loss_mask(tokenized, tokenizer)
    assert rendered.startswith("<s>Below is an instruction") and "### Response:[" in rendered
    assert rendered.endswith("[</s>]")
    assert "".join(part for part in rendered.split("[") if "]" in part).replace("]", "") == "Hi there.</s>"


def test_long_records_are_truncated_and_counted(tokenizer, caplog):
    examples = [InstructionExample("Say hi.", "", "word " * 200, source="record 0"),
                InstructionExample("Say hi.", "", "Hi.", source="record 1")]
    with caplog.at_level(logging.WARNING):
        tokenized = tokenize_examples(examples, tokenizer, max_length=64)
    assert len(tokenized[0].input_ids) == len(tokenized[0].labels) == 64 and tokenized[0].truncated
    assert tokenizer.eos_token_id not in tokenized[0].input_ids
    assert not tokenized[1].truncated and tokenized[1].input_ids[-1] == tokenizer.eos_token_id
    assert "1 of 2 examples are longer than max_length=64" in caplog.text and "record 0" in caplog.text


def test_collate_pads_right_and_keeps_eos_learned_when_pad_equals_eos(tokenizer):
    tokenized = [tokenize_example(InstructionExample("Say hi.", "", text), tokenizer, 512) for text in ("Hi.", "Hello to you all.")]
    batch = collate(tokenized, pad_token_id=tokenizer.eos_token_id)  # the classic bug: pad == eos
    short = len(tokenized[0].input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (batch["input_ids"].shape[1] - short)
    assert batch["labels"][0, short - 1] == tokenizer.eos_token_id  # learned, though equal to the padding id
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()


def test_length_grouped_batches_cover_every_example_once_with_less_padding():
    lengths = [(index * 37) % 200 + 5 for index in range(64)]
    grouped = length_grouped_batches(lengths, 8, seed=1)
    plain = length_grouped_batches(lengths, 8, seed=1, group_by_length=False)
    assert sorted(i for batch in grouped for i in batch) == sorted(i for batch in plain for i in batch) == list(range(64))

    def padded(batches):
        return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)

    assert padded(grouped) < 0.7 * padded(plain)
    assert grouped == length_grouped_batches(lengths, 8, seed=1) != length_grouped_batches(lengths, 8, seed=2)


def test_pack_puts_examples_in_fewer_rows_with_restarting_positions(tokenizer):
    texts = ["Hi.", "Hello.", "word " * 60, "Yes.", "No."]
    tokenized = [tokenize_example(InstructionExample("Say it.", "", text), tokenizer, 512, train_on_inputs=True) for text in texts]
    packed, padded = pack(tokenized, tokenizer.pad_token_id), collate(tokenized, tokenizer.pad_token_id)
    assert packed["input_ids"].shape[1] == padded["input_ids"].shape[1] and packed["input_ids"].shape[0] < len(texts)
    starts = (packed["position_ids"] == 0).nonzero().tolist()
    for row, column in starts:  # no token is learned from the example before it
        assert packed["labels"][row, column] == IGNORE_INDEX
    learned = sorted(label for label in packed["labels"].flatten().tolist() if label != IGNORE_INDEX)
    assert learned == sorted(label for example in tokenized for label in example.labels[1:])
    assert "attention_mask" not in packed  # transformers builds the per-example masks from the positions
