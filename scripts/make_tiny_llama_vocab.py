"""Regenerate the tokenizer of `tinypipe/tiny-llama` shipped with tinypipe (`tokenizer.json`, `tokenizer_config.json`).

A byte-level BPE (GPT-2 style pre-tokenizer and decoder) learned with the `tokenizers` library on a small
corpus: the alpaca prompt templates, the built-in `tinypipe/tiny-instructions` records and a list of
common English words. The 256 byte symbols are always in the vocabulary, so any text encodes (never to
`<unk>`) and decodes back byte-exactly. Special tokens, with fixed ids: `<unk>` 0, `<s>` 1, `</s>` 2,
`<pad>` 3. Encoding adds `<s>` in front of each text. Run `python scripts/make_tiny_llama_vocab.py` to rewrite the files.
"""

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "tinypipe" / "builtin" / "vocab" / "tiny-llama"
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

TEMPLATES = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n\n\n### Input:\n\n\n### Response:",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n\n\n### Response:",
)

WORDS = """
the a an of to and in is it you that he was for on are with as I his they be at one have this from or had by
not word but what some we can out other were all there when up use your how said each she which do their time
if will way about many then them write would like so these her long make thing see him two has look more day
could go come did number sound no most people my over know water than call first who may down side been now
find any new work part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line differ turn cause
much mean before move right boy old too same tell does set three want air well also play small end put home
read hand port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father head stand
own page should country found answer school grow study still learn plant cover food sun four between state
keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late run
question answer response instruction input output task summarize explain list describe translate classify
yes what why how who when where which capital color number numbers sum plus minus equals true false
""".split()


def corpus() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from tinypipe.builtin.tiny_llama import tiny_instructions

    texts = list(TEMPLATES) * 50 + [" ".join(WORDS)] * 5 + [" " + word for word in WORDS] * 5
    for record in tiny_instructions():
        texts += [record["instruction"], record["input"], record["output"]] * 3
    return texts


def build() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos)]),
    ])
    return tokenizer


def main() -> None:
    tokenizer = build()
    tokenizer.save(str(FOLDER / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": 512,
        "pad_token": "<pad>",
        "padding_side": "right",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }
    (FOLDER / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    print(f"Wrote {FOLDER / 'tokenizer.json'} ({tokenizer.get_vocab_size()} tokens).")


if __name__ == "__main__":
    main()
