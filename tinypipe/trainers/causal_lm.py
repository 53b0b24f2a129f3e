"""`CausalLMTrainer`: fine-tune a causal language model with a PEFT LoRA adapter on alpaca instruction data.

```python
from tinypipe.trainers import CausalLMTrainConfig, finetune

train_config = CausalLMTrainConfig(base_model="tinypipe/tiny-llama", data="tinypipe/tiny-instructions", output_dir="out")
train_config.update_config({"learning_rate": 5e-4, "batch_size": 32})   # unknown keys are refused
pipeline = finetune(train_config=train_config)
pipeline.generate(instruction="What is the capital of France?")
```

`out/` is then a repo: `model/` (the adapter in PEFT's format), `trainer/` (this trainer with the effective
arguments of the run, so `AutoTrainerPipeline.from_pretrained("out").train()` re-runs it), `metrics.json`
(train and eval loss per epoch) and `checkpoints/`.

Each record is rendered with the alpaca template; prompt tokens are masked with -100 unless
`train_on_inputs`, and `<eos>` is appended and learned. The examples of each batch are packed into as
few rows as fit (`packing`), with no attention across examples, so little compute goes to padding while
every step sees the same examples and loss as a padded batch would.
"""

import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import (
    BaseArgsFromConfig,
    FromConfig,
    Ignore,
    TrainerConfigMixin,
    copy_signature,
    save_config,
    set_from_config,
)
from ..errors import ConfigError, TrainingError
from ..builtin.tiny_llama import TINY_LLAMA
from ..models.causal_lm import ATTENTION_PROJECTIONS, CausalLMPipeline
from ..training.checkpoints import load_checkpoint, restore_trainable, save_checkpoint
from ..training.resume import batches_to_run, epochs_to_run
from ..training.optim import (
    check_finite_loss,
    make_accelerator,
    make_lr_scheduler,
    make_optimizer,
    no_sync_unless,
    prepare_for_training,
    runs_8bit_adam,
    seed_everything,
)
from ..training.run_fingerprint import checkpoint_to_resume, content_digest, run_fingerprint
from ..training.settings import check_existing_lora, check_training_settings, log_resolved_steps
from ..data.instructions import (
    IGNORE_INDEX,
    TokenizedExample,
    collate,
    length_grouped_batches,
    load_instruction_examples,
    pack,
    render_loss_mask,
    tokenize_examples,
)

logger = logging.getLogger(__name__)

__all__ = ["CausalLMTrainer", "CausalLMTrainConfig", "finetune", "evaluation_loss"]


