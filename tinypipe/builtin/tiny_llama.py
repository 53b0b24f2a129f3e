"""Built-in causal-LM model and data that need no download: a tiny Llama and a tiny instruction data set.

`tinypipe/tiny-llama` is a 2-layer Llama (hidden size 64) with a byte-level BPE tokenizer of about 1k
tokens. Its weights are a seeded random initialisation, the same on every call, so it has learned
nothing: it exists so that tests, the demo and smoke runs fine-tune a real transformers Llama offline
in seconds. The tokenizer is built from `tinypipe/builtin/vocab/tiny-llama/tokenizer.json` (see
`scripts/make_tiny_llama_vocab.py`): any text encodes (byte by byte when no merge applies, never to `<unk>`), and
the pad token `<pad>` is distinct from the end-of-sequence token `</s>`.

`tinypipe/tiny-llama-chat` is its chat variant: the same vocabulary plus the chatml tokens `<|im_start|>` and
`<|im_end|>` (the end-of-sequence token, so generation stops at the end of a turn), the chatml chat template
(`CHATML_CHAT_TEMPLATE`) and no `<s>` in front of a text (the template holds every special token), and a model of the
same shape drawn from the same seed for that vocabulary. It is what chat fine-tuning starts from offline.

`tinypipe/tiny-instructions` is a small alpaca-style instruction data set (`tiny_instructions()`):
records `{"instruction", "input", "output"}`, some with an input and some without.

Each name is accepted wherever a model id or a data set is: `CausalLMPipeline("tinypipe/tiny-llama-chat")`,
`trainer.train(data="tinypipe/tiny-instructions")`, `AutoModelPipeline.from_pretrained(cache, "tinypipe/tiny-llama")`.
"""

from pathlib import Path

import torch
import transformers

from ..errors import ConfigError
from ..library_output import quiet_libraries
from . import TINY_INSTRUCTIONS, TINY_LLAMA, TINY_LLAMA_CHAT, cached_builtin_folder, is_builtin

__all__ = [
    "TINY_LLAMA",
    "TINY_LLAMA_CHAT",
    "TINY_INSTRUCTIONS",
    "TINY_LLAMA_VOCAB_FOLDER",
    "CHATML_CHAT_TEMPLATE",
    "build_tiny_llama",
    "builtin_lm_folder",
    "is_builtin_lm",
    "load_tiny_llama_chat_tokenizer",
    "load_tiny_llama_tokenizer",
    "tiny_instructions",
]

TINY_LLAMA_VOCAB_FOLDER = Path(__file__).resolve().parent / "vocab" / "tiny-llama"
"""The shipped tokenizer files of `tinypipe/tiny-llama`: `tokenizer.json`, `tokenizer_config.json`."""

TINY_LLAMA_MAX_LENGTH = 512
"""The longest sequence `tinypipe/tiny-llama` handles (its position embeddings)."""

CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The chatml chat template (OpenAI's ChatML, as Qwen's models use it): each turn is
`<|im_start|>{role}\\n{content}<|im_end|>\\n`, and the generation prompt is `<|im_start|>assistant\\n`."""

# Bump when `build_tiny_llama` or a tokenizer changes, so that folders cached by `builtin_lm_folder` are rebuilt.
_BUILTIN_FORMAT_VERSION = 2

_CAPITALS = (("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
             ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Canada", "Ottawa"))
_OPPOSITES = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("light", "dark"),
              ("happy", "sad"), ("early", "late"), ("open", "closed"))
_SUMS = ((2, 3), (4, 5), (1, 6), (7, 2), (3, 3), (8, 1), (5, 4), (6, 2))
_FRENCH = (("cat", "chat"), ("dog", "chien"), ("water", "eau"), ("tree", "arbre"), ("school", "école"), ("brother", "frère"))
_FACTS = (
    ("What color is the sky on a clear day?", "The sky is blue."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Name a fruit that is yellow.", "A banana is yellow."),
    ("What do bees make?", "Bees make honey."),
    ("Say hello in Spanish.", "¡Hola!"),
    ("Give one word for a baby cat.", "Kitten."),
    ("Which planet is known as the red planet?", "Mars is the red planet."),
    ("What is frozen water called?", "Frozen water is called ice."),
)


def tiny_instructions() -> list[dict[str, str]]:
    """The built-in instruction data set `tinypipe/tiny-instructions`: 40 alpaca records, always the same.

    Capitals and facts have no input (`"input": ""`); sums, opposites and French words have one. Some
    outputs are non-ASCII (`"école"`, `"¡Hola!"`).

    Returns:
        A new list of `{"instruction": str, "input": str, "output": str}` dicts.

    Example:
        ```py
        >>> tiny_instructions()[0]
        {'instruction': 'What is the capital of France?', 'input': '', 'output': 'The capital of France is Paris.'}
        ```
    """
    records = [{"instruction": f"What is the capital of {country}?", "input": "", "output": f"The capital of {country} is {city}."}
               for country, city in _CAPITALS]
    records += [{"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": f"{a} + {b} = {a + b}."} for a, b in _SUMS]
    records += [{"instruction": "Give the opposite of the word.", "input": word, "output": f"The opposite of {word} is {opposite}."}
                for word, opposite in _OPPOSITES]
    records += [{"instruction": "Translate the word into French.", "input": word, "output": french} for word, french in _FRENCH]
    records += [{"instruction": question, "input": "", "output": answer} for question, answer in _FACTS]
    return records


def load_tiny_llama_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Load the tokenizer of `tinypipe/tiny-llama` from the files tinypipe ships.

    Returns:
        A `transformers.PreTrainedTokenizerFast` that adds `<s>` in front of each text; `</s>` is the
        end-of-sequence token and `<pad>` the (distinct) padding token.

    Example:
        ```py
        >>> tokenizer = load_tiny_llama_tokenizer()
        >>> tokenizer.decode(tokenizer("école")["input_ids"], skip_special_tokens=True)
        'école'
        ```
    """
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(TINY_LLAMA_VOCAB_FOLDER / "tokenizer.json"),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=TINY_LLAMA_MAX_LENGTH, padding_side="right",
    )


