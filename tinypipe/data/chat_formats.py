"""Causal-LM training data in the formats people have: alpaca, messages, ShareGPT and plain text, detected and named.

```python
data = load_training_data("chats.jsonl")              # or .json, a list of dicts, a datasets.Dataset, a built-in name
data.format                                           # "alpaca", "messages", "sharegpt" or "text"
data.examples[0]                                      # InstructionExample, ConversationExample or TextExample
load_training_data(rows, field_map={"instruction": "question", "output": "answer"})   # other field names
```

The formats, by the fields of a record:
- `alpaca`: `{"instruction", "input" (optional), "output"}` (Stanford Alpaca);
- `messages`: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}` (OpenAI / TRL);
- `sharegpt`: `{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}`, read as messages
  (`human` -> `user`, `gpt` -> `assistant`);
- `text`: `{"text": ...}`, completion data learned as a whole.

Every record must have the format of the first one; a record of another format or of none is a `DataError` naming
the record (the line of a `.jsonl` file) and the fields it has.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from ..errors import ConfigError, DataError
from .instructions import InstructionExample, check_instruction_record, is_dataset, read_records_file

logger = logging.getLogger(__name__)

__all__ = ["DATA_FORMATS", "ConversationExample", "TextExample", "TrainingData", "load_training_data", "record_format",
           "check_field_map", "parse_field_map", "alpaca_messages"]

DATA_FORMATS = ("alpaca", "messages", "sharegpt", "text")
"""The record formats a causal-LM trainer reads (see the module docstring)."""

ROLES = ("system", "user", "assistant")
"""The roles of a conversation's turns."""

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
"""ShareGPT's `from` values and the role each is read as."""

FIELD_NAMES = ("instruction", "input", "output", "messages", "conversations", "text", "role", "content", "from", "value")
"""The field names `field_map` may rename (the keys of a record, and of a turn inside `messages` / `conversations`)."""

_DESCRIPTIONS = {
    "alpaca": '{"instruction", "input" (optional), "output"}',
    "messages": '{"messages": [{"role", "content"}, ...]}',
    "sharegpt": '{"conversations": [{"from", "value"}, ...]}',
    "text": '{"text"}',
}


@dataclass(frozen=True)
class ConversationExample:
    """One conversation (messages or ShareGPT record), checked.

    Args:
        messages: The turns, `({"role": "system"|"user"|"assistant", "content": str}, ...)`, at least one of them an
            assistant turn.
        source: Where the record came from, for error messages (`"chats.jsonl line 3"`).
    """

    messages: tuple
    source: str = ""


@dataclass(frozen=True)
class TextExample:
    """One completion record (`{"text": ...}`): the whole text is learned.

    Args:
        text: The text.
        source: Where the record came from, for error messages.
    """

    text: str
    source: str = ""


class TrainingData:
    """The checked records of a data set and the format they were detected as.

    Args:
        format: One of `DATA_FORMATS`.
        examples: `InstructionExample`s (alpaca), `ConversationExample`s (messages, sharegpt) or `TextExample`s (text);
            None when they are read on first use (`load`).
        name: The data set, for messages (a file path, a built-in name, "the list of 40 records").
        file_sha256: The sha256 of the file all of the examples were read from (with the field map), when they are all
            of it; `digest` then needs not serialise them.
        load: Reads the examples, when `examples` is None (a file checked before, whose tokens are likely cached).
    """

    def __init__(self, format: str, examples: Optional[list], name: str, file_sha256: Optional[str] = None,
                 load: Optional[Callable[[], list]] = None):
        self.format, self.name, self.file_sha256 = format, name, file_sha256
        self._examples, self._load = examples, load

    @property
    def examples(self) -> list:
        """The examples, in order (read now if they were not yet)."""
        if self._examples is None:
            self._examples = self._load()
        return self._examples

    def digest(self) -> str:
        """The sha256 of the examples' content (their format, fields and order), the key of their tokenized cache."""
        if self.file_sha256 is not None:
            return hashlib.sha256(f"{self.format} file {self.file_sha256}".encode()).hexdigest()
        digest = hashlib.sha256(self.format.encode())
        for example in self.examples:
            digest.update(json.dumps(example_fields(example), ensure_ascii=False, sort_keys=True).encode())
        return digest.hexdigest()


