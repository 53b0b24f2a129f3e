"""The denoising fine-tune that `LoRATrainer` and `DreamBoothTrainer` share; each recipe says only what differs.

Both train a diffusion pipeline of any family (`tinypipe.families`) on instance images, with prior preservation when asked for (the DreamBooth
paper, section 4.2): class images train beside the instance images, in the same batch, and the loss is
`instance loss + prior_loss_weight * class loss`. What trains is the one difference (`use_lora`): a LoRA on the
denoiser (and text encoders), or every weight of them. The loop follows diffusers' `train_dreambooth.py` and
`train_dreambooth_lora.py` (`train_dreambooth_lora_sdxl.py` for SDXL), with the VAE latents (and the family's text
conditioning, when the text encoders are frozen) of every image computed once instead of every step; the family
gives the conditioning and the loss.
"""

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from PIL import Image

from ..data.images import check_caption_lengths, load_image_examples
from ..models.diffusion import DiffusionPipeline
from . import diffusion_steps as steps
from .checkpoints import save_checkpoint
from .class_images import check_prior_settings, prepare_class_examples
from .loop import run_epochs, set_up_training, shard_batches
from .resume import RunCheckpoints, resume_run
from .run_fingerprint import run_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["check_prior_preservation", "train_denoiser"]


def check_prior_preservation(settings: Mapping[str, Any]) -> None:
    """Refuse prior preservation without a class prompt; say so when class settings are given without it.

    Raises:
        ConfigError: `with_prior_preservation` without a `class_prompt`.
    """
    if settings["with_prior_preservation"]:
        check_prior_settings(settings["class_prompt"])
    elif settings["class_prompt"] is not None or settings["class_data_dir"] is not None:
        logger.warning("class_prompt/class_data_dir are set but with_prior_preservation is False; they are not used.")