class CausalLMTrainer(TrainerConfigMixin):
    """Fine-tunes a `CausalLMPipeline` with a PEFT LoRA adapter on instruction data.

    Every hyperparameter is a `FromConfig` argument of `train`: give it at call time, or in the
    `train_config` given to the constructor (`CausalLMTrainer(train_config=CausalLMTrainConfig(...))`).

    Example:
    ```python
    trainer = CausalLMTrainer(train_config=CausalLMTrainConfig(learning_rate=3e-4, num_train_epochs=3))
    trainer.init_model(CausalLMPipeline("tinypipe/tiny-llama"))
    pipeline = trainer.train(data="alpaca_data.json", output_dir="out")
    ```
    """

    @save_config
    def __init__(self):
        self.model: Optional[CausalLMPipeline] = None
        self.metrics: list[dict[str, Any]] = []

    def init_model(self, model: Any) -> "CausalLMTrainer":
        """Set the pipeline to fine-tune: a `CausalLMPipeline`, or a base model id / folder / built-in name."""
        self.model = model if isinstance(model, CausalLMPipeline) else CausalLMPipeline(str(model))
        return self

    @set_from_config(aliases={"epoch": "num_train_epochs", "batch_size": "train_batch_size"})
    def train(
        self,
        data: FromConfig = None,
        filter_fn: Ignore = None,
        base_model: FromConfig = TINY_LLAMA,
        revision: FromConfig = None,
        validation_data: FromConfig = None,
        validation_split: FromConfig = 0.0,
        validation_epochs: FromConfig = 1,
        max_length: FromConfig = 512,
        train_on_inputs: FromConfig = False,
        packing: FromConfig = True,
        group_by_length: FromConfig = False,
        num_train_epochs: FromConfig = 3,
        epoch: FromConfig = None,
        max_train_steps: FromConfig = None,
        train_batch_size: FromConfig = 4,
        batch_size: FromConfig = None,
        gradient_accumulation_steps: FromConfig = 1,
        learning_rate: FromConfig = 3e-4,
        scale_lr: FromConfig = False,
        lr_schedule: FromConfig = "linear",
        warmup_steps: FromConfig = 0,
        lr_num_cycles: FromConfig = 1,
        lr_power: FromConfig = 1.0,
        use_8bit_adam: FromConfig = False,
        adam_beta1: FromConfig = 0.9,
        adam_beta2: FromConfig = 0.999,
        adam_weight_decay: FromConfig = 0.0,
        adam_epsilon: FromConfig = 1e-8,
        max_grad_norm: FromConfig = 1.0,
        r: FromConfig = None,
        lora_alpha: FromConfig = None,
        lora_dropout: FromConfig = None,
        target_modules: FromConfig = None,
        quantization: FromConfig = None,
        mixed_precision: FromConfig = "no",
        gradient_checkpointing: FromConfig = False,
        seed: FromConfig = 0,
        checkpointing_steps: FromConfig = 500,
        checkpoints_total_limit: FromConfig = None,
        resume_from_checkpoint: FromConfig = None,
        output_dir: FromConfig = None,
    ) -> CausalLMPipeline:
        """Fine-tune the pipeline on `data` and return it (with its LoRA adapter trained).

        Args:
            data: Alpaca records: a `.json` list or `.jsonl` file, a list of dicts, a `datasets.Dataset`,
                or the built-in `"tinypipe/tiny-instructions"`.
            filter_fn: Keeps the `InstructionExample`s it returns True for (the preprocessing filter).
            base_model: Base model used when `init_model` was not called (hub id, folder or built-in name).
            revision: Hub revision of `base_model`.
            validation_data: Records to compute the eval loss on (same forms as `data`).
            validation_split: Instead, hold out this fraction of `data` (seeded) for the eval loss; 0 for none.
            validation_epochs: Compute the eval loss every this many epochs (and at the end).
            max_length: Longest sequence in tokens; longer examples are truncated, with a warning that counts them.
            train_on_inputs: Also learn the prompt tokens (by default they are masked with -100).
            packing: Pack each batch's examples into as few rows as fit, without attention across examples
                (the same loss as padded rows, with far less compute spent on padding). Used when the model
                supports it (checked once); otherwise batches are padded, and a warning says so.
            group_by_length: Batch examples of similar length together (less padding, less mixing per step).
            num_train_epochs: Passes over the data. `epoch` is the same: the one given at call time wins over a saved
                one, and the run records the count as `num_train_epochs`.
            max_train_steps: Optimizer steps; overrides the epochs when given.
            train_batch_size: Examples per batch per process. `batch_size` is the same (alpaca-lora's name), with the
                same rule as `epoch`; the run records `train_batch_size`.
            gradient_accumulation_steps: Batches per optimizer step.
            learning_rate: Peak learning rate.
            scale_lr: Multiply the learning rate by batch size x accumulation x processes.
            lr_schedule: linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup.
            warmup_steps: Warm-up optimizer steps. `lr_num_cycles`, `lr_power`: for the restart/polynomial schedules.
            use_8bit_adam: bitsandbytes' 8-bit AdamW where it runs (CUDA); otherwise AdamW, said once.
            adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW settings.
            max_grad_norm: Gradient clipping norm (0 or None: no clipping).
            r: LoRA rank (8 for a new adapter). `lora_alpha`: LoRA alpha (16). `lora_dropout`: dropout on the LoRA input (0.05).
            target_modules: Modules the LoRA wraps: names (the attention projections by default) or "all-linear";
                each name must match a module of the model. A pipeline that already has an adapter trains it as it
                is: these four then default to its own settings, and other values are refused.
            quantization: Load the base model in "8bit" or "4bit" through bitsandbytes (CUDA only), or None.
            mixed_precision: "no", "fp16" (GPU) or "bf16".
            gradient_checkpointing: Trade compute for memory in the base model.
            seed: Seed of everything random in the run.
            checkpointing_steps: Write a checkpoint every this many optimizer steps (needs `output_dir`).
            checkpoints_total_limit: Keep at most this many checkpoints.
            resume_from_checkpoint: "latest" or a checkpoint folder.
            output_dir: Where the repo, metrics and checkpoints go; None writes nothing.

        Returns:
            The fine-tuned `CausalLMPipeline`.

        Raises:
            ConfigError: Settings that cannot work. DataError: Unusable data. TrainingError: No `<eos>`
                would be learned, or the loss became NaN/inf.
        """
        arguments = {name: value for name, value in locals().items() if name in CausalLMTrainConfig._valid_argument_names()}
        # 1. Check the settings before any heavy work.
        check_training_settings(arguments, "CausalLMTrainer.train()")
        num_train_epochs = epoch if epoch is not None else num_train_epochs
        train_batch_size = batch_size if batch_size is not None else train_batch_size
        if data is None:
            raise ConfigError("CausalLMTrainer.train() needs data: a .json/.jsonl file of alpaca records, a list of dicts, "
                              "a datasets.Dataset, or 'tinypipe/tiny-instructions'.")
        if validation_data is not None and validation_split:
            raise ConfigError("Give either validation_data or validation_split, not both.")
        if resume_from_checkpoint and output_dir is None:
            raise ConfigError("resume_from_checkpoint needs output_dir, the folder the checkpoints were written to.")
        accelerator = make_accelerator(mixed_precision)
        seed_everything(seed)
        if self.model is None:
            self.init_model(CausalLMPipeline(base_model, revision=revision, quantization=quantization))
        pipeline = self.model
        if quantization is not None and pipeline.config["quantization"] != quantization:
            raise ConfigError(f"quantization={quantization!r}, but the pipeline given to init_model was loaded with "
                              f"quantization={pipeline.config['quantization']!r}; load it the way you want to train it.")
        tokenizer = pipeline.tokenizer
        r, lora_alpha, lora_dropout, target_modules = _lora_settings(pipeline, r, lora_alpha, lora_dropout, target_modules)
        # What is recorded is what runs: one name per setting, the adapter's settings, the optimizer that runs.
        arguments.update(base_model=pipeline.config["base_model"], revision=pipeline.config["revision"],
                         data=data if isinstance(data, (str, Path)) else None,
                         validation_data=validation_data if isinstance(validation_data, (str, Path)) else None,
                         num_train_epochs=num_train_epochs, epoch=None, train_batch_size=train_batch_size, batch_size=None,
                         r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
                         use_8bit_adam=runs_8bit_adam(use_8bit_adam))
        output = Path(output_dir) if output_dir is not None else None
        logger.info("Causal-LM LoRA training with %s", json.dumps(arguments, sort_keys=True, default=str))

        # 2. Data: read and check every record, hold out the validation examples, tokenize.
        examples = load_instruction_examples(data, filter_fn=filter_fn)
        validation_examples = load_instruction_examples(validation_data) if validation_data is not None else []
        if validation_split:
            order = list(range(len(examples)))
            random.Random(seed).shuffle(order)
            held_out = set(order[:max(1, round(len(examples) * validation_split))])
            if len(held_out) >= len(examples):
                raise ConfigError(f"validation_split={validation_split} leaves no training examples out of {len(examples)}; lower it.")
            validation_examples = [example for index, example in enumerate(examples) if index in held_out]
            examples = [example for index, example in enumerate(examples) if index not in held_out]
        train_set = tokenize_examples(examples, tokenizer, max_length, train_on_inputs)
        validation_set = tokenize_examples(validation_examples, tokenizer, max_length, train_on_inputs)
        _preflight(train_set, examples, tokenizer)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Data: %d training and %d validation examples (first %s); %d tokens, %d of them learned, longest "
                         "example %d tokens (max_length %d).", len(train_set), len(validation_set), examples[0].source,
                         sum(len(example.input_ids) for example in train_set),
                         sum(_learned_tokens(example) for example in train_set),
                         max(len(example.input_ids) for example in train_set), max_length)

        # 3. Model: add (or keep) the LoRA adapter; only its weights train.
        if not pipeline.has_lora:
            if pipeline.config["quantization"] is not None:
                from peft import prepare_model_for_kbit_training

                pipeline.model = prepare_model_for_kbit_training(pipeline.model, use_gradient_checkpointing=gradient_checkpointing)
            pipeline.add_lora(rank=r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules)
        model = pipeline.model
        packing = packing and _packing_isolates_examples(model, accelerator.device)
        arguments["packing"] = packing  # what runs: padded batches where the model cannot keep packed examples apart
        trainable = {name: parameter for name, parameter in model.named_parameters() if "lora_" in name}
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trainable)
        use_cache = pipeline.model.config.use_cache
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        logger.info("Training %d LoRA parameters (r=%d) of %d in the model.", sum(p.numel() for p in trainable.values()),
                    pipeline.config["lora_rank"], sum(p.numel() for p in model.parameters()))

        # 4. Steps, optimizer and schedule.
        batches_in_data = math.ceil(len(train_set) / train_batch_size)
        batches_per_epoch = math.ceil(batches_in_data / accelerator.num_processes)
        updates_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
        total_steps = max_train_steps or num_train_epochs * updates_per_epoch
        if scale_lr:
            learning_rate = learning_rate * gradient_accumulation_steps * train_batch_size * accelerator.num_processes
        log_resolved_steps(accelerator, batches_per_epoch=batches_per_epoch, updates_per_epoch=updates_per_epoch,
                           total_steps=total_steps, learning_rate=learning_rate, trainable_parameters=trainable.values())
        optimizer = make_optimizer(trainable.values(), learning_rate=learning_rate, use_8bit_adam=use_8bit_adam,
                                   betas=(adam_beta1, adam_beta2), weight_decay=adam_weight_decay, epsilon=adam_epsilon)
        lr_scheduler = make_lr_scheduler(optimizer, lr_schedule=lr_schedule, warmup_steps=warmup_steps, total_steps=total_steps,
                                         num_cycles=lr_num_cycles, power=lr_power)
        # accelerate wraps the model (DDP) and the optimizer (mixed precision); the schedule is stepped
        # here, once per optimizer step, so it means the same with any number of processes.
        (model,), optimizer = prepare_for_training(accelerator, [model], optimizer)

        # 5. Resume from a checkpoint.
        global_step, resumed_epoch, resumed_losses = 0, None, []
        run = run_fingerprint(arguments, total_steps=total_steps, train_batch_size=train_batch_size,
                              num_processes=accelerator.num_processes,
                              data_sha256=content_digest(json.dumps([example.input_ids, example.labels]) for example in train_set))
        checkpoint_path = checkpoint_to_resume(output, resume_from_checkpoint, run=run, total_steps=total_steps,
                                               checkpointing_steps=checkpointing_steps)
        self.metrics = []
        if checkpoint_path is not None:
            checkpoint = load_checkpoint(checkpoint_path, optimizer=optimizer, lr_scheduler=lr_scheduler)
            restore_trainable(trainable, checkpoint.trainable, checkpoint_path, "r, target_modules and the adapter of the pipeline given")
            global_step = checkpoint.step
            self.metrics = list(checkpoint.state["metrics"])
            resumed_epoch, resumed_losses = checkpoint.state["epoch"], list(checkpoint.state["epoch_losses"])
            logger.info("Resumed from %s at step %d", checkpoint_path, global_step)

        # 6. The loop.
        lengths = [len(example.input_ids) for example in train_set]
        # Each batch's summed token loss is divided by the average number of learned tokens per batch,
        # not by its own count: every token then weighs the same whichever batch it lands in, as in
        # randomly mixed batches, although length grouping puts short and long examples in different batches.
        tokens_per_batch = sum(_learned_tokens(example) for example in train_set) / batches_in_data
        make_batch = pack if packing else collate
        progress = tqdm(total=total_steps, initial=global_step, desc="LoRA (causal LM)", disable=not accelerator.is_main_process)
        for epoch_index in epochs_to_run(global_step, total_steps, updates_per_epoch):
            model.train()
            batches = _process_batches(length_grouped_batches(lengths, train_batch_size, seed + epoch_index, group_by_length),
                                       accelerator.process_index, accelerator.num_processes)
            epoch_losses = resumed_losses if epoch_index == resumed_epoch else []  # the losses before the checkpoint
            for position in batches_to_run(global_step, total_steps, epoch_index, updates_per_epoch, gradient_accumulation_steps, len(batches)):
                is_update = (position + 1) % gradient_accumulation_steps == 0 or position == len(batches) - 1
                batch = {key: value.to(accelerator.device) for key, value in
                         make_batch([train_set[index] for index in batches[position]], tokenizer.pad_token_id).items()}
                with no_sync_unless(accelerator, [model], is_update):
                    with accelerator.autocast():
                        loss_sum, tokens = _summed_loss(model, batch)
                    loss = loss_sum / max(tokens, 1)
                    check_finite_loss(loss, global_step + 1, output)
                    accelerator.backward(loss_sum / (tokens_per_batch * gradient_accumulation_steps))
                epoch_losses.append(loss.item())
                if not is_update:
                    continue
                if max_grad_norm:
                    accelerator.clip_grad_norm_(list(trainable.values()), max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
                if output is not None and checkpointing_steps and global_step % checkpointing_steps == 0 and accelerator.is_main_process:
                    save_checkpoint(output, global_step, trainable={name: p.detach() for name, p in trainable.items()},
                                    optimizer=optimizer, lr_scheduler=lr_scheduler,
                                    state={"epoch": epoch_index, "metrics": self.metrics, "epoch_losses": epoch_losses},
                                    total_limit=checkpoints_total_limit, run=run)
                if global_step >= total_steps:
                    break
            is_last = global_step >= total_steps
            record: dict[str, Any] = {"epoch": epoch_index + 1, "step": global_step,
                                      "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None}
            if validation_set and ((epoch_index + 1) % validation_epochs == 0 or is_last):
                record["eval_loss"] = evaluation_loss(model, validation_set, tokenizer.pad_token_id, train_batch_size, accelerator.device)
                logger.info("Epoch %d, step %d: eval loss %.4f", epoch_index + 1, global_step, record["eval_loss"])
            self.metrics.append(record)
            if is_last:
                break
        progress.close()
        accelerator.wait_for_everyone()

        # 7. The result: the trained pipeline, and the repo with the effective configuration.
        model.eval()
        if gradient_checkpointing:
            pipeline.model.gradient_checkpointing_disable()
            pipeline.model.config.use_cache = use_cache  # checkpointing turned the KV cache off; generation wants it
        for parameter in trainable.values():
            parameter.requires_grad_(False)
        self.set_method_config("train_config", CausalLMTrainConfig(**arguments))
        if output is not None and accelerator.is_main_process:
            pipeline.save_pretrained(output)
            self.save_pretrained(output)
            (output / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        accelerator.end_training()
        return pipeline


class CausalLMTrainConfig(BaseArgsFromConfig):
    """The arguments of `CausalLMTrainer.train`, as a config object (`update_config` rejects unknown keys).

    Example:
    ```python
    config = CausalLMTrainConfig(data="tinypipe/tiny-instructions")
    config.update_config({"learning_rate": 5e-4, "batch_size": 32})
    pipeline = finetune(train_config=config)
    ```
    """

    @copy_signature(CausalLMTrainer.train)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


def finetune(train_config: Union[CausalLMTrainConfig, dict, None] = None, model: Union[CausalLMPipeline, str, None] = None) -> CausalLMPipeline:
    """Run a whole fine-tune from a train config, in one call: build the trainer, load the model, train, save.

    Args:
        train_config: A `CausalLMTrainConfig` (or a dict of its keys) holding the data, the base model and
            every hyperparameter; with `output_dir` set, the repo is written there.
        model: A pipeline (or model id) to fine-tune instead of the config's `base_model`.

    Returns:
        The fine-tuned `CausalLMPipeline`.

    Example:
    ```python
    train_config = CausalLMTrainConfig(data="alpaca_data.json", output_dir="out")
    train_config.update_config({"learning_rate": 5e-4, "batch_size": 32})
    pipeline = finetune(train_config=train_config)
    ```
    """
    trainer = CausalLMTrainer(train_config=train_config)
    if model is not None:
        trainer.init_model(model)
    return trainer.train()


def _summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The summed next-token cross-entropy of a batch's learned tokens, and how many there are."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False).logits.float()  # a KV cache would turn the packed-sequence masks off
    labels = batch["labels"][:, 1:]
    loss_sum = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def _packing_isolates_examples(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether this model keeps packed examples apart (transformers' packed-sequence masks); warns when it does not."""
    vocab = model.get_input_embeddings().num_embeddings
    first, second = torch.arange(5, device=device) % vocab, torch.arange(7, 11, device=device) % vocab
    was_training = model.training
    model.eval()
    try:
        alone = model(input_ids=second[None], use_cache=False).logits
        positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]], device=device)
        packed = model(input_ids=torch.cat([first, second])[None], position_ids=positions, use_cache=False).logits
        isolated = torch.allclose(packed[:, 5:].float(), alone.float(), atol=1e-3, rtol=1e-3)
    except (TypeError, ValueError, RuntimeError):
        isolated = False
    finally:
        model.train(was_training)
    if not isolated:
        logger.warning("This model (or transformers version) does not keep packed examples apart, so batches are padded "
                       "instead (packing=False). Set group_by_length=True to reduce the padding.")
    return isolated


def _learned_tokens(example: TokenizedExample) -> int:
    """How many of an example's tokens are learned (predicted from the token before them)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


@torch.no_grad()
def evaluation_loss(model: torch.nn.Module, examples: list[TokenizedExample], pad_token_id: int, batch_size: int,
                    device: Union[str, torch.device] = "cpu") -> float:
    """Mean cross-entropy per learned token over `examples` (the eval loss), with the model in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch_indices in length_grouped_batches([len(e.input_ids) for e in examples], batch_size, seed=0):
        batch = {key: value.to(device) for key, value in collate([examples[i] for i in batch_indices], pad_token_id).items()}
        loss_sum, tokens = _summed_loss(model, batch)
        total += loss_sum.item()
        count += tokens
    model.train(was_training)
    return total / max(count, 1)


def _lora_settings(pipeline: CausalLMPipeline, r: Optional[int], lora_alpha: Optional[float], lora_dropout: Optional[float],
                   target_modules: Any) -> tuple:
    """The adapter settings that run: the given ones (defaults for a new adapter), or those of the pipeline's adapter.

    Raises:
        ConfigError: The pipeline has an adapter, and a given setting differs from its own.
    """
    if not pipeline.has_lora:
        return (8 if r is None else r, 16 if lora_alpha is None else lora_alpha, 0.05 if lora_dropout is None else lora_dropout,
                ATTENTION_PROJECTIONS if target_modules is None else target_modules)
    config = pipeline.config
    own = {"r": config["lora_rank"], "lora_alpha": config["lora_alpha"] or config["lora_rank"],
           "lora_dropout": config["lora_dropout"], "target_modules": config["lora_target_modules"]}
    check_existing_lora(own, {"r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "target_modules": target_modules})
    return own["r"], own["lora_alpha"], own["lora_dropout"], own["target_modules"]


def _preflight(train_set: list[TokenizedExample], examples: list, tokenizer: Any) -> None:
    """Log one rendered example with its loss mask; stop when no example would learn `<eos>`."""
    eos = tokenizer.eos_token_id
    learned_eos = sum(1 for example in train_set if eos in example.labels)
    first = train_set[0]
    learned = sum(1 for label in first.labels if label != IGNORE_INDEX)
    logger.info("Preflight: %s, %d tokens, %d learned (in [brackets]):\n%s", examples[0].source, len(first.input_ids), learned,
                render_loss_mask(first, tokenizer))
    if learned_eos == 0:
        raise TrainingError(
            f"No training example would learn the end-of-sequence token {tokenizer.eos_token!r} (id {eos}): all {len(train_set)} are "
            "truncated before it (raise max_length) or it is masked out. The model would never learn to stop."
        )
    if learned_eos < len(train_set):
        logger.warning("%d of %d examples do not learn %r (truncated by max_length).", len(train_set) - learned_eos, len(train_set),
                       tokenizer.eos_token)


def _process_batches(batches: list[list[int]], process_index: int, num_processes: int) -> list[list[int]]:
    """This process's share of an epoch's batches; every process gets the same number (the list wraps around)."""
    if num_processes == 1:
        return batches
    count = math.ceil(len(batches) / num_processes) * num_processes
    padded = [batches[i % len(batches)] for i in range(count)]
    return padded[process_index::num_processes]

