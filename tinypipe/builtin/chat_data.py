"""Built-in chat data that needs no download: `tinypipe/tiny-chats`, a few dozen conversations in the messages format.

```python
tiny_chats()[0]   # {"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", ...}]}
builtin_records("tinypipe/tiny-chats")   # the records of any built-in causal-LM data set
```

Single-turn questions, multi-turn conversations (a follow-up question that refers to the first answer) and
conversations that open with a system turn, so that chat fine-tuning, its loss mask and its templates run offline.
"""

from ..errors import ConfigError
from . import TINY_CHATS, TINY_INSTRUCTIONS

__all__ = ["TINY_CHATS", "tiny_chats", "builtin_records"]

_CAPITALS = (("France", "Paris", "the Seine"), ("Italy", "Rome", "the Tiber"), ("Spain", "Madrid", "the Manzanares"),
             ("Germany", "Berlin", "the Spree"), ("Japan", "Tokyo", "the Sumida"), ("Egypt", "Cairo", "the Nile"),
             ("Austria", "Vienna", "the Danube"), ("England", "London", "the Thames"))
_COLOURS = (("the sky on a clear day", "blue"), ("grass", "green"), ("snow", "white"), ("a ripe banana", "yellow"),
            ("a ripe tomato", "red"), ("coal", "black"))
_SUMS = ((2, 3), (4, 5), (7, 2), (6, 6), (9, 1), (3, 8))
_SYSTEM = "You are a helpful assistant. Answer in one short sentence."
_PIRATE = "You are a pirate. Answer like a pirate."


def _turns(*pairs: tuple, system: str = "") -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in pairs:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def tiny_chats() -> list[dict]:
    """The built-in chat data set `tinypipe/tiny-chats`: 32 messages records, always the same.

    8 two-turn conversations about capitals and their rivers (every other one with a system turn), 6 single-turn
    colour questions, 6 sums (with a system turn), 6 follow-ups on sums (two assistant turns), and 6 pirate greetings
    under a system turn. One answer is non-ASCII.

    Returns:
        A new list of `{"messages": [{"role": ..., "content": ...}, ...]}` dicts.

    Example:
        ```py
        >>> [message["role"] for message in tiny_chats()[1]["messages"]]
        ['system', 'user', 'assistant', 'user', 'assistant']
        ```
    """
    records = [_turns((f"What is the capital of {country}?", f"The capital of {country} is {city}."),
                      ("Which river flows through it?", f"{river[0].upper()}{river[1:]} flows through {city}."),
                      system=_SYSTEM if index % 2 else "")
               for index, (country, city, river) in enumerate(_CAPITALS)]
    records += [_turns((f"What color is {thing}?", f"It is {colour}.")) for thing, colour in _COLOURS]
    records += [_turns((f"What is {a} plus {b}?", f"{a} + {b} = {a + b}."), system=_SYSTEM) for a, b in _SUMS]
    records += [_turns((f"What is {a} plus {b}?", f"{a + b}."), ("And twice that?", f"{2 * (a + b)}.")) for a, b in _SUMS]
    greetings = ("Hello!", "Good morning.", "How are you?", "Who are you?", "Where is the ship?", "Say bonjour.")
    answers = ("Ahoy, matey!", "Arr, a fine mornin' it be.", "Shipshape, arr!", "I be the captain o' this ship.",
               "She be anchored in the bay, arr.", "Arr, bonjour, moussaillon! ☠")
    records += [_turns((greeting, answer), system=_PIRATE) for greeting, answer in zip(greetings, answers)]
    return records


def builtin_records(name: str) -> list[dict]:
    """The records of a built-in causal-LM data set (`"tinypipe/tiny-instructions"` or `"tinypipe/tiny-chats"`).

    Raises:
        ConfigError: `name` is not one of them.
    """
    if name == TINY_CHATS:
        return tiny_chats()
    if name == TINY_INSTRUCTIONS:
        from .tiny_llama import tiny_instructions

        return tiny_instructions()
    raise ConfigError(f"{name!r} is not a built-in causal-LM data set; they are {TINY_INSTRUCTIONS!r} and {TINY_CHATS!r}.")