def train_denoiser(pipeline: DiffusionPipeline, settings: Mapping[str, Any], *, data: Any, filter_fn: Optional[Callable],
                   accelerator: Any, use_lora: bool, use_8bit_adam: bool, resume_settings: str, description: str,
                   save_checkpoint: Callable[..., Path] = save_checkpoint) -> tuple[steps.Validation, list[Image.Image]]:
    """Fine-tune `pipeline` in place on the instance images (and class images) of `settings`.

    Args:
        pipeline: The pipeline to train; with `use_lora`, its LoRA (added with `rank` / `lora_alpha` when it has none).
        settings: The run's effective arguments (`record_effective_arguments`): prompts, steps, optimizer, ...
        data: The instance images, in any form `load_image_examples` reads.
        filter_fn: Keeps the instance `ImageExample`s it returns True for.
        accelerator: The run's accelerator.
        use_lora: Train a LoRA (else every weight of the denoiser, and of the text encoders with `train_text_encoder`).
        use_8bit_adam: Whether 8-bit Adam was asked for.
        resume_settings: The settings that decide what a checkpoint holds, named when one does not fit.
        description: The recipe's name, for the progress bar.
        save_checkpoint: Writes each checkpoint (the recipe passes the one its module names).

    Returns:
        `(validation, before)`: the run's validation settings, and the pipeline's validation images before training
        (empty on other processes than the main one).

    Raises:
        ConfigError, DataError: Settings or data that cannot work. TrainingError: The loss became NaN/inf.
    """
    output = Path(settings["output_dir"]) if settings["output_dir"] is not None else None
    seed, train_text_encoder = settings["seed"], settings["train_text_encoder"]
    # 1. Data: instance images, then class images (yours, then generated or cached), one cache of latents for both.
    examples = load_image_examples(data, default_caption=settings["instance_prompt"], filter_fn=filter_fn)
    resolution = settings["resolution"] or steps.native_resolution(pipeline)
    class_examples = []
    if settings["with_prior_preservation"]:
        class_examples = prepare_class_examples(
            pipeline, class_prompt=settings["class_prompt"], class_data_dir=settings["class_data_dir"],
            num_class_images=settings["num_class_images"], resolution=resolution, seed=seed,
            sample_batch_size=settings["sample_batch_size"], inference_steps=settings["class_inference_steps"],
            guidance_scale=settings["class_guidance_scale"], accelerator=accelerator)
    for tokenizer in {tokenizer.model_max_length: tokenizer for tokenizer in pipeline.tokenizers.values()}.values():
        check_caption_lengths(examples + class_examples, tokenizer)  # once per length (SDXL's two CLIPs cut alike)
    cache = steps.encode_examples(pipeline, examples + class_examples, resolution, center_crop=settings["center_crop"],
                                  random_flip=settings["random_flip"], seed=seed, cache_text=not train_text_encoder,
                                  device=accelerator.device)
    instance_count, class_count = len(examples), len(class_examples)
    steps.log_data_summary(examples, class_examples, resolution=resolution, center_crop=settings["center_crop"],
                           random_flip=settings["random_flip"])

    # 2. Model: what trains - a LoRA on the denoiser (and text encoders), or their every weight.
    validation = steps.Validation.of(settings, default_prompt=settings["instance_prompt"] or examples[0].caption)
    before = validation.images(pipeline) if accelerator.is_main_process else []
    trainable_models = steps.trainable_models(pipeline, train_text_encoder)
    if use_lora:
        if not pipeline.has_lora:
            pipeline.add_lora(rank=settings["rank"], alpha=settings["lora_alpha"], text_encoder=train_text_encoder)
        parameters = steps.mark_lora_trainable(pipeline, trainable_models)
    else:
        parameters = steps.mark_fully_trainable(pipeline, trainable_models)
    if settings["gradient_checkpointing"]:
        pipeline.denoiser.enable_gradient_checkpointing()

    # 3. Steps, optimizer and schedule; accelerate wraps the models (DDP) and the optimizer (mixed precision).
    epoch_length = max(instance_count, class_count)
    setup = set_up_training(accelerator, settings, example_count=epoch_length, models=trainable_models, parameters=parameters,
                            use_8bit_adam=use_8bit_adam, description=description)
    denoiser = setup.models[0]
    text_encoders = dict(pipeline.text_encoders)
    if train_text_encoder:  # the wrapped ones that train, the others as they are
        text_encoders.update(zip(pipeline.family.lora_text_encoders, setup.models[1:]))
    objective = steps.training_objective(settings)
    generator = torch.Generator("cpu").manual_seed(seed + 1_000_003 * accelerator.process_index)

    # 4. Resume from a checkpoint of this run (never another run's).
    run = run_fingerprint(settings, total_steps=setup.plan.total_steps, num_processes=accelerator.num_processes,
                          data_sha256=steps.examples_digest(examples))
    checkpoints = RunCheckpoints(output, settings["checkpointing_steps"], settings["checkpoints_total_limit"], run,
                                 steps.trainable_parameters(pipeline, trainable_models), resume_settings, {"noise": generator},
                                 save_checkpoint)
    resumed = resume_run(checkpoints, settings["resume_from_checkpoint"], setup)

    # 5. The loop: each batch holds instance examples and, with prior preservation, as many class examples.
    def epoch_batches(epoch_index: int) -> list[list[int]]:
        order = steps.epoch_order(epoch_length, seed, epoch_index)
        return shard_batches(steps.full_batches(order, settings["train_batch_size"], accelerator.num_processes), accelerator)

    def batch_loss(batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        instance_batch = [index % instance_count for index in batch]
        class_batch = [instance_count + index % class_count for index in batch] if class_count else []
        losses = steps.denoising_losses(pipeline, denoiser, text_encoders, cache, instance_batch + class_batch, generator,
                                        objective=objective, device=accelerator.device)
        loss = losses[:len(instance_batch)].mean()
        if class_batch:
            loss = loss + settings["prior_loss_weight"] * losses[len(instance_batch):].mean()
        return loss, loss

    run_epochs(accelerator, setup, settings, checkpoints=checkpoints, resumed=resumed, epoch_batches=epoch_batches,
               batch_loss=batch_loss, end_of_epoch=validation.at_epoch_end(pipeline, accelerator, output), description=description)
    accelerator.wait_for_everyone()

    # 6. Training is over: the models back in eval mode, frozen, without gradient checkpointing.
    for model in trainable_models:
        model.eval()
        model.requires_grad_(False)
    if settings["gradient_checkpointing"]:
        pipeline.denoiser.disable_gradient_checkpointing()
    return validation, before