def example_fields(example: Any) -> Any:
    """The content of an example as JSON values (no source): what its tokens depend on."""
    if isinstance(example, InstructionExample):
        return [example.instruction, example.input, example.output]
    if isinstance(example, ConversationExample):
        return [[message["role"], message["content"]] for message in example.messages]
    return example.text


def alpaca_messages(example: InstructionExample, input_field: bool) -> list[dict]:
    """An alpaca record as a user turn and an assistant turn.

    Args:
        example: The record.
        input_field: Keep `input` as a field of the user turn (`{"role": "user", "content": instruction, "input": ...}`),
            as the alpaca templates read it; otherwise it follows the instruction in the user turn's content after a
            blank line.
    """
    if input_field:
        user = {"role": "user", "content": example.instruction, "input": example.input}
    else:
        user = {"role": "user", "content": example.instruction + (f"\n\n{example.input}" if example.input else "")}
    return [user, {"role": "assistant", "content": example.output}]


# -- field names ----------------------------------------------------------------------------------------


def check_field_map(field_map: Optional[Mapping[str, str]]) -> dict[str, str]:
    """`field_map` checked: `{standard name: the data's name}`, every key one of `FIELD_NAMES` and every value a string.

    Raises:
        ConfigError: An unknown key or a value that is not a non-empty string.
    """
    if field_map is None:
        return {}
    if not isinstance(field_map, Mapping):
        raise ConfigError(f"field_map must be a dict {{standard name: your field name}}, got {type(field_map).__name__}.")
    for key, value in field_map.items():
        if key not in FIELD_NAMES:
            raise ConfigError(f"field_map key {key!r} is not a field tinypipe reads; the keys are the standard names "
                              f"{list(FIELD_NAMES)}, the values your data's names (e.g. {{'instruction': 'question'}}).")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"field_map[{key!r}] must be the name of a field of your records, got {value!r}.")
    return dict(field_map)


def parse_field_map(text: str) -> dict[str, str]:
    """The `--field-map` option (`"instruction=question,output=answer"`) as a checked `field_map` dict.

    Raises:
        ConfigError: A part without `=`, or an unknown standard name.
    """
    pairs = [part.strip() for part in text.split(",") if part.strip()]
    mapping = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip() or not value.strip():
            raise ConfigError(f"--field-map {text!r}: {pair!r} is not STANDARD=YOURS; write e.g. "
                              "--field-map instruction=question,output=answer.")
        mapping[key.strip()] = value.strip()
    if not mapping:
        raise ConfigError("--field-map is empty; write e.g. --field-map instruction=question,output=answer.")
    return check_field_map(mapping)


# -- detection and checks -------------------------------------------------------------------------------


def record_format(record: Any, field_map: Mapping[str, str]) -> Optional[str]:
    """The format of one raw record from its fields (None when it has none of them)."""
    if not isinstance(record, Mapping):
        return None
    if field_map.get("messages", "messages") in record:
        return "messages"
    if field_map.get("conversations", "conversations") in record:
        return "sharegpt"
    if field_map.get("instruction", "instruction") in record or field_map.get("output", "output") in record:
        return "alpaca"  # one of the two missing is a clear error of its own (`check_instruction_record`)
    if field_map.get("text", "text") in record:
        return "text"
    return None


def _fields_seen(record: Any) -> str:
    return f"fields {sorted(record)}" if isinstance(record, Mapping) else f"a JSON {type(record).__name__}"


