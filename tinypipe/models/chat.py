"""Chat prompts: checking conversations and rendering them with the tokenizer's chat template for generation.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}` (the OpenAI /
transformers form). It is rendered exactly as a transformers user renders it,
`tokenizer.apply_chat_template(conversation, add_generation_prompt=True)`, so a model answers tinypipe's prompts as
it answers those of transformers' own pipelines and of servers that read the same template.

```python
conversations, single = check_conversations([{"role": "user", "content": "Hi!"}])
require_chat_template(tokenizer, "tinypipe/tiny-llama")          # ConfigError naming the fix when it has none
batch = encode_conversations(tokenizer, conversations)          # left-padded input ids and attention mask
```
"""

from collections.abc import Mapping, Sequence
from typing import Any, Union

from ..builtin import TINY_LLAMA_CHAT
from ..errors import ConfigError

__all__ = ["check_conversations", "encode_conversations", "instruction_conversations", "require_chat_template",
           "PROMPT_TEMPLATES"]

PROMPT_TEMPLATES = (None, "alpaca", "alpaca-lora")
"""The `chat_template` settings under which an instruction is rendered as the alpaca prompt text (no template, or one of
the alpaca ones); under any other (chatml, llama-3, the tokenizer's own, a Jinja template) it is a user turn of the
repo's chat template, as training rendered alpaca records."""

Conversation = list[dict[str, str]]


def _check_message(message: Any, where: str) -> dict[str, str]:
    if not isinstance(message, Mapping):
        raise ConfigError(f"{where} is a {type(message).__name__}; a message is a dict "
                          '{"role": "system"|"user"|"assistant", "content": "..."}.')
    missing = [key for key in ("role", "content") if key not in message]
    if missing:
        raise ConfigError(f"{where} has no {' and no '.join(repr(key) for key in missing)} (its keys: {sorted(message)}); "
                          'a message is {"role": "system"|"user"|"assistant", "content": "..."}.')
    for key in ("role", "content"):
        if not isinstance(message[key], str):
            raise ConfigError(f"{where}[{key!r}] is a {type(message[key]).__name__}; it must be a string.")
    return dict(message)


def check_conversations(messages: Any) -> tuple[list[Conversation], bool]:
    """Check one conversation (a list of messages) or a list of conversations.

    Args:
        messages: `[{"role": ..., "content": ...}, ...]`, or a list of such lists.

    Returns:
        `(conversations, single)`: the conversations as lists of plain dicts, and whether one conversation was given.

    Raises:
        ConfigError: Not a list, an empty conversation, or a message that is not a `{"role", "content"}` dict of
            strings (the message is named by its index).
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ConfigError(f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts (or a list of such "
                          f"lists), got {messages!r:.80}.")
    single = not isinstance(messages[0], Sequence) or isinstance(messages[0], str)
    conversations = [messages] if single else list(messages)
    checked = []
    for number, conversation in enumerate(conversations):
        name = "messages" if single else f"messages[{number}]"
        if not isinstance(conversation, Sequence) or isinstance(conversation, str) or not conversation:
            raise ConfigError(f"{name} must be a non-empty list of messages, got {conversation!r:.80}.")
        checked.append([_check_message(message, f"{name}[{index}]") for index, message in enumerate(conversation)])
    return checked, single


def instruction_conversations(instruction: Union[str, Sequence[str]], input: Union[str, Sequence[str]]) -> list[Conversation]:
    """Instructions (with their inputs) as one-turn conversations, as training renders alpaca records with a chat template
    (`data.chat_formats.alpaca_messages`: the input follows the instruction after a blank line).

    Raises:
        ConfigError: A different number of instructions and inputs.
    """
    from ..data.chat_formats import alpaca_messages
    from ..data.instructions import InstructionExample

    instructions = [instruction] if isinstance(instruction, str) else list(instruction)
    inputs = [input] * len(instructions) if isinstance(input, str) else list(input)
    if len(inputs) != len(instructions):
        raise ConfigError(f"generate() got {len(instructions)} instructions but {len(inputs)} inputs.")
    return [alpaca_messages(InstructionExample(text, context or "", ""), input_field=False)[:1]
            for text, context in zip(instructions, inputs)]


def require_chat_template(tokenizer: Any, model_name: str) -> None:
    """Refuse a tokenizer without a chat template, naming the fix.

    Raises:
        ConfigError: The tokenizer has no `chat_template`.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"The tokenizer of {model_name} has no chat template, so a conversation (messages=, --chat, --message) cannot "
            "be rendered. Train with a chat template (messages or ShareGPT data, or a named template such as 'chatml'), "
            f"which saves it into the repo, or start from a chat model such as {TINY_LLAMA_CHAT!r}; or pass a plain "
            "prompt or an instruction instead."
        )


def encode_conversations(tokenizer: Any, conversations: Sequence[Conversation]) -> Any:
    """The input ids and attention mask of conversations rendered for the assistant's next reply, padded on the left.

    The same as `tokenizer.apply_chat_template(conversations, add_generation_prompt=True)` (the template's own
    special tokens; no `<bos>` added on top).

    Returns:
        A `BatchEncoding` of `input_ids` and `attention_mask` tensors.

    Raises:
        ConfigError: The template refuses a conversation (one of the roles it has no turn for, say).
    """
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    try:
        return tokenizer.apply_chat_template(list(conversations), add_generation_prompt=True, tokenize=True, return_dict=True,
                                             padding=True, return_tensors="pt")
    except Exception as error:  # jinja2's TemplateError, or what the template itself raises (raise_exception)
        raise ConfigError(f"The chat template cannot render these messages ({type(error).__name__}: {error}); give the roles "
                          "and turns it expects.") from None
    finally:
        tokenizer.padding_side = padding_side