def load_tiny_llama_chat_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Load the tokenizer of `tinypipe/tiny-llama-chat`: the tiny Llama's vocabulary with chatml tokens and template.

    Returns:
        A `transformers.PreTrainedTokenizerFast` whose ids 0-1023 are those of `load_tiny_llama_tokenizer()`, followed
        by the special tokens `<|im_start|>` and `<|im_end|>`; `<|im_end|>` is the end-of-sequence token, `<pad>` the
        padding token, `chat_template` is `CHATML_CHAT_TEMPLATE`, and no `<s>` is added in front of a text.

    Example:
        ```py
        >>> tokenizer = load_tiny_llama_chat_tokenizer()
        >>> tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        ```
    """
    from tokenizers import AddedToken, Tokenizer, processors

    backend = Tokenizer.from_file(str(TINY_LLAMA_VOCAB_FOLDER / "tokenizer.json"))
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # the chat template writes every special token
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in ("<|im_start|>", "<|im_end|>")])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=TINY_LLAMA_MAX_LENGTH, padding_side="right",
    )
    tokenizer.chat_template = CHATML_CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(tokenizer: "transformers.PreTrainedTokenizerBase | None" = None) -> transformers.LlamaForCausalLM:
    """Build the `tinypipe/tiny-llama` model: a fresh object on every call, with the same weights on every call.

    A `LlamaForCausalLM` with 2 layers, hidden size 64, 4 attention heads, MLP size 128 and untied
    input/output embeddings, initialised from seed 0 (the caller's RNG state is left untouched); the
    output head is drawn with standard deviation 0.2 rather than 0.02, so that LoRA on the layers below
    can make its predictions confident.

    Args:
        tokenizer: The tokenizer whose vocabulary and special tokens the model uses; defaults to
            `load_tiny_llama_tokenizer()`.

    Returns:
        The model, on the CPU, in float32, in eval mode.

    Example:
        ```py
        >>> model = build_tiny_llama()
        >>> model.config.num_hidden_layers
        2
        ```
    """
    tokenizer = tokenizer or load_tiny_llama_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=TINY_LLAMA_MAX_LENGTH,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        # After the final RMSNorm the hidden state has a fixed norm, so with the usual 0.02 initialisation
        # the output head could never give a confident prediction; a 10x larger head can.
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 0.2)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def is_builtin_lm(name: str) -> bool:
    """Whether `name` names a built-in causal LM (`TINY_LLAMA`, `TINY_LLAMA_CHAT`) rather than a folder or hub repo."""
    return is_builtin(name, "causal-lm")


def builtin_lm_folder(name: str = TINY_LLAMA) -> Path:
    """Save a built-in causal LM once as a regular transformers folder and return that folder.

    The folder (`config.json`, `generation_config.json`, `model.safetensors`, `tokenizer.json`,
    `tokenizer_config.json`) loads unchanged with `transformers.AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained`. It is cached under `tinypipe_home() / "builtin"`, rebuilt only when the
    torch or transformers version or the shipped tokenizer changes, and written into a temporary sibling
    that is renamed into place, so a crash or a concurrent writer never leaves a half-written folder in use.

    Args:
        name: A built-in causal-LM name (`TINY_LLAMA`, `TINY_LLAMA_CHAT`).

    Returns:
        The folder.

    Raises:
        ConfigError: `name` is not a built-in causal LM.
    """
    if not is_builtin_lm(name):
        raise ConfigError(f"{name!r} is not a built-in causal LM; the built-in ones are {TINY_LLAMA!r} and {TINY_LLAMA_CHAT!r}.")
    load_tokenizer = load_tiny_llama_chat_tokenizer if name == TINY_LLAMA_CHAT else load_tiny_llama_tokenizer

    def build(staging: Path) -> None:
        tokenizer = load_tokenizer()
        with quiet_libraries("transformers", notices=False):  # the bars show under --log-level DEBUG
            build_tiny_llama(tokenizer).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return cached_builtin_folder(name, build, format_version=_BUILTIN_FORMAT_VERSION, libraries=("torch", "transformers"),
                                 shipped={"tokenizer_sha256": TINY_LLAMA_VOCAB_FOLDER / "tokenizer.json",
                                          "builder_sha256": Path(__file__)})  # this module: the shapes, seeds, templates