def _check_turns(turns: Any, source: str, data_format: str, field_map: Mapping[str, str]) -> ConversationExample:
    """A messages / ShareGPT record's turns as a `ConversationExample`, or a `DataError` naming the record and turn."""
    name = lambda field: field_map.get(field, field)  # noqa: E731
    role_key, content_key = (name("role"), name("content")) if data_format == "messages" else (name("from"), name("value"))
    list_key = name("messages") if data_format == "messages" else name("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{source}: {list_key!r} must be a non-empty list of turns {{{role_key!r}, {content_key!r}}}, got "
                        f"{turns!r:.60}.")
    messages = []
    for index, turn in enumerate(turns):
        where = f"{source}: {list_key}[{index}]"
        if not isinstance(turn, Mapping) or role_key not in turn or content_key not in turn:
            raise DataError(f"{where} must be an object with {role_key!r} and {content_key!r}; it has {_fields_seen(turn)}.")
        role, content = turn[role_key], turn[content_key]
        roles = ROLES if data_format == "messages" else tuple(SHAREGPT_ROLES)
        if role not in roles:
            raise DataError(f"{where}: {role_key!r} is {role!r}; it must be one of {list(roles)}.")
        if not isinstance(content, str):
            raise DataError(f"{where}: {content_key!r} must be a string, got {type(content).__name__} ({content!r:.60}).")
        role = role if data_format == "messages" else SHAREGPT_ROLES[role]
        if role == "system" and index > 0:
            raise DataError(f"{where} is a system turn after the first turn; a conversation's system turn comes first.")
        messages.append({"role": role, "content": content})
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{source}: the conversation has no assistant turn, so nothing would be learned from it; "
                        "remove it or add the answer.")
    return ConversationExample(tuple(messages), source)


def _check_record(record: Any, source: str, data_format: str, field_map: Mapping[str, str]) -> Any:
    """One raw record of the detected format as its example, or a `DataError` naming it."""
    name = lambda field: field_map.get(field, field)  # noqa: E731
    if data_format == "alpaca":
        if field_map:
            record = {field: record[name(field)] for field in ("instruction", "input", "output") if name(field) in record}
        return check_instruction_record(record, source)
    if data_format == "text":
        text = record[name("text")]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}: {name('text')!r} must be a non-empty string, got {text!r:.60}.")
        return TextExample(text, source)
    return _check_turns(record[name(data_format if data_format == "messages" else "conversations")], source, data_format,
                        field_map)


# -- loading --------------------------------------------------------------------------------------------

DATA_FORMS = ("a .json (list of records) or .jsonl (one per line) file, a list of dicts, a datasets.Dataset, or a "
              "built-in data set")


def _raw_records(data: Any) -> tuple[list[tuple[Any, str]], str]:
    """The raw records of any supported source, each with where it came from, and the data set's name."""
    from ..builtin import builtin_names
    from ..builtin.chat_data import builtin_records

    builtin = builtin_names("instructions")
    if isinstance(data, (str, Path)) and str(data) in builtin:
        return [(record, f"{data} record {index}") for index, record in enumerate(builtin_records(str(data)))], str(data)
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise DataError(f"The data file {path} does not exist. Give {DATA_FORMS} ({', '.join(builtin)}).")
        if path.suffix not in (".json", ".jsonl"):
            raise DataError(f"{path}: training data must be a .json (list of records) or .jsonl (one record per line) file.")
        return read_records_file(path), str(path)
    if is_dataset(data) or isinstance(data, (list, tuple)):
        return [(record, f"record {index}") for index, record in enumerate(data)], f"the {type(data).__name__} of {len(data)} records"
    raise DataError(f"Cannot read training data from a {type(data).__name__}; give {DATA_FORMS} ({', '.join(builtin)}).")


