"""Prompt templates for causal-LM training: the tokenizer's own chat template, named ones, or a custom Jinja template.

```python
template = resolve_chat_template("chatml", "messages", tokenizer)       # or None (the default), "tokenizer", Jinja, a file
prepare_tokenizer(tokenizer, template)      # sets tokenizer.chat_template; adds <|im_start|>, <|im_end|> if missing
text = render_messages(messages, tokenizer) # what transformers' apply_chat_template renders from the saved tokenizer
```

Every template is a Jinja chat template, as transformers runs it (`apply_chat_template`), so the template saved with
a repo renders prompts exactly as training did. The named templates:
- `alpaca`: Stanford Alpaca's prompt, byte for byte (`<bos>`, the prompt with or without `### Input:`, the
  response right after `### Response:`, `<eos>`); an alpaca record's `input` is a field of its user turn;
- `alpaca-lora`: the same, with a newline after `### Response:` (tloen/alpaca-lora's template);
- `chatml`: `<|im_start|>role\\ncontent<|im_end|>\\n` (Qwen, OpenAI); its two tokens are added to a tokenizer without them;
- `llama-3`: `<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>` after `<bos>` (Meta Llama 3).
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import ConfigError, DataError
from .instructions import ALPACA_PROMPT_NO_INPUT, ALPACA_PROMPT_WITH_INPUT

logger = logging.getLogger(__name__)

__all__ = ["CHAT_TEMPLATES", "ChatTemplate", "resolve_chat_template", "prepare_tokenizer", "render_messages",
           "render_conversations", "end_of_turn_ids"]


def _jinja_expression(template: str) -> str:
    """A `str.format` prompt with `{instruction}` / `{input}` as a Jinja expression over the user turn `message`."""
    fields = {"{instruction}": "message['content']", "{input}": "message['input']"}
    parts = re.split(r"(\{instruction\}|\{input\})", template)
    quoted = [fields[part] if part in fields else "'" + part.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
              for part in parts if part]
    return " + ".join(quoted)


def _alpaca_jinja(response_separator: str) -> str:
    """Stanford Alpaca's prompt as a Jinja chat template; `response_separator` follows `### Response:`."""
    with_input = _jinja_expression(ALPACA_PROMPT_WITH_INPUT + response_separator)
    no_input = _jinja_expression(ALPACA_PROMPT_NO_INPUT + response_separator)
    return (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ raise_exception('The alpaca templates have no system turn; use chatml, "
        "llama-3 or your own template for conversations with one.') }}"
        "{% elif message['role'] == 'user' %}"
        "{% if message['input'] is defined and message['input'] %}{{ " + with_input + " }}"
        "{% else %}{{ " + no_input + " }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    )


CHAT_TEMPLATES = {
    "alpaca": _alpaca_jinja(""),
    "alpaca-lora": _alpaca_jinja("\n"),
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama-3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
        "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
}
"""The named templates, as Jinja chat templates (see the module docstring)."""

_SPECIAL_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>"), "llama-3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
_END_OF_TURN = {"chatml": "<|im_end|>", "llama-3": "<|eot_id|>"}
# End-of-turn tokens of the chat templates models ship with (the tokenizer's own template ends turns with one of them).
_KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|end_of_text|>")


@dataclass(frozen=True)
class ChatTemplate:
    """The template a run renders its examples with.

    Args:
        name: A key of `CHAT_TEMPLATES`, `"tokenizer"` (the tokenizer's own template) or `"custom"`.
        source: The Jinja text.
        special_tokens: Tokens the template needs as single special tokens (added to a tokenizer that lacks them).
        end_of_turn: The token that ends an assistant turn (None: the tokenizer's end-of-sequence token).
        recorded: What the trainer records as its `chat_template` setting: the name, or the Jinja text.
    """

    name: str
    source: str
    special_tokens: tuple = ()
    end_of_turn: Optional[str] = None
    recorded: str = ""

    @property
    def is_alpaca(self) -> bool:
        """Whether this is one of the alpaca templates (an alpaca record's `input` stays a field of its user turn)."""
        return self.name in ("alpaca", "alpaca-lora")


def _tokenizer_template(tokenizer: Any) -> Optional[str]:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one renders conversations
        template = template.get("default")
    return template or None


def resolve_chat_template(choice: Optional[str], data_format: str, tokenizer: Any) -> Optional[ChatTemplate]:
    """The template a run uses, from the `chat_template` setting and the data's format.

    Args:
        choice: None (the default: `alpaca` for alpaca records, the tokenizer's own template for conversations, or
            `chatml` when it has none), `"tokenizer"`, a name in `CHAT_TEMPLATES`, a Jinja template, or the path of a
            file holding one.
        data_format: The data's format (`"alpaca"`, `"messages"`, `"sharegpt"`, `"text"`).
        tokenizer: The model's tokenizer.

    Returns:
        The `ChatTemplate`; None for text records, which are learned as they are.

    Raises:
        ConfigError: A template for text records, `"tokenizer"` with a tokenizer that has none, a file that cannot
            be read, or a name that is none of these.
    """
    if data_format == "text":
        if choice is not None:
            raise ConfigError(f"chat_template={choice!r}, but the data is text records ({{\"text\": ...}}), which are "
                              "learned as they are; leave chat_template unset, or give messages or alpaca records.")
        return None
    own = _tokenizer_template(tokenizer)
    if choice is None:
        choice = "alpaca" if data_format == "alpaca" else ("tokenizer" if own else "chatml")
    if choice == "tokenizer":
        if own is None:
            raise ConfigError("chat_template='tokenizer', but the tokenizer has no chat template; choose one of "
                              f"{sorted(CHAT_TEMPLATES)}, or give your own Jinja template.")
        end = next((token for token in _KNOWN_END_OF_TURN if token in own), None)
        return ChatTemplate("tokenizer", own, (), end, "tokenizer")
    if choice in CHAT_TEMPLATES:
        return ChatTemplate(choice, CHAT_TEMPLATES[choice], _SPECIAL_TOKENS.get(choice, ()), _END_OF_TURN.get(choice), choice)
    if "{{" in choice or "{%" in choice:
        return ChatTemplate("custom", choice, (), next((token for token in _KNOWN_END_OF_TURN if token in choice), None), choice)
    path = Path(choice)
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        if not path.is_file():
            raise ConfigError(f"chat_template {choice!r}: no such file. Give a Jinja template file, a Jinja template, "
                              f"'tokenizer', or one of {sorted(CHAT_TEMPLATES)}.")
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"chat_template file {path} cannot be read as UTF-8 text ({error}).") from None
        if "{{" not in source and "{%" not in source:
            raise ConfigError(f"chat_template file {path} holds no Jinja template ({{{{ ... }}}} / {{% ... %}}).")
        logger.info("Chat template: %s", path)
        return ChatTemplate("custom", source, (), next((token for token in _KNOWN_END_OF_TURN if token in source), None), source)
    raise ConfigError(f"chat_template={choice!r} is not a template tinypipe knows: use one of {sorted(CHAT_TEMPLATES)}, "
                      "'tokenizer' (the tokenizer's own), a Jinja template, or a .jinja file.")


def prepare_tokenizer(tokenizer: Any, template: ChatTemplate) -> list[str]:
    """Make `tokenizer` render with `template`: set its `chat_template` and add the template's missing special tokens.

    When tokens are added and the template ends assistant turns with its own token, that token becomes the
    end-of-sequence token, so generation stops at the end of a turn.

    Returns:
        The tokens added (the model's embeddings must grow to `len(tokenizer)`); empty when none were missing.
    """
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in template.special_tokens if token not in vocabulary]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if template.end_of_turn in missing:
            tokenizer.eos_token = template.end_of_turn
    tokenizer.chat_template = template.source
    return missing


