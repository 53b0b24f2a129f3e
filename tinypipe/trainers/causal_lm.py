"""`CausalLMTrainer`: fine-tune a causal language model with a PEFT LoRA adapter on instruction or chat data.

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

The data may be alpaca, messages, ShareGPT or text records (`data.chat_formats`, the format is detected and logged).
Records are rendered with a template (`data.chat_templates`: alpaca records with Stanford's alpaca template,
conversations with the tokenizer's own chat template or chatml, or the `chat_template` chosen), which the saved repo
keeps; only the responses / assistant turns and their end-of-turn tokens are learned unless `train_on_inputs`
(`data.tokenization`). The tokens are cached (`data.token_cache`), so a second run on the same data starts at once.
The examples of each batch are packed into as few rows as fit (`packing`), with no attention across examples, so
little compute goes to padding while every step sees the same examples and loss as a padded batch would.
"""

import json
import logging
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..builtin.tiny_llama import TINY_LLAMA
from ..config import BaseArgsFromConfig, FromConfig, Ignore, TrainerConfigMixin, copy_signature, save_config, set_from_config
from ..data.chat_formats import TrainingData, load_training_data
from ..data.chat_templates import end_of_turn_ids, resolve_chat_template
from ..data.instructions import collate, length_grouped_batches, pack
from ..data.token_cache import cached_tokenization
from ..data.tokenization import log_truncation
from ..errors import ConfigError
from ..models.causal_lm import CausalLMPipeline
from ..training import arguments as shared, causal_lm_steps as lm_steps, loop
from ..training.causal_lm_steps import evaluation_loss
from ..training.resume import RunCheckpoints, resume_run
from ..training.run_fingerprint import run_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["CausalLMTrainer", "CausalLMTrainConfig", "finetune", "evaluation_loss"]