def load_training_data(data: Any, field_map: Optional[Mapping[str, str]] = None,
                       filter_fn: Optional[Callable[[Any], bool]] = None, log: bool = True) -> TrainingData:
    """Read, detect and check causal-LM training records.

    A file that was checked whole before and has not changed since (the same sha256, kept under the tinypipe home)
    is not read again until its examples are used: a run whose tokens are cached starts without parsing it.

    Args:
        data: A `.json` file (a list of records), a `.jsonl` file (one record per line), a list of dicts, a
            `datasets.Dataset`, or a built-in data set (`"tinypipe/tiny-instructions"`, `"tinypipe/tiny-chats"`).
        field_map: `{standard name: your data's name}` for records whose fields are named otherwise, e.g.
            `{"instruction": "question", "output": "answer"}`; the standard names are `FIELD_NAMES`.
        filter_fn: Keeps only the examples it returns True for.
        log: Log the detected format (INFO).

    Returns:
        The `TrainingData`: its format and examples, in order.

    Raises:
        ConfigError: An unknown `field_map` key.
        DataError: A file that is missing or not JSON (naming the line), a record of no known format or of
            another format than the first (naming the record and the fields it has), a field of the wrong type,
            or no examples at all.

    Example:
        ```py
        >>> load_training_data([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]).format
        'messages'
        ```
    """
    field_map = check_field_map(field_map)
    # A file checked whole before, unchanged since (the same sha256): its records are read only if they are used.
    file_sha256 = checked = None
    if isinstance(data, (str, Path)) and Path(data).is_file() and filter_fn is None:
        from ..config.filelist import sha256_file

        file_sha256 = hashlib.sha256(f"{sha256_file(Path(data))} {json.dumps(field_map, sort_keys=True)}".encode()).hexdigest()
        checked = _checked_record(file_sha256)
    if checked is not None and checked.get("format") in DATA_FORMATS:
        if log:
            logger.info("Data: %s, %s %s records (checked before, unchanged).", data, checked.get("count"), checked["format"])
        return TrainingData(checked["format"], None, str(data), file_sha256,
                            load=lambda: _load_records(data, field_map, None, False, file_sha256).examples)
    return _load_records(data, field_map, filter_fn, log, file_sha256)


def _checked_record(file_sha256: str) -> Optional[dict]:
    """What an earlier full check of the file with this sha256 found (`{"format", "count"}`), or None."""
    from ..files import read_marker

    return read_marker(_checked_folder(), f"{file_sha256}.json")


def _checked_folder() -> Path:
    from ..files import tinypipe_home

    return tinypipe_home() / "tokenized" / "checked"


def _load_records(data: Any, field_map: dict, filter_fn: Optional[Callable[[Any], bool]], log: bool,
                  file_sha256: Optional[str]) -> TrainingData:
    """Read and check every record (see `load_training_data`)."""
    raw, name = _raw_records(data)
    if not raw:
        raise DataError(f"No records in {name}; the data set must hold at least one.")
    first_record, first_source = raw[0]
    data_format = record_format(first_record, field_map)
    mapped = f" (with field_map {field_map})" if field_map else ""
    known = "; ".join(f"{key} {description}" for key, description in _DESCRIPTIONS.items())
    if data_format is None:
        raise DataError(f"{first_source} is in no format tinypipe reads{mapped}: it has {_fields_seen(first_record)}. The "
                        f"formats are {known}. Map other field names with field_map / --field-map (e.g. instruction=question).")
    examples = []
    for record, source in raw:
        found = record_format(record, field_map)
        if found != data_format:
            what = f"is {found}" if found else "is in no known format"
            raise DataError(f"{source} {what}{mapped} ({_fields_seen(record)}), but {first_source} is {data_format} "
                            f"{_DESCRIPTIONS[data_format]}; every record of a data set must have the same format.")
        examples.append(_check_record(record, source, data_format, field_map))
    if filter_fn is not None:
        examples = [example for example in examples if filter_fn(example)]
    if not examples:
        raise DataError(f"No examples left in {name} after filter_fn; keep at least one.")
    if log:
        logger.info("Data: %s, %d %s records%s.", name, len(examples), data_format, mapped)
    if file_sha256 is not None:
        from ..files import write_marker

        _checked_folder().mkdir(parents=True, exist_ok=True)
        write_marker(_checked_folder(), f"{file_sha256}.json", {"format": data_format, "count": len(examples)})
    return TrainingData(data_format, examples, name, file_sha256)


def as_training_data(data: Union[TrainingData, Any], **options: Any) -> TrainingData:
    """`data` if it is already `TrainingData`, else `load_training_data(data, **options)`."""
    return data if isinstance(data, TrainingData) else load_training_data(data, **options)
