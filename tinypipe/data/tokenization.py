"""Tokenizing causal-LM training data in batches: token ids and the loss mask of every format, with a progress bar.

```python
data = load_training_data("chats.jsonl")
template = resolve_chat_template(None, data.format, tokenizer); prepare_tokenizer(tokenizer, template)
tokenized = tokenize_training_data(data, tokenizer, template, max_length=512, train_on_inputs=False)
tokenized.examples[0].labels    # -100 on system and user turns, the ids of every assistant turn and its end-of-turn token
```

What is learned (`labels` not -100), unless `train_on_inputs` learns every token:
- alpaca records with the `alpaca` / `alpaca-lora` templates: the response and `<eos>`; the prompt (with `<bos>`) and
  the response are tokenized separately, so the mask falls exactly on their boundary and generation from the
  prompt sees the tokens training saw (as before chat templates existed);
- conversations (and alpaca records with any other template): every assistant turn, up to and including its
  end-of-turn token, never a system or user turn. The conversation is rendered once with the chat template and
  tokenized as a whole (as `apply_chat_template(tokenize=True)` does); the characters of each assistant turn are
  found by rendering the conversation up to that turn with and without it (`add_generation_prompt` marks where
  the answer starts), and a token is learned when it overlaps them (the fast tokenizer's offsets);
- text records: every token, then `<eos>`.

An example longer than `max_length` keeps whole turns where it can: it is cut after the last assistant turn that
fits, and only a conversation whose first answer does not fit is cut inside a turn. The counts are logged.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from .chat_formats import ConversationExample, TrainingData, alpaca_messages
from .chat_templates import ChatTemplate, render_conversations
from .instructions import IGNORE_INDEX, InstructionExample, TokenizedExample, render_prompt

logger = logging.getLogger(__name__)

__all__ = ["TokenizedData", "tokenize_training_data", "assistant_spans", "log_truncation", "PROGRESS_MIN_EXAMPLES"]

PROGRESS_MIN_EXAMPLES = 2000
"""Data sets of at least this many examples show a progress bar while they are tokenized."""

_CHUNK = 1000  # examples per batched tokenizer call


@dataclass
class TokenizedData:
    """The tokenized examples of a data set, and what truncation cut.

    Args:
        examples: One `TokenizedExample` per example, in order.
        sources: Where each example came from (its record or line).
        truncated: How many examples were longer than `max_length`.
        turns_cut: Assistant turns dropped or cut short by truncation, over all examples.
        cut_inside_turn: Truncated examples whose first assistant turn (response) did not fit whole.
        truncated_sources: Where the first few truncated examples came from.
    """

    examples: Sequence[TokenizedExample]
    sources: list[str] = field(default_factory=list)
    truncated: int = 0
    turns_cut: int = 0
    cut_inside_turn: int = 0
    truncated_sources: list[str] = field(default_factory=list)


def _alpaca_separator(template: ChatTemplate) -> str:
    return "\n" if template.name == "alpaca-lora" else ""


def _tokenize_alpaca(examples: Sequence[InstructionExample], tokenizer: Any, template: ChatTemplate, max_length: int,
                     train_on_inputs: bool) -> list[TokenizedExample]:
    """Alpaca records with an alpaca template: prompt and response tokenized separately, in two batched calls."""
    separator = _alpaca_separator(template)
    prompts = tokenizer([render_prompt(example.instruction, example.input, separator) for example in examples],
                        add_special_tokens=True, verbose=False)["input_ids"]
    responses = tokenizer([example.output for example in examples], add_special_tokens=False, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    results = []
    for prompt_ids, response_ids in zip(prompts, responses):
        response_ids = response_ids + [eos]
        input_ids = prompt_ids + response_ids
        labels = (list(prompt_ids) if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)) + response_ids
        truncated = len(input_ids) > max_length
        results.append(TokenizedExample(input_ids[:max_length], labels[:max_length], min(len(prompt_ids), max_length),
                                        truncated, int(truncated), truncated))
    return results


def _tokenize_text(texts: Sequence[str], tokenizer: Any, max_length: int) -> list[TokenizedExample]:
    """Text records: every token learned, then `<eos>`."""
    eos = tokenizer.eos_token_id
    results = []
    for ids in tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]:
        ids = ids + [eos]
        results.append(TokenizedExample(ids[:max_length], list(ids[:max_length]), 0, len(ids) > max_length))
    return results


def assistant_spans(messages: Sequence[dict], text: str, prefixes: Sequence[str], turns: Sequence[str], source: str) -> list[tuple[int, int]]:
    """The character spans of the assistant turns in a rendered conversation, each with its end-of-turn marker.

    Args:
        messages: The conversation.
        text: The whole conversation rendered.
        prefixes: For each assistant turn, the conversation before it rendered with `add_generation_prompt=True`.
        turns: For each assistant turn, the conversation up to and including it rendered.
        source: The record, for the error message.

    Returns:
        `[(start, end), ...]`: from the first character of the answer to the end of the text the template puts after
        it before the next turn (its end-of-turn token), trailing whitespace excluded.

    Raises:
        DataError: The template renders a turn differently depending on what follows it, and the answer's text cannot
            be found in the rendered conversation either.
    """
    spans = []
    answers = [message["content"] for message in messages if message["role"] == "assistant"]
    cursor = 0
    for prefix, turn, answer in zip(prefixes, turns, answers):
        if text.startswith(turn) and turn.startswith(prefix) and len(prefix) >= cursor:
            start, end = len(prefix), len(turn.rstrip()) if turn.rstrip() else len(turn)
            spans.append((start, max(end, start + len(answer.rstrip()))))
            cursor = len(turn)
            continue
        # The template renders earlier turns differently once later ones follow: find the answer's own text.
        start = text.find(answer.strip(), cursor)
        if start < 0 or not answer.strip():
            raise DataError(f"{source}: cannot find assistant turn {len(spans) + 1} in the conversation as the chat template "
                            "renders it (the template changes earlier turns when later ones follow); use another template.")
        end = start + len(answer.strip())
        spans.append((start, end))
        cursor = end
    return spans


def _tokenize_conversations(conversations: Sequence[list[dict]], sources: Sequence[str], tokenizer: Any, max_length: int,
                            train_on_inputs: bool) -> list[TokenizedExample]:
    """Conversations: rendered with the chat template, tokenized whole; the assistant turns learned."""
    # 1. Render each conversation, and each prefix up to an assistant turn with and without that turn.
    prefix_requests, turn_requests, owners = [], [], []
    for index, messages in enumerate(conversations):
        for position, message in enumerate(messages):
            if message["role"] == "assistant":
                prefix_requests.append(messages[:position])
                turn_requests.append(messages[:position + 1])
                owners.append(index)
    owner_sources = [sources[index] for index in owners]
    prefixes = render_conversations(prefix_requests, tokenizer, add_generation_prompt=True, sources=owner_sources)
    turns = render_conversations(turn_requests, tokenizer, sources=owner_sources)
    # A conversation that ends with an assistant turn is rendered already: up to and including that turn.
    last_turn = {owner: turn for owner, turn in zip(owners, turns)}
    unfinished = [index for index, messages in enumerate(conversations) if messages[-1]["role"] != "assistant"]
    rendered = dict(zip(unfinished, render_conversations([conversations[index] for index in unfinished], tokenizer,
                                                         sources=[sources[index] for index in unfinished])))
    texts = [rendered[index] if index in rendered else last_turn[index] for index in range(len(conversations))]
    # 2. The characters of every assistant turn.
    per_example: list[tuple[list[str], list[str]]] = [([], []) for _ in conversations]
    for owner, prefix, turn in zip(owners, prefixes, turns):
        per_example[owner][0].append(prefix)
        per_example[owner][1].append(turn)
    spans = [assistant_spans(messages, text, *per_example[index], sources[index])
             for index, (messages, text) in enumerate(zip(conversations, texts))]
    # 3. Tokens, their characters, and what is learned; a too-long conversation keeps whole turns where it can.
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    results = []
    for ids, offsets, example_spans in zip(encoded["input_ids"], encoded["offset_mapping"], spans):
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        learned = np.zeros(len(ids), dtype=bool)
        for start, end in example_spans:
            learned |= (offsets[:, 1] > start) & (offsets[:, 0] < end)
        labels = list(ids) if train_on_inputs else np.where(learned, np.asarray(ids), IGNORE_INDEX).tolist()
        turn_ends = np.searchsorted(offsets[:, 0], [end for _, end in example_spans], side="left").tolist()
        length, turns_cut, inside = len(ids), 0, False
        if length > max_length:
            fitting = [end for end in turn_ends if end <= max_length]
            length = max(fitting) if fitting else max_length
            turns_cut = sum(1 for end in turn_ends if end > length)
            inside = not fitting
        first_learned = int(np.argmax(learned)) if learned.any() else len(ids)
        results.append(TokenizedExample(list(ids[:length]), labels[:length], min(first_learned, length), length < len(ids),
                                        turns_cut, inside))
    return results


def tokenize_training_data(data: TrainingData, tokenizer: Any, template: Optional[ChatTemplate], max_length: int,
                           train_on_inputs: bool = False, show_progress: Optional[bool] = None) -> TokenizedData:
    """Token ids and labels of every example, in batched fast-tokenizer calls, with a progress bar for large data.

    Args:
        data: The checked records (`load_training_data`).
        tokenizer: The tokenizer, with `template` set as its chat template (`prepare_tokenizer`).
        template: The run's template; None for text records.
        max_length: Longest example in tokens (see the module docstring for how longer ones are cut).
        train_on_inputs: Learn every token, not only the responses / assistant turns.
        show_progress: Show a progress bar; by default for data of `PROGRESS_MIN_EXAMPLES` examples or more.

    Returns:
        The `TokenizedData`.

    Raises:
        DataError: The template cannot render a conversation (naming the record).
    """
    examples = data.examples
    if data.format == "text":
        tokenize = lambda chunk: _tokenize_text([example.text for example in chunk], tokenizer, max_length)  # noqa: E731
    elif data.format == "alpaca" and template.is_alpaca:
        tokenize = lambda chunk: _tokenize_alpaca(chunk, tokenizer, template, max_length, train_on_inputs)  # noqa: E731
    else:
        def tokenize(chunk: Sequence[Any]) -> list[TokenizedExample]:
            conversations = [list(example.messages) if isinstance(example, ConversationExample)
                             else alpaca_messages(example, input_field=template.is_alpaca) for example in chunk]
            return _tokenize_conversations(conversations, [example.source for example in chunk], tokenizer, max_length,
                                           train_on_inputs)
    show = len(examples) >= PROGRESS_MIN_EXAMPLES if show_progress is None else show_progress
    results: list[TokenizedExample] = []
    with tqdm(total=len(examples), desc="Tokenizing", unit=" examples", disable=not show) as progress:
        for start in range(0, len(examples), _CHUNK):
            chunk = examples[start:start + _CHUNK]
            results += tokenize(chunk)
            progress.update(len(chunk))
    truncated = [index for index, result in enumerate(results) if result.truncated]
    return TokenizedData(results, [example.source for example in examples], len(truncated),
                         sum(results[index].turns_cut for index in truncated),
                         sum(results[index].cut_inside_turn for index in truncated),
                         [examples[index].source for index in truncated[:3]])


def log_truncation(tokenized: TokenizedData, max_length: int, what: str = "training") -> None:
    """Warn with the counts of what truncation to `max_length` cut (nothing when it cut nothing)."""
    if not tokenized.truncated:
        return
    cut = (f"; {tokenized.turns_cut} assistant turns were cut ({tokenized.cut_inside_turn} examples before the end of their "
           "first one, the others after their last whole turn)") if tokenized.turns_cut else ""
    logger.warning("%d of %d %s examples are longer than max_length=%d tokens and were truncated%s, e.g. %s. Raise max_length "
                   "or shorten them.", tokenized.truncated, len(tokenized.examples), what, max_length, cut,
                   ", ".join(tokenized.truncated_sources))