class CausalLMTrainer(TrainerConfigMixin):
    """Fine-tunes a `CausalLMPipeline` with a PEFT LoRA adapter on instruction data.

    The records are rendered with their template, packed into rows, and only the adapter's weights train (and the
    embedding rows of special tokens a chat template added). A
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
        chat_template: FromConfig = None,
        field_map: FromConfig = None,
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
        report_to: shared.ReportTo = "none",
    ) -> CausalLMPipeline:
        """Fine-tune the pipeline on `data` and return it (with its LoRA adapter trained).

        Args:
            data: Alpaca `{"instruction", "input", "output"}`, messages `{"messages": [{"role", "content"}]}`, ShareGPT
                `{"conversations": [{"from", "value"}]}` or text `{"text"}` records (detected, all of one format): a
                `.json` list or `.jsonl` file, a list of dicts, a `datasets.Dataset`, or the built-in
                `"tinypipe/tiny-instructions"` / `"tinypipe/tiny-chats"`.
            filter_fn: Keeps the examples (`InstructionExample`, `ConversationExample`, `TextExample`) it returns True for.
            revision: Hub revision of `base_model`.
            validation_data: Records to compute the eval loss on (same forms as `data`).
            validation_split: Instead, hold out this fraction of `data` (seeded) for the eval loss; 0 for none.
            validation_epochs: Compute the eval loss every this many epochs (and at the end).
            max_length: Longest sequence in tokens; longer examples are truncated, with a warning that counts them.
            train_on_inputs: Also learn the prompt tokens, system and user turns (by default only the responses and
                assistant turns with their end-of-turn tokens are learned).
            chat_template: The template records are rendered with: None (the pipeline's own when it was trained with
                one; else for alpaca records `"alpaca"`, Stanford's, and for conversations the tokenizer's own chat
                template, or `"chatml"` when it has none), `"tokenizer"`,
                `"alpaca"`, `"alpaca-lora"`, `"chatml"`, `"llama-3"`, a Jinja template, or a `.jinja` file. Special
                tokens the template needs are added to the tokenizer and their embedding rows trained. The template is
                saved with the model (its tokenizer files), and recorded here by name or as its Jinja text.
            field_map: `{standard field: your field}` for records whose fields are named otherwise, e.g.
                `{"instruction": "question", "output": "answer"}`.
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
        accelerator = loop.start_run(arguments, "CausalLMTrainer.train()", data_forms="a .json/.jsonl file of alpaca, "
                                     "messages, ShareGPT or text records, a list of dicts, a datasets.Dataset, or "
                                     "'tinypipe/tiny-instructions' / 'tinypipe/tiny-chats'")
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
        loop.record_effective_arguments(arguments, base_model=pipeline.config["base_model"],
                                        revision=pipeline.config["revision"], train_batch_size=train_batch_size, batch_size=None,
                                        validation_data=validation_data if isinstance(validation_data, (str, Path)) else None,
                                        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules)
        output = Path(output_dir) if output_dir is not None else None

        # 2. Data: read and check every record, hold out the validation examples, render and tokenize (or read the cache).
        train_data = load_training_data(data, field_map=field_map, filter_fn=filter_fn)
        validation = load_training_data(validation_data, field_map=field_map, log=False) if validation_data is not None else None
        if validation is not None and validation.format != train_data.format:
            raise ConfigError(f"validation_data is {validation.format} records but data is {train_data.format}; give both in "
                              "one format.")
        if validation_split:
            kept, held_out = lm_steps.hold_out(train_data.examples, validation_split, seed)
            train_data, validation = (TrainingData(train_data.format, kept, train_data.name),
                                      TrainingData(train_data.format, held_out, train_data.name))
        if chat_template is None and train_data.format != "text":
            chat_template = pipeline.config.get("chat_template")  # a repo trained before keeps the template it learned
        template = resolve_chat_template(chat_template, train_data.format, tokenizer)
        if template is not None:
            pipeline.set_chat_template(template.recorded)  # adds the template's missing special tokens; saved with the model
        arguments["chat_template"] = template.recorded if template is not None else None
        logger.info("Template: %s.", template.name if template is not None else "none (text records are learned as they are)")
        tokenized, tokens_sha256 = cached_tokenization(train_data, tokenizer, template, max_length, train_on_inputs)
        train_set = tokenized.examples
        validation_set = (cached_tokenization(validation, tokenizer, template, max_length, train_on_inputs)[0].examples
                          if validation is not None else [])
        log_truncation(tokenized, max_length)
        lm_steps.preflight(train_set, tokenized.sources, tokenizer, end_of_turn_ids(tokenizer, template))
        lm_steps.log_data_summary(train_set, validation_set, tokenized.sources[0], max_length)

        # 3. Model: add (or keep) the LoRA adapter; only its weights train.
        if not pipeline.has_lora:
            if pipeline.config["quantization"] is not None:
                from peft import prepare_model_for_kbit_training

                pipeline.model = prepare_model_for_kbit_training(pipeline.model, use_gradient_checkpointing=gradient_checkpointing)
            pipeline.add_lora(rank=r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules)
        model = pipeline.model
        packing = packing and lm_steps.packing_isolates_examples(model, accelerator.device)
        arguments["packing"] = packing  # what runs: padded batches where the model cannot keep packed examples apart
        # The LoRA matrices, and the embedding rows of the tokens a chat template added (peft's trainable tokens).
        trainable = {name: parameter for name, parameter in model.named_parameters()
                     if "lora_" in name or "trainable_tokens_delta" in name}
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
                                     parameters=trainable.values(), use_8bit_adam=use_8bit_adam, description="Causal-LM LoRA")
        model = setup.models[0]
        run = run_fingerprint(arguments, total_steps=setup.plan.total_steps, train_batch_size=train_batch_size,
                              num_processes=accelerator.num_processes,
                              data_sha256=tokens_sha256)
        checkpoints = RunCheckpoints(output, checkpointing_steps, checkpoints_total_limit, run, trainable,
                                     "r, target_modules and the adapter of the pipeline given")
        resumed = resume_run(checkpoints, resume_from_checkpoint, setup)
        self.metrics = list(resumed.state["metrics"]) if resumed is not None else []

        # 5. The loop: batches of similar length (with group_by_length), packed or padded; an eval loss per epoch.
        lengths = lm_steps.example_lengths(train_set)
        # Each batch's summed token loss is divided by the average number of learned tokens per batch,
        # not by its own count: every token then weighs the same whichever batch it lands in, as in
        # randomly mixed batches, although length grouping puts short and long examples in different batches.
        tokens_per_batch = lm_steps.total_learned_tokens(train_set) / -(-len(train_set) // train_batch_size)
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
