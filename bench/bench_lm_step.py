"""Benchmark: causal-LM LoRA training throughput (tokens/s) and peak RSS, tinypipe vs transformers `Trainer` + peft.

Both variants run in their own process on the same model, the same tokenized data (alpaca records whose
responses vary in length as real instruction data does), the same LoRA, optimizer, schedule, batch
size and number of epochs:
- `reference`: `transformers.Trainer` over a peft model, batches padded to their longest example by
  `DataCollatorForSeq2Seq`, in random order (its default).
- `tinypipe`: `CausalLMTrainer.train` with its defaults: the same random batches, each packed into as few
  rows as fit (`packing`), with no attention across examples, so little compute goes to padding while every
  step sees the same examples and loss as a padded batch.

tokens/s counts the real (non-padding) tokens of every epoch over the wall time of the training call
(model loading excluded for both). The final loss is the mean per-token loss of the trained model on
all training examples, computed the same way for both. Targets (issue 5): tinypipe >= 1.5x the
reference's tokens/s at the same final loss (+-5%), peak RSS no higher.

Models: `small` (a 4-layer Llama, hidden 256, random init, built-in tokenizer) and `tiny` (the built-in
`tinypipe/tiny-llama`).

Usage: python bench/bench_lm_step.py [--model small|tiny] [--examples 256] [--epochs 2] [--batch 8]
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
FILLER = ("The answer is clear and we can explain it well.", "This is a good question to ask.",
          "Many people learn this at school.", "We think about it in a simple way.", "Here is one more line of text.")


def build_model(name: str, folder: Path) -> str:
    """The benchmark's base model: the built-in name, or a larger random Llama written to `folder`."""
    from tinypipe.builtin.tiny_llama import TINY_LLAMA, load_tiny_llama_tokenizer

    if name == "tiny":
        return TINY_LLAMA
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tiny_llama_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                         num_attention_heads=8, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_records(count: int) -> list[dict]:
    """Alpaca records with a long-tailed response length (about 10 to 300 tokens), always the same."""
    from tinypipe.builtin.tiny_llama import tiny_instructions

    rng = random.Random(0)
    base = tiny_instructions()
    records = []
    for index in range(count):
        record = dict(base[index % len(base)])
        extra = min(int(rng.expovariate(1 / 5)), 25)
        record["output"] = " ".join([record["output"]] + [rng.choice(FILLER) for _ in range(extra)])
        records.append(record)
    return records


def run_variant(variant: str, model: str, examples: int, epochs: int, batch: int) -> dict:
    """Train one variant in this process; return its figures."""
    from tinypipe.models.causal_lm import CausalLMPipeline
    from tinypipe.trainers.causal_lm import CausalLMTrainer, evaluation_loss
    from tinypipe.data.instructions import load_instruction_examples, tokenize_examples

    torch.set_num_threads(2)
    records = make_records(examples)
    settings = dict(learning_rate=3e-3, lr_schedule="linear", warmup_steps=0, adam_weight_decay=0.0, max_grad_norm=1.0, seed=0)
    pipeline = CausalLMPipeline(model)
    tokenized = tokenize_examples(load_instruction_examples(records), pipeline.tokenizer, max_length=512)
    tokens = epochs * sum(len(example.input_ids) for example in tokenized)

    if variant == "tinypipe":
        trainer = CausalLMTrainer()
        trainer.init_model(pipeline)
        start = time.perf_counter()
        trainer.train(data=records, num_train_epochs=epochs, train_batch_size=batch, checkpointing_steps=0,
                      r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                      target_modules=LORA["target_modules"], **settings)
        seconds = time.perf_counter() - start
        model_for_loss = pipeline.model
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        dataset = [{"input_ids": example.input_ids, "attention_mask": [1] * len(example.input_ids), "labels": example.labels}
                   for example in tokenized]
        torch.manual_seed(0)
        peft_model = get_peft_model(pipeline.model, LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                                                                lora_dropout=LORA["lora_dropout"], target_modules=list(LORA["target_modules"])))
        arguments = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, num_train_epochs=epochs,
                                      learning_rate=settings["learning_rate"], lr_scheduler_type="linear", warmup_steps=0,
                                      weight_decay=0.0, max_grad_norm=1.0, seed=0, logging_steps=10_000, save_strategy="no",
                                      report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=peft_model, args=arguments, train_dataset=dataset,
                          data_collator=DataCollatorForSeq2Seq(pipeline.tokenizer, padding=True, label_pad_token_id=-100))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        model_for_loss = peft_model
    final_loss = evaluation_loss(model_for_loss, tokenized, pipeline.tokenizer.pad_token_id, batch)
    return {"variant": variant, "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
            "final_loss": final_loss, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--variant", choices=("tinypipe", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.variant:  # a child process: run one variant, print its figures as JSON
        print(json.dumps(run_variant(arguments.variant, arguments.base, arguments.examples, arguments.epochs, arguments.batch)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as folder:
        base = build_model(arguments.model, Path(folder) / "model")
        results = {}
        for variant in ("reference", "tinypipe"):
            command = [sys.executable, __file__, "--variant", variant, "--base", base, "--examples", str(arguments.examples),
                       "--epochs", str(arguments.epochs), "--batch", str(arguments.batch)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[variant] = json.loads(output.strip().splitlines()[-1])
    reference, ours = results["reference"], results["tinypipe"]
    print(f"model={arguments.model} examples={arguments.examples} epochs={arguments.epochs} batch={arguments.batch} "
          f"real tokens={ours['tokens']}")
    for result in (reference, ours):
        print(f"  {result['variant']:<10} {result['tokens_per_second']:9.0f} tokens/s  {result['seconds']:7.2f} s  "
              f"final loss {result['final_loss']:.4f}  peak RSS {result['peak_rss_mb']:.0f} MB")
    speedup = ours["tokens_per_second"] / reference["tokens_per_second"]
    loss_gap = abs(ours["final_loss"] - reference["final_loss"]) / reference["final_loss"]
    print(f"  speed-up {speedup:.2f}x (target >= 1.5x), final loss differs by {100 * loss_gap:.1f}% (target <= 5%), "
          f"peak RSS {ours['peak_rss_mb'] - reference['peak_rss_mb']:+.0f} MB (target <= 0)")


if __name__ == "__main__":
    main()
