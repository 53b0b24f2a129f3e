"""Instruction data for causal-LM fine-tuning: alpaca records in, token ids with a loss mask out.

```python
examples = load_instruction_examples("alpaca_data.json")        # or .jsonl, a list of dicts, a datasets.Dataset
tokenized = tokenize_example(examples[0], tokenizer, max_length=512, train_on_inputs=False)
tokenized.input_ids    # <bos> prompt tokens, response tokens, <eos>
tokenized.labels       # -100 on the prompt tokens (not learned), the ids themselves on the response and <eos>
```

The prompt is rendered with the Stanford Alpaca templates, byte for byte (`ALPACA_PROMPT_WITH_INPUT`,
`ALPACA_PROMPT_NO_INPUT`); the response follows `### Response:` directly, then the end-of-sequence
token. Prompt and response are tokenized separately, so the loss mask falls exactly on the boundary and
generation from the rendered prompt sees the same tokens as training did.
"""

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from ..errors import DataError
from .json_files import read_json_document, read_json_lines

logger = logging.getLogger(__name__)

__all__ = [
    "ALPACA_PROMPT_NO_INPUT",
    "ALPACA_PROMPT_WITH_INPUT",
    "IGNORE_INDEX",
    "InstructionExample",
    "check_instruction_record",
    "is_dataset",
    "read_records_file",
    "TokenizedExample",
    "collate",
    "length_grouped_batches",
    "pack",
    "load_instruction_examples",
    "render_loss_mask",
    "render_prompt",
    "tokenize_example",
    "tokenize_examples",
]

ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
"""Stanford Alpaca's prompt for a record with a non-empty `input`."""

ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
"""Stanford Alpaca's prompt for a record whose `input` is empty, missing or null."""

IGNORE_INDEX = -100
"""The label of a token that is not learned (PyTorch's `cross_entropy` ignores it)."""

_FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class InstructionExample:
    """One alpaca record, checked.

    Args:
        instruction: The task.
        input: Its context; `""` when the record has none (missing, null or empty).
        output: The response to learn.
        source: Where the record came from, for error messages (`"data.jsonl line 3"`, `"record 4"`).
    """

    instruction: str
    input: str
    output: str
    source: str = ""


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example and what is learned from them.

    Args:
        input_ids: `<bos>` (if the tokenizer adds one), prompt, response, `<eos>`.
        labels: Same length; `IGNORE_INDEX` where the token is not learned.
        prompt_length: How many leading tokens are the prompt.
        truncated: The example was cut to `max_length` (its end, including `<eos>`, was dropped).
        turns_cut: Of an example cut to `max_length`, how many assistant turns (responses) were dropped or cut short.
        cut_inside_turn: Not even the first assistant turn (response) fits whole: its end is not learned.
    """

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    truncated: bool
    turns_cut: int = 0
    cut_inside_turn: bool = False


def render_prompt(instruction: str, input: str = "", response_separator: str = "") -> str:
    """The alpaca prompt of a record: the with-input template when `input` is non-empty, else the no-input one.

    `response_separator` follows `### Response:` (`"\\n"` for alpaca-lora's template; Stanford's has none).

    Example:
        ```py
        >>> render_prompt("Add the two numbers.", "2 and 3").endswith("### Input:\\n2 and 3\\n\\n### Response:")
        True
        ```
    """
    if input:
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input) + response_separator
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction) + response_separator


# -- loading --------------------------------------------------------------------------------------------


def check_instruction_record(record: Any, source: str) -> InstructionExample:
    """Turn one raw record into an `InstructionExample`, or raise `DataError` naming the record and key."""
    if not isinstance(record, dict):
        raise DataError(f"{source}: a record must be a JSON object with 'instruction', 'output' and optionally 'input', "
                        f"got {type(record).__name__}.")
    for key in ("instruction", "output"):
        if key not in record:
            raise DataError(f"{source}: the record has no {key!r} key (its keys are {sorted(record)}); every record needs "
                            "'instruction' and 'output' ('input' is optional).")
    values = {}
    for key in _FIELDS:
        value = record.get(key)
        if key == "input" and value is None:
            value = ""  # a missing or null input means the record has none, like an empty one
        if not isinstance(value, str):
            raise DataError(f"{source}: {key!r} must be a string, got {type(value).__name__} ({value!r:.60}). "
                            "Convert it to text in the data file.")
        values[key] = value
    if not values["instruction"].strip():
        raise DataError(f"{source}: 'instruction' is empty; every record needs an instruction.")
    return InstructionExample(source=source, **values)


def read_records_file(path: Path) -> list[tuple[Any, str]]:
    """The records of a `.json` file (a list of objects) or a `.jsonl` file (one object per line)."""
    if path.suffix == ".jsonl":
        return [(record, f"{path.name} line {number}") for number, record in read_json_lines(path)]
    data = read_json_document(path, hint="A .json file must hold one list of records; use .jsonl for one record per line.")
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}; it must be a list of records "
                        '[{"instruction": ..., "input": ..., "output": ...}, ...] (or use .jsonl).')
    return [(record, f"{path.name} record {index}") for index, record in enumerate(data)]


def load_instruction_examples(
    data: Any, filter_fn: Optional[Callable[[InstructionExample], bool]] = None
) -> list[InstructionExample]:
    """Read and check instruction records from any of the supported sources.

    Args:
        data: A `.json` file (a list of records), a `.jsonl` file (one record per line), a list of
            dicts, a `datasets.Dataset`, or the built-in `"tinypipe/tiny-instructions"`. Each record has
            string `instruction` and `output` keys and an optional `input` (missing, null and `""` all
            select the no-input template). Other keys are ignored.
        filter_fn: Keeps only the examples it returns True for.

    Returns:
        The examples, in order.

    Raises:
        DataError: A file that is missing or not JSON (naming the line), a record without `instruction`
            or `output`, a field that is not a string (naming the record and key), or no examples at all.

    Example:
        ```py
        >>> load_instruction_examples([{"instruction": "Say hi.", "output": "Hi!"}])[0].input
        ''
        ```
    """
    from ..builtin.tiny_llama import TINY_INSTRUCTIONS, tiny_instructions

    # 1. Raw records with a name for each, for the error messages.
    if isinstance(data, (str, Path)) and str(data) == TINY_INSTRUCTIONS:
        raw = [(record, f"{TINY_INSTRUCTIONS} record {index}") for index, record in enumerate(tiny_instructions())]
        name = TINY_INSTRUCTIONS
    elif isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise DataError(f"The data file {path} does not exist. Give a .json or .jsonl file of alpaca records, a list of "
                            f"dicts, a datasets.Dataset, or {TINY_INSTRUCTIONS!r}.")
        if path.suffix not in (".json", ".jsonl"):
            raise DataError(f"{path}: instruction data must be a .json (list of records) or .jsonl (one record per line) file.")
        raw = read_records_file(path)
        name = str(path)
    elif is_dataset(data) or isinstance(data, (list, tuple)):
        raw = [(record, f"record {index}") for index, record in enumerate(data)]
        name = f"the {type(data).__name__} of {len(raw)} records"
    else:
        raise DataError(f"Cannot read instruction data from a {type(data).__name__}; give a .json/.jsonl file, a list of "
                        f"dicts, a datasets.Dataset, or {TINY_INSTRUCTIONS!r}.")

    # 2. Check every record; keep what the filter keeps.
    examples = [check_instruction_record(record, source) for record, source in raw]
    if filter_fn is not None:
        examples = [example for example in examples if filter_fn(example)]
    if not examples:
        raise DataError(f"No instruction examples in {name}" + (" after filter_fn" if raw else "") +
                        "; the data set must hold at least one record with 'instruction' and 'output'.")
    return examples


def is_dataset(data: Any) -> bool:
    """Whether `data` is a `datasets.Dataset` (checked without importing `datasets`)."""
    return type(data).__name__ == "Dataset" and type(data).__module__.startswith("datasets")


# -- tokenization ---------------------------------------------------------------------------------------


def tokenize_example(example: InstructionExample, tokenizer: Any, max_length: int, train_on_inputs: bool = False) -> TokenizedExample:
    """Token ids and labels of one example: prompt, response, `<eos>`; the prompt masked unless `train_on_inputs`.

    Args:
        example: The record.
        tokenizer: A transformers tokenizer with an `eos_token_id`.
        max_length: Longest sequence kept; longer ones are cut at the end (losing `<eos>`).
        train_on_inputs: Also learn the prompt tokens.

    Returns:
        The `TokenizedExample`.
    """
    prompt_ids = tokenizer(render_prompt(example.instruction, example.input), add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(example.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = prompt_ids + response_ids
    labels = (list(prompt_ids) if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)) + response_ids
    truncated = len(input_ids) > max_length
    return TokenizedExample(input_ids[:max_length], labels[:max_length], min(len(prompt_ids), max_length), truncated)


def tokenize_examples(examples: Sequence[InstructionExample], tokenizer: Any, max_length: int,
                      train_on_inputs: bool = False) -> list[TokenizedExample]:
    """`tokenize_example` on each example; logs a warning with the number of truncated examples."""
    tokenized = [tokenize_example(example, tokenizer, max_length, train_on_inputs) for example in examples]
    truncated = [example.source for example, result in zip(examples, tokenized) if result.truncated]
    if truncated:
        logger.warning("%d of %d examples are longer than max_length=%d tokens and were truncated (their end and <eos> are "
                       "not learned), e.g. %s. Raise max_length or shorten them.", len(truncated), len(examples), max_length,
                       ", ".join(truncated[:3]))
    return tokenized


def render_loss_mask(example: TokenizedExample, tokenizer: Any) -> str:
    """A human-readable view of one example's loss mask: each learned token in `[brackets]`, the rest plain.

    Example:
        ```py
        >>> print(render_loss_mask(tokenized, tokenizer))
        <s>Below is an instruction ... ### Response:[The][ capital][ of][ France][ is][ Paris][.][</s>]
        ```
    """
    parts = []
    for token_id, label in zip(example.input_ids, example.labels):
        text = tokenizer.decode([token_id])
        parts.append(f"[{text}]" if label != IGNORE_INDEX else text)
    return "".join(parts)


# -- batching -------------------------------------------------------------------------------------------


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True,
                           mega_batch_factor: int = 50) -> list[list[int]]:
    """The batches of one epoch, as lists of example indices, shuffled by `seed`.

    With `group_by_length`, the shuffled examples are cut into groups of `mega_batch_factor x batch_size`,
    each group is sorted by length and cut into batches, and the batches are shuffled: batches hold
    examples of similar length (little padding) yet every epoch differs. Otherwise plain shuffled batches.

    Args:
        lengths: Token count of each example.
        batch_size: Examples per batch (the last batch may be smaller).
        seed: Seed of this epoch's order (use a different one for each epoch).
        group_by_length: Group examples of similar length.
        mega_batch_factor: Batches per sorted group.
    """
    generator = random.Random(seed)
    order = list(range(len(lengths)))
    generator.shuffle(order)
    if not group_by_length:
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    group_size = batch_size * mega_batch_factor
    batches = []
    for start in range(0, len(order), group_size):
        group = sorted(order[start:start + group_size], key=lambda index: -lengths[index])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    generator.shuffle(batches)
    return batches


def collate(examples: Iterable[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example (right padding): `input_ids`, `attention_mask`, `labels`.

    Padding is found from the lengths, never from the pad id, so a pad token equal to `<eos>` still
    leaves every `<eos>` learned.
    """
    examples = list(examples)
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack(examples: Iterable[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pack a batch into as few rows as fit, each as wide as its longest example: `input_ids`, `position_ids`, `labels`.

    Examples are placed first-fit, longest first. Positions restart at 0 for every example, which is
    how transformers recognises packed sequences: with no `attention_mask`, each token attends only to
    the tokens of its own example. The first label of every example is `IGNORE_INDEX`, so no token is
    learned from the end of the example before it. The rest of a row is padding, a segment of its own
    that is never learned and never attended to from real tokens.

    Padding tokens are a small fraction of what `collate` computes on when lengths vary, and the loss of
    the batch is the same.
    """
    examples = sorted(examples, key=lambda example: -len(example.input_ids))
    width = len(examples[0].input_ids)
    rows: list[list[TokenizedExample]] = []
    room: list[int] = []
    for example in examples:
        row = next((index for index, free in enumerate(room) if free >= len(example.input_ids)), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(example)
        room[row] -= len(example.input_ids)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for example in members:
            length = len(example.input_ids)
            input_ids[row, start:start + length] = torch.tensor(example.input_ids)
            labels[row, start + 1:start + length] = torch.tensor(example.labels[1:])
            position_ids[row, start:start + length] = torch.arange(length)
            start += length
        position_ids[row, start:] = torch.arange(width - start)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
