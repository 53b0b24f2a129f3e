"""Regenerate the tiny T5 tokenizer shipped with tinypipe for `tinypipe/tiny-flux` (`vocab/t5/`).

The tokenizer has T5's layout, so `transformers.T5TokenizerFast.from_pretrained` reads it as it reads any T5
tokenizer folder that has a `tokenizer.json`: a unigram model (what SentencePiece trains for T5) with
`<pad>` 0, `</s>` 1, `<unk>` 2, T5's pre-tokenizer (split on whitespace, `▁` marks a word start) and `</s>`
appended to every text. It is written here by hand rather than trained, so that it depends on nothing but
these lists:

1. one piece `▁<word>` per prompt word of the shipped CLIP vocabulary (`make_clip_vocab.WORDS`), so each
   encodes to one id;
2. `▁` and every printable ASCII character as single pieces, scored far lower, so any other ASCII word still
   encodes, character by character (other characters become `<unk>`, as in T5).

No `<extra_id_N>` sentinels (T5's span-corruption tokens; an encoder-only text encoder never needs them).
Run `python scripts/make_t5_vocab.py` to rewrite the files; the output is byte-identical every time.
"""

import importlib.util
import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "tinypipe" / "builtin" / "vocab" / "t5"
MODEL_MAX_LENGTH = 512
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2
WORD_SCORE = -3.0
CHARACTER_SCORE = -10.0


def prompt_words() -> list[str]:
    """The prompt words of the shipped CLIP vocabulary, in their order, without repeats."""
    spec = importlib.util.spec_from_file_location("make_clip_vocab", Path(__file__).resolve().parent / "make_clip_vocab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(dict.fromkeys(module.WORDS))


def build() -> Tokenizer:
    """The unigram tokenizer: special tokens, whole prompt words, then single characters."""
    pieces = [(token, 0.0) for token in SPECIAL_TOKENS] + [("▁", CHARACTER_SCORE)]
    pieces += [("▁" + word, WORD_SCORE) for word in prompt_words()]
    pieces += [(character, CHARACTER_SCORE) for character in string.ascii_letters + string.digits + string.punctuation]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    end = SPECIAL_TOKENS.index("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                             special_tokens=[("</s>", end)])
    return tokenizer


def write_files(folder: Path) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    build().save(str(folder / "tokenizer.json"))
    config = {
        "eos_token": "</s>",
        "extra_ids": 0,
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<pad>",
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_files(FOLDER)
    print(f"Wrote {FOLDER / 'tokenizer.json'} ({build().get_vocab_size()} tokens).")