def render_conversations(conversations: Sequence[Sequence[dict]], tokenizer: Any, add_generation_prompt: bool = False,
                         sources: Optional[Sequence[str]] = None) -> list[str]:
    """Render conversations with the tokenizer's chat template, as transformers' `apply_chat_template(tokenize=False)`.

    Raises:
        DataError: The template refuses a conversation (naming the record when `sources` are given).
    """
    if not conversations:
        return []
    try:
        rendered = tokenizer.apply_chat_template([list(conversation) for conversation in conversations], tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
    except Exception as error:  # jinja2's TemplateError, or what the template raises for a conversation it refuses
        if sources is not None and len(conversations) > 1:
            for conversation, source in zip(conversations, sources):
                render_conversations([conversation], tokenizer, add_generation_prompt, [source])
        where = f"{sources[0]}: " if sources else ""
        raise DataError(f"{where}the chat template cannot render this conversation ({type(error).__name__}: {error}).") from None
    return [rendered] if isinstance(rendered, str) else list(rendered)


def render_messages(messages: Sequence[dict], tokenizer: Any, add_generation_prompt: bool = False) -> str:
    """One conversation rendered with the tokenizer's chat template (what training and transformers render)."""
    return render_conversations([messages], tokenizer, add_generation_prompt)[0]


def end_of_turn_ids(tokenizer: Any, template: Optional[ChatTemplate]) -> set[int]:
    """The ids that end an assistant turn: the end-of-sequence token and the template's end-of-turn token."""
    ids = {tokenizer.eos_token_id}
    if template is not None and template.end_of_turn is not None:
        token_id = tokenizer.convert_tokens_to_ids(template.end_of_turn)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids
