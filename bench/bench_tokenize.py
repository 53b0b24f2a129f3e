"""Benchmark: tokenizing an alpaca-size data set (52k records), and a second run's start from the tokenized cache.

1. Tokenization cost: tinypipe's `tokenize_training_data` (render, batched fast-tokenizer calls, loss masks) over a
   52,002-record file, against one batched fast-tokenizer call over the same rendered texts (prompt + response
   + `</s>`), on the built-in tiny-llama tokenizer. Target (issue 17): <= 1.2x.
2. Time to the first training step: `CausalLMTrainer.train` on the file, from the call to the first step's loss,
   in a fresh process, first with an empty tokenized cache, then again (the cache is read). Target: < 3 s.

The records are synthetic and built offline, with the lengths of Stanford Alpaca's: a 5-40 word instruction, an
input on 40% of them (5-60 words), a long-tailed 5-250 word response. `--format messages` writes the same records as
messages conversations (rendered with chatml) instead.

Usage: python bench/bench_tokenize.py [--records 52002] [--format alpaca|messages]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a of to and in is that for it as with was on be by this are from or an at which have not they you we "
         "can one all will there more would their what so about into write list give explain describe three words "
         "sentence example following simple data model learn answer question people time water energy city world "
         "school history science language computer health food plant animal music story reason result").split()


def make_records(count: int, seed: int = 0) -> list[dict]:
    """Alpaca records of realistic lengths, always the same for the same seed."""
    generator = random.Random(seed)

    def text(low: int, high: int) -> str:
        words = [generator.choice(WORDS) for _ in range(generator.randint(low, high))]
        return (" ".join(words) + ".").capitalize()

    records = []
    for _ in range(count):
        length = min(250, int(generator.paretovariate(1.2) * 12))  # long-tailed, as real responses are
        records.append({"instruction": text(5, 40), "input": text(5, 60) if generator.random() < 0.4 else "",
                        "output": text(5, max(5, length))})
    return records


def write_data(folder: Path, count: int, data_format: str) -> Path:
    records = make_records(count)
    if data_format == "messages":
        records = [{"messages": [{"role": "user", "content": record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")},
                                 {"role": "assistant", "content": record["output"]}]} for record in records]
    path = folder / f"data-{data_format}.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def tokenization_cost(path: Path) -> None:
    """Print tinypipe's tokenization time against one batched tokenizer call over the same rendered texts."""
    from tinypipe.builtin.tiny_llama import load_tiny_llama_tokenizer
    from tinypipe.data.chat_formats import load_training_data
    from tinypipe.data.chat_templates import prepare_tokenizer, render_conversations, resolve_chat_template
    from tinypipe.data.instructions import render_prompt
    from tinypipe.data.tokenization import tokenize_training_data

    tokenizer = load_tiny_llama_tokenizer()
    start = time.perf_counter()
    data = load_training_data(path, log=False)
    loaded = time.perf_counter() - start
    template = resolve_chat_template(None, data.format, tokenizer)
    prepare_tokenizer(tokenizer, template)
    start = time.perf_counter()
    tokenized = tokenize_training_data(data, tokenizer, template, max_length=2048, show_progress=True)
    ours = time.perf_counter() - start
    if data.format == "alpaca":
        texts = [tokenizer.bos_token + render_prompt(e.instruction, e.input) + e.output + tokenizer.eos_token for e in data.examples]
    else:
        texts = render_conversations([list(e.messages) for e in data.examples], tokenizer)
    start = time.perf_counter()
    reference = tokenizer(texts, add_special_tokens=False)["input_ids"]
    batched = time.perf_counter() - start
    tokens = sum(len(ids) for ids in reference)
    ours_tokens = sum(len(example.input_ids) for example in tokenized.examples)
    print(f"records: {len(data.examples)} ({data.format}), {tokens} tokens (tinypipe: {ours_tokens}); reading the file {loaded:.2f} s")
    print(f"tokenization: tinypipe {ours:.2f} s, one batched fast-tokenizer call {batched:.2f} s, ratio {ours / batched:.2f}x "
          "(target <= 1.2x)")


FIRST_STEP = """
import sys, time
start = time.perf_counter()
import tinypipe.training.causal_lm_steps as steps
from tinypipe.trainers.causal_lm import CausalLMTrainer
from tinypipe.models.causal_lm import CausalLMPipeline
pipeline = CausalLMPipeline("tinypipe/tiny-llama")
class FirstStep(Exception): pass
def first_step(model, batch):
    raise FirstStep
steps.summed_loss = first_step
called = time.perf_counter()
try:
    CausalLMTrainer().init_model(pipeline).train(data=sys.argv[1], max_length=512, checkpointing_steps=0, train_batch_size=8)
except FirstStep:
    print(f"{time.perf_counter() - called:.2f}")
"""


def time_to_first_step(path: Path, home: Path) -> float:
    """Seconds from `train()` to its first step, in a fresh process with `home` as the tinypipe home."""
    environment = dict(os.environ, TINYPIPE_HOME=str(home))
    result = subprocess.run([sys.executable, "-c", FIRST_STEP, str(path)], env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=52002)
    parser.add_argument("--format", choices=("alpaca", "messages"), default="alpaca")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tinypipe-bench-") as folder:
        folder = Path(folder)
        path = write_data(folder, arguments.records, arguments.format)
        tokenization_cost(path)
        first, second = time_to_first_step(path, folder / "home"), time_to_first_step(path, folder / "home")
        print(f"time to the first training step: first run {first:.2f} s, second run (tokens from the cache) {second:.2f} s "
              "(target < 3 s)")


if __name__ == "__main__":
    main()
