"""The peer of `tinypipe train-lm` in bench/bench_jobs.py: what a user writes with transformers' Trainer and peft.

Alpaca records rendered with Stanford Alpaca's prompt (the text tinypipe's `alpaca` template renders), the prompt
masked out of the labels, a LoRA (rank 8, alpha 16, dropout 0.05) on the attention projections, AdamW with a constant
learning rate, padding to the longest record of each batch, no evaluation, one save at the end.

Usage: python lm_trainer_peft.py MODEL_FOLDER RECORDS_JSON OUTPUT --steps N [--batch 4] [--max-length 512] [--lr 3e-4]
"""

import argparse
import json

import torch
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments)

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("records")
    parser.add_argument("output")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with open(args.records, encoding="utf-8") as file:
        records = json.load(file)
    examples = []
    for record in records:
        template = PROMPT_WITH_INPUT if record.get("input") else PROMPT_NO_INPUT
        prompt = template.format(instruction=record["instruction"], input=record.get("input", ""))
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        full_ids = tokenizer(prompt + record["output"], add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        full_ids = full_ids[:args.max_length]
        labels = [-100] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids):]
        examples.append({"input_ids": full_ids, "attention_mask": [1] * len(full_ids), "labels": labels})

    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    training_args = TrainingArguments(
        output_dir=args.output, max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to=[], seed=0, use_cpu=True, disable_tqdm=False, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=examples,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
    trainer.train()
    model.save_pretrained(args.output)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tail = losses[-max(1, len(losses) // 10):]  # the last tenth of the steps: one batch's loss is noise
    print(f"final loss={sum(tail) / len(tail):.4f}" if tail else "final loss=nan", flush=True)


if __name__ == "__main__":
    main()
