"""`LoRATrainer`: fine-tune a Stable-Diffusion pipeline with LoRA on the UNet attention projections, optionally with
prior preservation (DreamBooth-LoRA).

```python
from tinypipe.models import DiffusionPipeline
from tinypipe.trainers import LoRATrainer

trainer = LoRATrainer()
trainer.init_model(DiffusionPipeline("tinypipe/tiny-sd"))
pipeline = trainer.train(data="my_photos/", instance_prompt="a photo of sks dog", epoch=20, output_dir="out")
pipeline.generate("a photo of sks dog on the beach")
```

`out/` is then a repo: `model/` (the LoRA in diffusers' format), `trainer/` (this trainer with the
effective arguments of the run, so `AutoTrainerPipeline.from_pretrained("out").train()` re-runs it),
`validation/` (images) and `checkpoints/`.

The loop follows diffusers' `train_dreambooth_lora.py` (and its defaults: learning rate 5e-4-class, prior
preservation when asked for), with the VAE latents (and the text embeddings, when the text encoder is frozen)
computed once instead of every step. With `with_prior_preservation=True`, class images (the user's in
`class_data_dir`, topped up with generated ones) train beside the instance images, as in `DreamBoothTrainer`.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

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
from ..errors import ConfigError
from ..builtin.tiny_sd import TINY_SD
from ..models.diffusion import DiffusionPipeline
from ..training import diffusion_steps as steps
from ..training.checkpoints import load_checkpoint, save_checkpoint
from ..training.class_images import check_prior_settings, prepare_class_examples
from ..data.images import check_caption_lengths, load_image_examples
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
from ..training.resume import batches_to_run, epochs_to_run
from ..training.run_fingerprint import checkpoint_to_resume, run_fingerprint
from ..training.settings import check_training_settings, log_resolved_steps

logger = logging.getLogger(__name__)

__all__ = ["LoRATrainer", "LoRATrainConfig"]


class LoRATrainer(TrainerConfigMixin):
    """Fine-tunes a `DiffusionPipeline` with a LoRA adapter (peft) on the UNet, optionally the text encoder.

    Every hyperparameter is a `FromConfig` argument of `train`: give it at call time, or in the
    `train_config` given to the constructor (`LoRATrainer(train_config=LoRATrainConfig(...))`).

    Example:
    ```python
    trainer = LoRATrainer(train_config=LoRATrainConfig(learning_rate=1e-4, num_train_epochs=10))
    trainer.init_model(DiffusionPipeline("tinypipe/tiny-sd"))
    pipeline = trainer.train(data="tinypipe/shapes", instance_prompt="a photo of sks circle", output_dir="out")
    ```
    """

    @save_config
    def __init__(self):
        self.model: Optional[DiffusionPipeline] = None

    def init_model(self, model: Any) -> "LoRATrainer":
        """Set the pipeline to fine-tune: a `DiffusionPipeline`, or a base model id / folder / built-in name."""
        self.model = model if isinstance(model, DiffusionPipeline) else DiffusionPipeline(str(model))
        return self

    @set_from_config(aliases={"epoch": "num_train_epochs"})
    def train(
        self,
        data: FromConfig = None,
        filter_fn: Ignore = None,
        base_model: FromConfig = TINY_SD,
        instance_prompt: FromConfig = None,
        with_prior_preservation: FromConfig = False,
        class_prompt: FromConfig = None,
        class_data_dir: FromConfig = None,
        num_class_images: FromConfig = 100,
        prior_loss_weight: FromConfig = 1.0,
        sample_batch_size: FromConfig = 4,
        class_inference_steps: FromConfig = 50,
        class_guidance_scale: FromConfig = 7.5,
        validation_prompt: FromConfig = None,
        num_validation_images: FromConfig = 4,
        validation_epochs: FromConfig = 10,
        num_train_epochs: FromConfig = 30,
        epoch: FromConfig = None,
        max_train_steps: FromConfig = None,
        train_batch_size: FromConfig = 2,
        gradient_accumulation_steps: FromConfig = 1,
        learning_rate: FromConfig = 5e-4,
        scale_lr: FromConfig = False,
        lr_schedule: FromConfig = "constant",
        warmup_steps: FromConfig = 0,
        lr_num_cycles: FromConfig = 1,
        lr_power: FromConfig = 1.0,
        use_8bit_adam: FromConfig = False,
        adam_beta1: FromConfig = 0.9,
        adam_beta2: FromConfig = 0.999,
        adam_weight_decay: FromConfig = 1e-2,
        adam_epsilon: FromConfig = 1e-8,
        max_grad_norm: FromConfig = 1.0,
        rank: FromConfig = None,
        lora_alpha: FromConfig = None,
        train_text_encoder: FromConfig = False,
        mixed_precision: FromConfig = "no",
        gradient_checkpointing: FromConfig = False,
        snr_gamma: FromConfig = None,
        noise_offset: FromConfig = 0.0,
        resolution: FromConfig = None,
        center_crop: FromConfig = True,
        random_flip: FromConfig = False,
        seed: FromConfig = 0,
        checkpointing_steps: FromConfig = 500,
        checkpoints_total_limit: FromConfig = None,
        resume_from_checkpoint: FromConfig = None,
        output_dir: FromConfig = None,
        validation_inference_steps: FromConfig = 25,
        validation_guidance_scale: FromConfig = 7.5,
    ) -> DiffusionPipeline:
        """Fine-tune the pipeline on `data` and return it (with its LoRA trained).

        Args:
            data: Training images: a folder (captions in `<name>.txt` or `metadata.jsonl`), a JSON file,
                a list of PIL images / paths / (image, caption) pairs, a `datasets.Dataset`, or the
                built-in `"tinypipe/shapes"`.
            filter_fn: Keeps the `ImageExample`s it returns True for (the preprocessing filter).
            base_model: Base model used when `init_model` was not called.
            instance_prompt: Caption of images that have none (e.g. `"a photo of sks dog"`).
            with_prior_preservation: Also train on class images with the class prompt, to keep the class itself
                (DreamBooth-LoRA); the loss is `instance loss + prior_loss_weight * class loss`.
            class_prompt: Prompt of the class images (`"a photo of a dog"`); needed with prior preservation.
            class_data_dir: A folder of class images of your own; missing ones are generated into it.
            num_class_images: Class images to train with (yours first, the rest generated).
            prior_loss_weight: Weight of the class-image loss.
            sample_batch_size: Images per generation batch for the class images.
            class_inference_steps, class_guidance_scale: Settings of the generated class images.
            validation_prompt: Prompt of the validation images (defaults to `instance_prompt`).
            num_validation_images: Images per validation.
            validation_epochs: Validate every this many epochs (and at the end).
            num_train_epochs: Passes over the data. `epoch` is the same: the one given at call time wins over a saved
                one, and the run records the count as `num_train_epochs`.
            max_train_steps: Optimizer steps; overrides the epochs when given.
            train_batch_size: Images per batch per process.
            gradient_accumulation_steps: Batches per optimizer step.
            learning_rate: Peak learning rate.
            scale_lr: Multiply the learning rate by batch size x accumulation x processes.
            lr_schedule: linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup.
            warmup_steps: Warm-up optimizer steps. `lr_num_cycles`, `lr_power`: for the restart/polynomial schedules.
            use_8bit_adam: bitsandbytes' 8-bit AdamW where it runs (CUDA); otherwise AdamW, said once.
            adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW settings.
            max_grad_norm: Gradient clipping norm.
            rank: LoRA rank: 4 for a new LoRA; a pipeline that already has one trains it as it is, and a rank or
                alpha other than its own is refused. `lora_alpha`: LoRA alpha (defaults to the rank).
            train_text_encoder: Also train a LoRA on the text encoder.
            mixed_precision: "no", "fp16" (GPU) or "bf16".
            gradient_checkpointing: Trade compute for memory in the UNet.
            snr_gamma: Min-SNR loss weighting gamma (e.g. 5.0); None for plain MSE.
            noise_offset: Offset noise strength (e.g. 0.05).
            resolution: Training resolution; defaults to the model's native one.
            center_crop: Center crop (else random crop). `random_flip`: random horizontal flips.
            seed: Seed of everything random in the run.
            checkpointing_steps: Write a checkpoint every this many optimizer steps (needs `output_dir`).
            checkpoints_total_limit: Keep at most this many checkpoints.
            resume_from_checkpoint: "latest" or a checkpoint folder.
            output_dir: Where the repo, validation images and checkpoints go; None writes nothing.
            validation_inference_steps, validation_guidance_scale: Settings of the validation images.

        Returns:
            The fine-tuned `DiffusionPipeline`.

        Raises:
            ConfigError: Settings that cannot work. DataError: Unusable data. TrainingError: The loss became NaN/inf.
        """
        arguments = {name: value for name, value in locals().items() if name in LoRATrainConfig._valid_argument_names()}
        # 1. Check the settings before any heavy work.
        check_training_settings(arguments, "LoRATrainer.train()")
        num_train_epochs = epoch if epoch is not None else num_train_epochs
        if data is None:
            raise ConfigError("LoRATrainer.train() needs data: a folder of images, a JSON file, a list of images, "
                              "a datasets.Dataset, or 'tinypipe/shapes'.")
        if with_prior_preservation:
            check_prior_settings(class_prompt)
        elif class_prompt is not None or class_data_dir is not None:
            logger.warning("class_prompt/class_data_dir are set but with_prior_preservation is False; they are not used.")
        accelerator = make_accelerator(mixed_precision)
        seed_everything(seed)
        if self.model is None:
            self.init_model(base_model)
        pipeline = self.model
        rank, lora_alpha = steps.resolve_lora_settings(pipeline, rank=rank, lora_alpha=lora_alpha, train_text_encoder=train_text_encoder)
        # What is recorded is what runs: one name for the epoch count, the LoRA's settings, the optimizer that runs.
        arguments.update(base_model=pipeline.config["base_model"], data=data if isinstance(data, (str, Path)) else None,
                         class_data_dir=str(class_data_dir) if class_data_dir is not None else None,
                         num_train_epochs=num_train_epochs, epoch=None, rank=rank, lora_alpha=lora_alpha,
                         use_8bit_adam=runs_8bit_adam(use_8bit_adam))
        output = Path(output_dir) if output_dir is not None else None
        logger.info("LoRA training with %s", json.dumps(arguments, sort_keys=True, default=str))

        # 2. Data: instance images, then class images (yours, then generated), one cache of VAE latents (and text embeddings).
        examples = load_image_examples(data, default_caption=instance_prompt, filter_fn=filter_fn)
        resolution = resolution or steps.native_resolution(pipeline)
        class_examples = []
        if with_prior_preservation:
            class_examples = prepare_class_examples(
                pipeline, class_prompt=class_prompt, class_data_dir=class_data_dir, num_class_images=num_class_images,
                resolution=resolution, seed=seed, sample_batch_size=sample_batch_size, inference_steps=class_inference_steps,
                guidance_scale=class_guidance_scale, accelerator=accelerator)
        check_caption_lengths(examples + class_examples, pipeline.tokenizer)
        cache = steps.encode_examples(pipeline, examples + class_examples, resolution, center_crop=center_crop,
                                      random_flip=random_flip, seed=seed, cache_text=not train_text_encoder, device=accelerator.device)
        instance_count, class_count = len(examples), len(class_examples)
        epoch_length = max(instance_count, class_count)
        steps.log_data_summary(examples, class_examples, resolution=resolution, center_crop=center_crop, random_flip=random_flip)

        # 3. Model: freeze the base, add (or keep) the LoRA, and pick what trains.
        validation_prompt = validation_prompt or instance_prompt or examples[0].caption
        before = steps.validation_images(pipeline, validation_prompt, num_validation_images, seed,
                                         validation_inference_steps, validation_guidance_scale) if accelerator.is_main_process else []
        if not pipeline.has_lora:
            pipeline.add_lora(rank=rank, alpha=lora_alpha, text_encoder=train_text_encoder)
        trainable_models = [pipeline.unet] + ([pipeline.text_encoder] if train_text_encoder else [])
        parameters = steps.mark_lora_trainable(pipeline, trainable_models)
        if gradient_checkpointing:
            pipeline.unet.enable_gradient_checkpointing()

        # 4. Steps, optimizer and schedule.
        batches_per_epoch = math.ceil(epoch_length / (train_batch_size * accelerator.num_processes))
        updates_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
        total_steps = max_train_steps or num_train_epochs * updates_per_epoch
        if scale_lr:
            learning_rate = learning_rate * gradient_accumulation_steps * train_batch_size * accelerator.num_processes
        log_resolved_steps(accelerator, batches_per_epoch=batches_per_epoch, updates_per_epoch=updates_per_epoch,
                           total_steps=total_steps, learning_rate=learning_rate, trainable_parameters=parameters)
        optimizer = make_optimizer(parameters, learning_rate=learning_rate, use_8bit_adam=use_8bit_adam,
                                   betas=(adam_beta1, adam_beta2), weight_decay=adam_weight_decay, epsilon=adam_epsilon)
        lr_scheduler = make_lr_scheduler(optimizer, lr_schedule=lr_schedule, warmup_steps=warmup_steps, total_steps=total_steps,
                                         num_cycles=lr_num_cycles, power=lr_power)
        # accelerate wraps the models (DDP) and the optimizer (mixed precision); the schedule is stepped
        # here, once per optimizer step, so it means the same with any number of processes.
        models, optimizer = prepare_for_training(accelerator, trainable_models, optimizer)
        unet, text_encoder = models[0], (models[1] if train_text_encoder else pipeline.text_encoder)
        noise_scheduler = steps.training_noise_scheduler(pipeline)
        generator = torch.Generator("cpu").manual_seed(seed + 1_000_003 * accelerator.process_index)

        # 5. Resume from a checkpoint of this run (never another run's).
        global_step = 0
        run = run_fingerprint(arguments, total_steps=total_steps, num_processes=accelerator.num_processes,
                              data_sha256=steps.examples_digest(examples))
        checkpoint_path = checkpoint_to_resume(output, resume_from_checkpoint, run=run, total_steps=total_steps,
                                               checkpointing_steps=checkpointing_steps)
        if checkpoint_path is not None:
            checkpoint = load_checkpoint(checkpoint_path, optimizer=optimizer, lr_scheduler=lr_scheduler, generators={"noise": generator})
            steps.load_trainable(pipeline, trainable_models, checkpoint, "rank, train_text_encoder and the LoRA of the pipeline given")
            global_step = checkpoint.step
            logger.info("Resumed from %s at step %d", checkpoint_path, global_step)

        # 6. The loop.
        progress = tqdm(total=total_steps, initial=global_step, desc="LoRA", disable=not accelerator.is_main_process)
        for epoch_index in epochs_to_run(global_step, total_steps, updates_per_epoch):
            for model in models:
                model.train()
            order = steps.epoch_order(epoch_length, seed, epoch_index)
            batches = steps.process_batches(order, train_batch_size, accelerator)
            for position in batches_to_run(global_step, total_steps, epoch_index, updates_per_epoch, gradient_accumulation_steps, len(batches)):
                is_update = (position + 1) % gradient_accumulation_steps == 0 or position == len(batches) - 1
                # Each batch holds instance examples and, with prior preservation, as many class examples.
                instance_batch = [index % instance_count for index in batches[position]]
                class_batch = [instance_count + index % class_count for index in batches[position]] if class_count else []
                with no_sync_unless(accelerator, models, is_update):
                    with accelerator.autocast():
                        losses = steps.denoising_losses(unet, text_encoder, noise_scheduler, cache, instance_batch + class_batch,
                                                        generator, snr_gamma=snr_gamma, noise_offset=noise_offset,
                                                        device=accelerator.device)
                    loss = losses[:len(instance_batch)].mean()
                    if class_batch:
                        loss = loss + prior_loss_weight * losses[len(instance_batch):].mean()
                    check_finite_loss(loss, global_step + 1, output)
                    accelerator.backward(loss / gradient_accumulation_steps)
                if not is_update:
                    continue
                if max_grad_norm:
                    accelerator.clip_grad_norm_(parameters, max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
                if output is not None and checkpointing_steps and global_step % checkpointing_steps == 0 and accelerator.is_main_process:
                    save_checkpoint(output, global_step, trainable=steps.trainable_state(pipeline, trainable_models),
                                    optimizer=optimizer, lr_scheduler=lr_scheduler, generators={"noise": generator},
                                    state={"epoch": epoch_index}, total_limit=checkpoints_total_limit, run=run)
                if global_step >= total_steps:
                    break
            is_last = global_step >= total_steps
            if accelerator.is_main_process and output is not None and ((epoch_index + 1) % validation_epochs == 0 or is_last):
                images = steps.validation_images(pipeline, validation_prompt, num_validation_images, seed,
                                                 validation_inference_steps, validation_guidance_scale)
                steps.save_images(images, output / "validation" / f"epoch-{epoch_index + 1:04d}")
            if is_last:
                break
        progress.close()
        accelerator.wait_for_everyone()

        # 7. The result: the trained pipeline, and the repo with the effective configuration.
        for model in trainable_models:
            model.eval()
        if gradient_checkpointing:
            pipeline.unet.disable_gradient_checkpointing()
        self.set_method_config("train_config", LoRATrainConfig(**arguments))
        if output is not None and accelerator.is_main_process:
            after = steps.validation_images(pipeline, validation_prompt, num_validation_images, seed,
                                            validation_inference_steps, validation_guidance_scale)
            steps.save_before_after(before, after, output / "validation" / "before_after.png")
            pipeline.save_pretrained(output)
            self.save_pretrained(output)
        accelerator.end_training()
        return pipeline


class LoRATrainConfig(BaseArgsFromConfig):
    """The arguments of `LoRATrainer.train`, as a config object (`update_config` rejects unknown keys).

    Example:
    ```python
    config = LoRATrainConfig(num_train_epochs=5, learning_rate=1e-4)
    trainer = LoRATrainer(train_config=config)
    ```
    """

    @copy_signature(LoRATrainer.train)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
