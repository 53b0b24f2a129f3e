"""`TextualInversionTrainer`: teach a Stable-Diffusion pipeline a new token for a concept, training only its embedding.

```python
from tinypipe.models import DiffusionPipeline
from tinypipe.trainers import TextualInversionTrainer

trainer = TextualInversionTrainer()
trainer.init_model(DiffusionPipeline("tinypipe/tiny-sd"))
pipeline = trainer.train(data="my_toy/", placeholder_token="<cat-toy>", initializer_token="toy", output_dir="out")
pipeline.generate("a photo of a <cat-toy> on the beach")
```

Only the embedding rows of the new token(s) train; every other weight of every model - every other row of
the text encoder's embedding matrix included - stays bit-identical. `out/model/learned_embeds.safetensors`
holds `{placeholder_token: tensor[num_vectors, dim]}`, which diffusers reads with
`pipe.load_textual_inversion("out/model")`.

The loop follows diffusers' `textual_inversion.py` (prompt templates, `repeats`, AdamW on the embedding),
with the VAE latents computed once instead of every step; the text encoder runs every step, since its
input embedding is what trains.
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
from ..models.embedding_files import check_new_token, vector_token_names
from ..training import diffusion_steps as steps
from ..training.checkpoints import load_checkpoint, save_checkpoint
from ..data.images import load_image_examples
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

__all__ = ["TextualInversionTrainer", "TextualInversionTrainConfig", "OBJECT_TEMPLATES", "STYLE_TEMPLATES"]

# The prompt templates of diffusers' textual_inversion.py (from the textual inversion paper's code).
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}", "a photo of a clean {}",
    "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}", "a photo of the cool {}",
    "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}", "a photo of the {}",
    "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}", "a rendition of the {}",
    "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}",
    "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}", "a large painting in the style of {}",
)
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


class TrainableTokenRows(torch.nn.Module):
    """A token embedding whose rows `first_id ... first_id + n - 1` are a separate trainable parameter.

    The original embedding is used as it is (frozen) for every other token, so its other rows cannot
    change, not even through weight decay; `new_rows` is all the optimizer sees.
    """

    def __init__(self, embedding: torch.nn.Embedding, first_id: int, count: int):
        super().__init__()
        self.embedding = embedding
        self.first_id, self.count = first_id, count
        self.new_rows = torch.nn.Parameter(embedding.weight[first_id:first_id + count].detach().clone().float())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        frozen = self.embedding(input_ids)
        offsets = input_ids - self.first_id
        is_new = ((offsets >= 0) & (offsets < self.count)).unsqueeze(-1)
        return torch.where(is_new, self.new_rows[offsets.clamp(0, self.count - 1)].to(frozen.dtype), frozen)


class TextualInversionTrainer(TrainerConfigMixin):
    """Learns the embedding of a new token (textual inversion) for the concept shown in the training images.

    Every hyperparameter is a `FromConfig` argument of `train`: give it at call time, or in the
    `train_config` given to the constructor.

    Example:
    ```python
    trainer = TextualInversionTrainer(train_config=TextualInversionTrainConfig(placeholder_token="<sks-shape>",
                                                                               initializer_token="circle"))
    pipeline = trainer.train(data="tinypipe/shapes", max_train_steps=200, output_dir="out")
    ```
    """

    @save_config
    def __init__(self):
        self.model: Optional[DiffusionPipeline] = None

    def init_model(self, model: Any) -> "TextualInversionTrainer":
        """Set the pipeline to teach the token to: a `DiffusionPipeline`, or a base model id / folder / built-in name."""
        self.model = model if isinstance(model, DiffusionPipeline) else DiffusionPipeline(str(model))
        return self

    @set_from_config(aliases={"epoch": "num_train_epochs"})
    def train(
        self,
        data: FromConfig = None,
        filter_fn: Ignore = None,
        base_model: FromConfig = TINY_SD,
        placeholder_token: FromConfig = None,
        initializer_token: FromConfig = None,
        num_vectors: FromConfig = 1,
        learnable_property: FromConfig = "object",
        repeats: FromConfig = 100,
        validation_prompt: FromConfig = None,
        num_validation_images: FromConfig = 4,
        validation_epochs: FromConfig = 10,
        num_train_epochs: FromConfig = 1,
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
        max_grad_norm: FromConfig = None,
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
        """Learn `placeholder_token` from the images in `data` and return the pipeline that knows it.

        Args:
            data: Images of the concept: a folder, a JSON file, a list of PIL images / paths / (image, caption)
                pairs, a `datasets.Dataset`, or `"tinypipe/shapes"`. Their captions are not used: the prompts
                come from the templates of `learnable_property`.
            filter_fn: Keeps the `ImageExample`s it returns True for.
            base_model: Base model used when `init_model` was not called.
            placeholder_token: The new token, e.g. `"<cat-toy>"`; must not be known to the tokenizer yet.
            initializer_token: One existing token whose embedding starts the new one, e.g. `"toy"`.
            num_vectors: Embedding vectors of the concept; the extra ones are tokens `<tok>_1 ... <tok>_{n-1}`.
            learnable_property: `"object"` or `"style"`: which prompt templates train it.
            repeats: Times each image appears per epoch (as in diffusers).
            validation_prompt: Prompt of the validation images (defaults to the first template with the token).
            num_validation_images: Images per validation.
            validation_epochs: Validate every this many epochs (and at the end).
            num_train_epochs: Passes over the (repeated) data. `epoch` is the same: the one given at call time wins
                over a saved one, and the run records the count as `num_train_epochs`.
            max_train_steps: Optimizer steps; overrides the epochs when given.
            train_batch_size: Images per batch per process.
            gradient_accumulation_steps: Batches per optimizer step.
            learning_rate: Peak learning rate.
            scale_lr: Multiply the learning rate by batch size x accumulation x processes.
            lr_schedule: linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup.
            warmup_steps: Warm-up optimizer steps. `lr_num_cycles`, `lr_power`: for the restart/polynomial schedules.
            use_8bit_adam: bitsandbytes' 8-bit AdamW where it runs (CUDA); otherwise AdamW, said once.
            adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW settings.
            max_grad_norm: Gradient clipping norm; None (as diffusers' script) for none.
            mixed_precision: "no", "fp16" (GPU) or "bf16".
            gradient_checkpointing: Trade compute for memory in the UNet.
            snr_gamma: Min-SNR loss weighting gamma; None for plain MSE.
            noise_offset: Offset noise strength.
            resolution: Training resolution; defaults to the model's native one.
            center_crop: Center crop (else random crop). `random_flip`: random horizontal flips.
            seed: Seed of everything random in the run.
            checkpointing_steps: Write a checkpoint every this many optimizer steps (needs `output_dir`).
            checkpoints_total_limit: Keep at most this many checkpoints.
            resume_from_checkpoint: "latest" or a checkpoint folder.
            output_dir: Where the repo, validation images and checkpoints go; None writes nothing.
            validation_inference_steps, validation_guidance_scale: Settings of the validation images.

        Returns:
            The `DiffusionPipeline` with the new token.

        Raises:
            ConfigError: Settings that cannot work (a known placeholder token, an initializer that is not one
                token, ...). DataError: Unusable data. TrainingError: The loss became NaN/inf.
        """
        arguments = {name: value for name, value in locals().items() if name in TextualInversionTrainConfig._valid_argument_names()}
        # 1. Check the settings before any heavy work.
        check_training_settings(arguments, "TextualInversionTrainer.train()")
        num_train_epochs = epoch if epoch is not None else num_train_epochs
        if data is None:
            raise ConfigError("TextualInversionTrainer.train() needs data: images of the concept, as a folder, a JSON file, "
                              "a list of images, a datasets.Dataset, or 'tinypipe/shapes'.")
        if not isinstance(placeholder_token, str) or not isinstance(initializer_token, str):
            raise ConfigError("TextualInversionTrainer.train() needs placeholder_token (the new token, e.g. '<cat-toy>') "
                              "and initializer_token (one existing word that starts it, e.g. 'toy').")
        accelerator = make_accelerator(mixed_precision)
        seed_everything(seed)
        if self.model is None:
            self.init_model(base_model)
        pipeline = self.model
        tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder
        initializer_ids = tokenizer.encode(initializer_token, add_special_tokens=False)
        if len(initializer_ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(initializer_ids)
            raise ConfigError(f"initializer_token {initializer_token!r} is {len(initializer_ids)} tokens {pieces} for this "
                              "tokenizer; it must be exactly one. Choose a single common word close to the concept.")
        token_names = vector_token_names(placeholder_token, num_vectors)
        for name in token_names:
            check_new_token(tokenizer, name)
        # What is recorded is what runs: one name for the epoch count, the optimizer that runs.
        arguments.update(base_model=pipeline.config["base_model"], data=data if isinstance(data, (str, Path)) else None,
                         num_train_epochs=num_train_epochs, epoch=None, use_8bit_adam=runs_8bit_adam(use_8bit_adam))
        output = Path(output_dir) if output_dir is not None else None
        logger.info("Textual inversion training with %s", json.dumps(arguments, sort_keys=True, default=str))

        # 2. Data: read and check the images, cache their VAE latents; tokenize every template once.
        examples = load_image_examples(data, default_caption=placeholder_token, filter_fn=filter_fn)
        resolution = resolution or steps.native_resolution(pipeline)
        cache = steps.encode_examples(pipeline, examples, resolution, center_crop=center_crop, random_flip=random_flip,
                                      seed=seed, cache_text=False, device=accelerator.device)
        steps.log_data_summary(examples, resolution=resolution, center_crop=center_crop, random_flip=random_flip)
        placeholder_text = " ".join(token_names)
        templates = TEMPLATES[learnable_property]
        validation_prompt = validation_prompt or templates[0].format(placeholder_token)

        # 3. Model: add the token(s), started from the initializer's embedding; only their rows train.
        initial = text_encoder.get_input_embeddings().weight[initializer_ids[0]].detach().clone()
        new_ids = pipeline.add_textual_inversion(placeholder_token, initial.repeat(num_vectors, 1))
        template_ids = steps.tokenize(tokenizer, [template.format(placeholder_text) for template in templates])
        before = steps.validation_images(pipeline, validation_prompt, num_validation_images, seed,
                                         validation_inference_steps, validation_guidance_scale) if accelerator.is_main_process else []
        for model in (pipeline.unet, pipeline.vae, text_encoder):
            model.requires_grad_(False)
        original_embedding = text_encoder.get_input_embeddings()
        token_rows = TrainableTokenRows(original_embedding, new_ids[0], num_vectors)
        text_encoder.set_input_embeddings(token_rows)
        parameters = [token_rows.new_rows]
        if gradient_checkpointing:
            pipeline.unet.enable_gradient_checkpointing()

        # 4. Steps, optimizer and schedule.
        epoch_length = len(examples) * repeats
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
        (prepared_encoder,), optimizer = prepare_for_training(accelerator, [text_encoder], optimizer)
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
            steps.load_trainable(pipeline, [text_encoder], checkpoint, "placeholder_token, num_vectors")
            global_step = checkpoint.step
            logger.info("Resumed from %s at step %d", checkpoint_path, global_step)

        # 6. The loop: a random template per example, the text encoder run with the learned rows, the denoising loss.
        progress = tqdm(total=total_steps, initial=global_step, desc="Textual inversion", disable=not accelerator.is_main_process)
        try:
            for epoch_index in epochs_to_run(global_step, total_steps, updates_per_epoch):
                prepared_encoder.train()
                order = [index % len(examples) for index in steps.epoch_order(epoch_length, seed, epoch_index)]
                batches = steps.process_batches(order, train_batch_size, accelerator)
                for position in batches_to_run(global_step, total_steps, epoch_index, updates_per_epoch, gradient_accumulation_steps, len(batches)):
                    is_update = (position + 1) % gradient_accumulation_steps == 0 or position == len(batches) - 1
                    with no_sync_unless(accelerator, [prepared_encoder], is_update), accelerator.autocast():
                        chosen = torch.randint(0, len(templates), (len(batches[position]),), generator=generator)
                        text_embeddings = prepared_encoder(template_ids[chosen].to(accelerator.device))[0]
                        loss = steps.denoising_losses(pipeline.unet, None, noise_scheduler, cache, batches[position], generator,
                                                      snr_gamma=snr_gamma, noise_offset=noise_offset, device=accelerator.device,
                                                      text_embeddings=text_embeddings).mean()
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
                        save_checkpoint(output, global_step, trainable=steps.trainable_state(pipeline, [text_encoder]),
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
        finally:
            # 7. Put the learned rows into the embedding matrix and the original embedding module back.
            with torch.no_grad():
                original_embedding.weight[new_ids] = token_rows.new_rows.detach().to(original_embedding.weight.dtype)
            text_encoder.set_input_embeddings(original_embedding)
            text_encoder.eval()
            if gradient_checkpointing:
                pipeline.unet.disable_gradient_checkpointing()
        progress.close()
        accelerator.wait_for_everyone()

        # 8. The result: the pipeline with the token, and the repo with the effective configuration.
        self.set_method_config("train_config", TextualInversionTrainConfig(**arguments))
        if output is not None and accelerator.is_main_process:
            after = steps.validation_images(pipeline, validation_prompt, num_validation_images, seed,
                                            validation_inference_steps, validation_guidance_scale)
            steps.save_before_after(before, after, output / "validation" / "before_after.png")
            pipeline.save_pretrained(output)
            self.save_pretrained(output)
        accelerator.end_training()
        return pipeline


class TextualInversionTrainConfig(BaseArgsFromConfig):
    """The arguments of `TextualInversionTrainer.train`, as a config object (`update_config` rejects unknown keys).

    Example:
    ```python
    config = TextualInversionTrainConfig(placeholder_token="<cat-toy>", initializer_token="toy", num_vectors=2)
    trainer = TextualInversionTrainer(train_config=config)
    ```
    """

    @copy_signature(TextualInversionTrainer.train)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
