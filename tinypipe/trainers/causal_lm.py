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
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..builtin.tiny_llama import TINY_LLAMA
from ..config import BaseArgsFromConfig, FromConfig, Ignore, TrainerConfigMixin, copy_signature, save_config, set_from_config
from ..data.instructions import collate, length_grouped_batches, load_instruction_examples, pack, tokenize_examples
from ..errors import ConfigError
from ..models.causal_lm import CausalLMPipeline
from ..training import arguments as shared, causal_lm_steps as lm_steps, loop
from ..training.causal_lm_steps import evaluation_loss
from ..training.resume import RunCheckpoints, resume_run
from ..training.run_fingerprint import content_digest, run_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["CausalLMTrainer", "CausalLMTrainConfig", "finetune", "evaluation_loss"]


class CausalLMTrainer(TrainerConfigMixin):
    """Fine-tunes a `CausalLMPipeline` with a PEFT LoRA adapter on instruction data.

    The records are rendered with the alpaca template, packed into rows, and only the adapter's weights train. A
    `train` argument not given at call time comes from the constructor's `train_config`
    (`CausalLMTrainer(train_config=CausalLMTrainConfig(...))`).

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
    @shared.document_shared_arguments
    def train(
        self,
        data: FromConfig = None,
        filter_fn: Ignore = None,
        base_model: shared.BaseModel = TINY_LLAMA,
        revision: FromConfig = None,
        validation_data: FromConfig = None,
        validation_split: FromConfig = 0.0,
        validation_epochs: FromConfig = 1,
        max_length: FromConfig = 512,
        train_on_inputs: FromConfig = False,
        packing: FromConfig = True,
        group_by_length: FromConfig = False,
        num_train_epochs: shared.NumTrainEpochs = 3,
        epoch: shared.Epoch = None,
        max_train_steps: shared.MaxTrainSteps = None,
        train_batch_size: shared.TrainBatchSize = 4,
        batch_size: FromConfig = None,
        gradient_accumulation_steps: shared.GradientAccumulationSteps = 1,
        learning_rate: shared.LearningRate = 3e-4,
        scale_lr: shared.ScaleLr = False,
        lr_schedule: shared.LrSchedule = "linear",
        warmup_steps: shared.WarmupSteps = 0,
        lr_num_cycles: shared.LrNumCycles = 1,
        lr_power: shared.LrPower = 1.0,
        use_8bit_adam: shared.Use8bitAdam = False,
        adam_beta1: shared.AdamBeta1 = 0.9,
        adam_beta2: shared.AdamBeta2 = 0.999,
        adam_weight_decay: shared.AdamWeightDecay = 0.0,
        adam_epsilon: shared.AdamEpsilon = 1e-8,
        max_grad_norm: shared.MaxGradNorm = 1.0,
        r: FromConfig = None,
        lora_alpha: FromConfig = None,
        lora_dropout: FromConfig = None,
        target_modules: FromConfig = None,
        quantization: FromConfig = None,
        mixed_precision: shared.MixedPrecision = "no",
        gradient_checkpointing: shared.GradientCheckpointing = False,
        seed: shared.Seed = 0,
        checkpointing_steps: shared.CheckpointingSteps = 500,
        checkpoints_total_limit: shared.CheckpointsTotalLimit = None,
        resume_from_checkpoint: shared.ResumeFromCheckpoint = None,
        output_dir: shared.OutputDir = None,
    ) -> CausalLMPipeline:
        """Fine-tune the pipeline on `data` and return it (with its LoRA adapter trained).

        Args:
            data: Alpaca records: a `.json` list or `.jsonl` file, a list of dicts, a `datasets.Dataset`,
                or the built-in `"tinypipe/tiny-instructions"`.
            filter_fn: Keeps the `InstructionExample`s it returns True for (the preprocessing filter).
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
            batch_size: The same as `train_batch_size` (alpaca-lora's name), with the same rule as `epoch`; the run records
                `train_batch_size`.
            r: LoRA rank (8 for a new adapter).
            lora_alpha: LoRA alpha (16 for a new adapter).
            lora_dropout: Dropout on the LoRA input (0.05 for a new adapter).
            target_modules: Modules the LoRA wraps: names (the attention projections of the model's architecture by
                default, as `CausalLMPipeline.default_lora_targets` picks them) or "all-linear";
                each name must match a module of the model. A pipeline that already has an adapter trains it as it
                is: these four then default to its own settings, and other values are refused.
            quantization: Load the base model in "8bit" or "4bit" through bitsandbytes (CUDA only), or None.
            output_dir: Where the repo, metrics and checkpoints go; None writes nothing.

        Returns:
            The fine-tuned `CausalLMPipeline`.

        Raises:
            ConfigError: Settings that cannot work. DataError: Unusable data. TrainingError: No `<eos>`
                would be learned, or the loss became NaN/inf.
        """
        arguments = {name: value for name, value in locals().items() if name in CausalLMTrainConfig._valid_argument_names()}
        # 1. Check every setting before any heavy work.
        accelerator = loop.start_run(arguments, "CausalLMTrainer.train()", data_forms="a .json/.jsonl file of alpaca "
                                     "records, a list of dicts, a datasets.Dataset, or 'tinypipe/tiny-instructions'")
        train_batch_size = batch_size if batch_size is not None else train_batch_size
        if validation_data is not None and validation_split:
            raise ConfigError("Give either validation_data or validation_split, not both.")
        if self.model is None:
            self.init_model(CausalLMPipeline(base_model, revision=revision, quantization=quantization))
        pipeline = self.model
        if quantization is not None and pipeline.config["quantization"] != quantization:
            raise ConfigError(f"quantization={quantization!r}, but the pipeline given to init_model was loaded with "
                              f"quantization={pipeline.config['quantization']!r}; load it the way you want to train it.")
        tokenizer = pipeline.tokenizer
        r, lora_alpha, lora_dropout, target_modules = lm_steps.resolve_adapter_settings(pipeline, r, lora_alpha, lora_dropout,
                                                                                        target_modules)
        # What is recorded is what runs: one name per setting, the adapter's settings.
        loop.record_effective_arguments(arguments, "Causal-LM LoRA", base_model=pipeline.config["base_model"],
                                        revision=pipeline.config["revision"], train_batch_size=train_batch_size, batch_size=None,
                                        validation_data=validation_data if isinstance(validation_data, (str, Path)) else None,
                                        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules)
        output = Path(output_dir) if output_dir is not None else None

        # 2. Data: read and check every record, hold out the validation examples, tokenize.
        examples = load_instruction_examples(data, filter_fn=filter_fn)
        validation_examples = load_instruction_examples(validation_data) if validation_data is not None else []
        if validation_split:
            examples, validation_examples = lm_steps.hold_out(examples, validation_split, seed)
        train_set = tokenize_examples(examples, tokenizer, max_length, train_on_inputs)
        validation_set = tokenize_examples(validation_examples, tokenizer, max_length, train_on_inputs)
        lm_steps.preflight(train_set, examples, tokenizer)
        lm_steps.log_data_summary(train_set, validation_set, examples[0].source, max_length)

        # 3. Model: add (or keep) the LoRA adapter; only its weights train.
        if not pipeline.has_lora:
            if pipeline.config["quantization"] is not None:
                from peft import prepare_model_for_kbit_training

                pipeline.model = prepare_model_for_kbit_training(pipeline.model, use_gradient_checkpointing=gradient_checkpointing)
            pipeline.add_lora(rank=r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules)
        model = pipeline.model
        packing = packing and lm_steps.packing_isolates_examples(model, accelerator.device)
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

        # 4. Steps, optimizer and schedule; resume from a checkpoint of this run (never another run's).
        setup = loop.set_up_training(accelerator, arguments, example_count=len(train_set), models=[model],
                                     parameters=trainable.values(), use_8bit_adam=use_8bit_adam)
        model = setup.models[0]
        run = run_fingerprint(arguments, total_steps=setup.plan.total_steps, train_batch_size=train_batch_size,
                              num_processes=accelerator.num_processes,
                              data_sha256=content_digest(json.dumps([example.input_ids, example.labels]) for example in train_set))
        checkpoints = RunCheckpoints(output, checkpointing_steps, checkpoints_total_limit, run, trainable,
                                     "r, target_modules and the adapter of the pipeline given")
        resumed = resume_run(checkpoints, resume_from_checkpoint, setup)
        self.metrics = list(resumed.state["metrics"]) if resumed is not None else []

        # 5. The loop: batches of similar length (with group_by_length), packed or padded; an eval loss per epoch.
        lengths = [len(example.input_ids) for example in train_set]
        # Each batch's summed token loss is divided by the average number of learned tokens per batch,
        # not by its own count: every token then weighs the same whichever batch it lands in, as in
        # randomly mixed batches, although length grouping puts short and long examples in different batches.
        tokens_per_batch = sum(lm_steps.learned_tokens(example) for example in train_set) / -(-len(train_set) // train_batch_size)
        make_batch = pack if packing else collate

        def epoch_batches(epoch_index: int) -> list[list[int]]:
            return loop.shard_batches(length_grouped_batches(lengths, train_batch_size, seed + epoch_index, group_by_length), accelerator)

        def batch_loss(batch_indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            batch = {key: value.to(accelerator.device) for key, value in
                     make_batch([train_set[index] for index in batch_indices], tokenizer.pad_token_id).items()}
            loss_sum, tokens = lm_steps.summed_loss(model, batch)
            return loss_sum / max(tokens, 1), loss_sum / tokens_per_batch

        def end_of_epoch(epoch: loop.EpochEnd) -> None:
            record: dict[str, Any] = {"epoch": epoch.index + 1, "step": epoch.global_step,
                                      "train_loss": float(np.mean(epoch.losses)) if epoch.losses else None}
            if validation_set and loop.end_of_epoch_due(epoch.index, validation_epochs, epoch.is_last):
                record["eval_loss"] = evaluation_loss(model, validation_set, tokenizer.pad_token_id, train_batch_size,
                                                      accelerator.device)
                logger.info("Epoch %d, step %d: eval loss %.4f", epoch.index + 1, epoch.global_step, record["eval_loss"])
            self.metrics.append(record)

        loop.run_epochs(accelerator, setup, arguments, checkpoints=checkpoints, resumed=resumed, epoch_batches=epoch_batches,
                        batch_loss=batch_loss, end_of_epoch=end_of_epoch, extra_state=lambda: {"metrics": self.metrics},
                        description="LoRA (causal LM)")
        accelerator.wait_for_everyone()

        # 6. The result: the trained pipeline, and the repo with the effective configuration and the metrics.
        model.eval()
        if gradient_checkpointing:
            pipeline.model.gradient_checkpointing_disable()
            pipeline.model.config.use_cache = use_cache  # checkpointing turned the KV cache off; generation wants it
        for parameter in trainable.values():
            parameter.requires_grad_(False)
        self.set_method_config("train_config", CausalLMTrainConfig(**arguments))
        loop.save_run(self, pipeline, accelerator, output, also_write=lambda output: (output / "metrics.json").write_text(
            json.dumps(self.metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8"))
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
