"""Regenerate the tiny CLIP vocabulary shipped with tinypipe (`vocab.json`, `merges.txt`, tokenizer configs).

The files use CLIP's byte-level BPE layout, so `transformers.CLIPTokenizer.from_pretrained` reads them as it
reads any CLIP tokenizer folder:

1. the 256 byte-unicode symbols, in CLIP's `bytes_to_unicode` order;
2. the same 256 symbols with the end-of-word suffix `</w>`;
3. one token per merge, in merge order;
4. the special tokens `<|startoftext|>` and `<|endoftext|>`.

The merges are learned by plain BPE on `WORDS` and learning stops only once every word is a single token,
so each of these prompt words encodes to one id. Any other text still encodes (byte by byte, never to
`unk`). The output is deterministic: run `python scripts/make_clip_vocab.py` and the files come out byte-identical.
"""

import json
import re
from collections import Counter
from pathlib import Path

END_OF_WORD = "</w>"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# Words that should be one token each: prompt scaffolding, the DreamBooth identifier `sks`, class nouns,
# colours, shapes and styles. Keep it lower-case letters only (the tokenizer lower-cases its input).
WORDS = """
a an the of in on with and or at by for from to is are this that its it as
photo photograph picture image drawing painting sketch illustration render style art artwork portrait
closeup close up view shot scene background foreground detail detailed high quality best highly realistic
photorealistic cinematic lighting light dark bright soft sharp blurry simple plain small large big tiny huge
sks dog dogs cat cats person people man woman men women boy girl child baby face hair eyes
bird horse cow sheep fish bear rabbit fox lion tiger car truck bus bike train boat plane house building
tree trees flower flowers grass sky cloud clouds sun moon mountain river lake sea beach forest city street
road table chair cup bottle book toy toys ball shoe hat bag robot castle garden
red green blue yellow white black orange purple pink brown gray grey gold silver colorful color colors
circle square triangle star rectangle shape shapes round line lines dot dots pattern
oil watercolor pencil ink cartoon anime digital pixel abstract vintage modern minimal
standing sitting running walking lying flying holding wearing looking
left right top bottom center middle front back side inside outside near under over
one two three four five many some
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(code) for code in characters]))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges on `words` (each counted once) until every word is a single symbol.

    The most frequent adjacent pair is merged first; ties go to the alphabetically smallest pair, so the
    result depends on nothing but the word list.
    """
    segmentations = [list(word[:-1]) + [word[-1] + END_OF_WORD] for word in words]
    merges: list[tuple[str, str]] = []
    while any(len(symbols) > 1 for symbols in segmentations):
        pair_counts: Counter[tuple[str, str]] = Counter()
        for symbols in segmentations:
            pair_counts.update(zip(symbols, symbols[1:]))
        best_count = max(pair_counts.values())
        pair = min(candidate for candidate, count in pair_counts.items() if count == best_count)
        merges.append(pair)
        for index, symbols in enumerate(segmentations):
            merged: list[str] = []
            position = 0
            while position < len(symbols):
                if position + 1 < len(symbols) and (symbols[position], symbols[position + 1]) == pair:
                    merged.append(symbols[position] + symbols[position + 1])
                    position += 2
                else:
                    merged.append(symbols[position])
                    position += 1
            segmentations[index] = merged
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Lay the vocabulary out as CLIP does: bytes, bytes + `</w>`, merged tokens, special tokens."""
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + END_OF_WORD for symbol in byte_symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    if len(set(tokens)) != len(tokens):
        raise ValueError("Two merges produce the same token; the word list yields an invalid vocabulary.")
    return {token: index for index, token in enumerate(tokens)}


def write_files(folder: Path) -> None:
    """Write `vocab.json`, `merges.txt`, `tokenizer_config.json` and `special_tokens_map.json` into `folder`."""
    words = sorted(set(WORDS))
    bad = [word for word in words if not re.fullmatch(r"[a-z]+", word)]
    if bad:
        raise ValueError(f"WORDS may hold lower-case ASCII letters only; fix or remove {bad}.")
    merges = learn_merges(words)
    vocab = build_vocab(merges)

    (folder / "vocab.json").write_text(json.dumps(vocab, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    special_tokens = {"bos_token": START_OF_TEXT, "eos_token": END_OF_TEXT, "pad_token": END_OF_TEXT}
    special_tokens["unk_token"] = END_OF_TEXT
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        **special_tokens,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2, sort_keys=True) + "\n")
    print(f"Wrote {len(vocab)} tokens and {len(merges)} merges for {len(words)} words to {folder}.")


def check_files(folder: Path) -> None:
    """Load the folder with `transformers.CLIPTokenizer` and check every word of `WORDS` is one token."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder)
    split = [word for word in sorted(set(WORDS)) if len(tokenizer.tokenize(word)) != 1]
    if split:
        raise ValueError(f"These words do not encode to one token: {split}.")
    if tokenizer.model_max_length != MODEL_MAX_LENGTH:
        raise ValueError(f"model_max_length is {tokenizer.model_max_length}, expected {MODEL_MAX_LENGTH}.")
    print(f"Checked: every word is one token; vocabulary size {len(tokenizer)}.")


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1] / "tinypipe" / "builtin" / "vocab" / "clip"
    write_files(here)
    check_files(here)
