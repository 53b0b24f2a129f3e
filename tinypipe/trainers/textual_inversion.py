"""`TextualInversionTrainer`: teach a diffusion pipeline (SD 1/2, SDXL) a new token for a concept, training only its
embedding (in each text encoder: SDXL learns one set of vectors per encoder, as diffusers' `textual_inversion_sdxl.py`).

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
`pipe.load_textual_inversion("out/model")`; for SDXL it holds `{"clip_l": ..., "clip_g": ...}` (two
`load_textual_inversion` calls in diffusers; A1111 and ComfyUI read it as it is).

The loop follows diffusers' `textual_inversion.py` (prompt templates, `repeats`, AdamW on the embedding),
with the VAE latents computed once instead of every step; the text encoder runs every step, since its
input embedding is what trains.
"""

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from ..builtin.tiny_sd import TINY_SD
from ..config import BaseArgsFromConfig, FromConfig, Ignore, TrainerConfigMixin, copy_signature, save_config, set_from_config
from ..data.images import load_image_examples
from ..errors import ConfigError
from ..models.diffusion import DiffusionPipeline
from ..models.embedding_files import check_new_token, vector_token_names
from ..training import arguments as shared, diffusion_steps as steps, loop
from ..training.resume import RunCheckpoints, resume_run
from ..training.run_fingerprint import run_fingerprint

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

    Only the new token's embedding rows train, with prompts from the templates of `learnable_property`. A `train`
    argument not given at call time is taken from the `train_config` given to the constructor.

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
    @shared.document_shared_arguments
    def train(
        self,
        data: FromConfig = None,
        filter_fn: Ignore = None,
        base_model: shared.BaseModel = TINY_SD,
        placeholder_token: FromConfig = None,
        initializer_token: FromConfig = None,
        num_vectors: FromConfig = 1,
        learnable_property: FromConfig = "object",
        repeats: FromConfig = 100,
        validation_prompt: shared.ValidationPrompt = None,
        validation_prompts: shared.ValidationPrompts = None,
        num_validation_images: shared.NumValidationImages = 4,
        validation_epochs: shared.ValidationEpochs = 10,
        num_train_epochs: shared.NumTrainEpochs = 1,
        epoch: shared.Epoch = None,
        max_train_steps: shared.MaxTrainSteps = None,
        train_batch_size: shared.TrainBatchSize = 2,
        gradient_accumulation_steps: shared.GradientAccumulationSteps = 1,
        learning_rate: shared.LearningRate = 5e-4,
        scale_lr: shared.ScaleLr = False,
        lr_schedule: shared.LrSchedule = "constant",
        warmup_steps: shared.WarmupSteps = 0,
        lr_num_cycles: shared.LrNumCycles = 1,
        lr_power: shared.LrPower = 1.0,
        use_8bit_adam: shared.Use8bitAdam = False,
        adam_beta1: shared.AdamBeta1 = 0.9,
        adam_beta2: shared.AdamBeta2 = 0.999,
        adam_weight_decay: shared.AdamWeightDecay = 1e-2,
        adam_epsilon: shared.AdamEpsilon = 1e-8,
        max_grad_norm: shared.MaxGradNorm = None,
        mixed_precision: shared.MixedPrecision = "no",
        gradient_checkpointing: shared.GradientCheckpointing = False,
        snr_gamma: shared.SnrGamma = None,
        noise_offset: shared.NoiseOffset = 0.0,
        resolution: shared.Resolution = None,
        center_crop: shared.CenterCrop = True,
        random_flip: shared.RandomFlip = False,
        seed: shared.Seed = 0,
        checkpointing_steps: shared.CheckpointingSteps = 500,
        checkpoints_total_limit: shared.CheckpointsTotalLimit = None,
        resume_from_checkpoint: shared.ResumeFromCheckpoint = None,
        output_dir: shared.OutputDir = None,
        report_to: shared.ReportTo = "none",
        validation_inference_steps: shared.ValidationInferenceSteps = 25,
        validation_guidance_scale: shared.ValidationGuidanceScale = 7.5,
    ) -> DiffusionPipeline:
        """Learn `placeholder_token` from the images in `data` and return the pipeline that knows it.

        Args:
            data: Images of the concept: a folder, a JSON file, a list of PIL images / paths / (image, caption)
                pairs, a `datasets.Dataset`, or `"tinypipe/shapes"`. Their captions are not used: the prompts
                come from the templates of `learnable_property`.
            filter_fn: Keeps the `ImageExample`s it returns True for.
            placeholder_token: The new token, e.g. `"<cat-toy>"`; must not be known to the tokenizer yet.
            initializer_token: One existing token whose embedding starts the new one, e.g. `"toy"`.
            num_vectors: Embedding vectors of the concept; the extra ones are tokens `<tok>_1 ... <tok>_{n-1}`.
            learnable_property: `"object"` or `"style"`: which prompt templates train it.
            repeats: Times each image appears per epoch (as in diffusers).
            validation_prompt: Prompt of the validation images (defaults to the first template with the token).
            num_train_epochs: Passes over the (repeated) data.
            max_grad_norm: Gradient clipping norm; None (as diffusers' script) for none.

        Returns:
            The `DiffusionPipeline` with the new token.

        Raises:
            ConfigError: Settings that cannot work (a known placeholder token, an initializer that is not one
                token, ...). DataError: Unusable data. TrainingError: The loss became NaN/inf.
        """
        arguments = {name: value for name, value in locals().items() if name in TextualInversionTrainConfig._valid_argument_names()}
        # 1. Check every setting before any heavy work.
        accelerator = loop.start_run(arguments, "TextualInversionTrainer.train()", data_forms="images of the concept, as a "
                                     "folder, a JSON file, a list of images, a datasets.Dataset, or 'tinypipe/shapes'")
        if not isinstance(placeholder_token, str) or not isinstance(initializer_token, str):
            raise ConfigError("TextualInversionTrainer.train() needs placeholder_token (the new token, e.g. '<cat-toy>') "
                              "and initializer_token (one existing word that starts it, e.g. 'toy').")
        if self.model is None:
            self.init_model(base_model)
        pipeline = self.model
        pipeline.family.check_method("textual_inversion")
        initializer_ids = {}
        for component, tokenizer in zip(pipeline.family.text_encoders, pipeline.tokenizers.values()):
            ids = tokenizer.encode(initializer_token, add_special_tokens=False)
            if len(ids) != 1:
                pieces = tokenizer.convert_ids_to_tokens(ids)
                raise ConfigError(f"initializer_token {initializer_token!r} is {len(ids)} tokens {pieces} for this "
                                  "tokenizer; it must be exactly one. Choose a single common word close to the concept.")
            initializer_ids[component] = ids[0]
        token_names = vector_token_names(placeholder_token, num_vectors)
        for tokenizer in pipeline.tokenizers.values():
            for name in token_names:
                check_new_token(tokenizer, name)
        loop.record_effective_arguments(arguments, base_model=pipeline.config["base_model"])
        output = Path(output_dir) if output_dir is not None else None

        # 2. Data: read and check the images, cache their VAE latents; tokenize every template once.
        examples = load_image_examples(data, default_caption=placeholder_token, filter_fn=filter_fn)
        resolution = resolution or steps.native_resolution(pipeline)
        cache = steps.encode_examples(pipeline, examples, resolution, center_crop=center_crop, random_flip=random_flip,
                                      seed=seed, cache_text=False, device=accelerator.device)
        steps.log_data_summary(examples, resolution=resolution, center_crop=center_crop, random_flip=random_flip)
        templates = TEMPLATES[learnable_property]
        validation = steps.Validation.of(arguments, default_prompt=templates[0].format(placeholder_token))

        # 3. Model: add the token(s) to each text encoder, started from the initializer's embedding; only their rows train.
        text_encoders = pipeline.text_encoders
        initial = {component: encoder.get_input_embeddings().weight[initializer_ids[component]].detach().clone().repeat(num_vectors, 1)
                   for component, encoder in text_encoders.items()}
        keys = pipeline.family.embedding_keys
        pipeline.add_textual_inversion(placeholder_token, {keys[name]: rows for name, rows in initial.items()} if keys
                                       else initial[pipeline.family.text_encoders[0]])
        prompts = [template.format(" ".join(token_names)) for template in templates]
        template_ids = pipeline.family.tokenize(pipeline.pipe, prompts)
        before = validation.images(pipeline) if accelerator.is_main_process else []
        for model in (pipeline.denoiser, pipeline.vae, *text_encoders.values()):
            model.requires_grad_(False)
        original_embeddings, token_rows = {}, {}
        for (component, encoder), tokenizer in zip(text_encoders.items(), pipeline.tokenizers.values()):
            original_embeddings[component] = encoder.get_input_embeddings()
            token_rows[component] = TrainableTokenRows(original_embeddings[component],
                                                       tokenizer.convert_tokens_to_ids(placeholder_token), num_vectors)
            encoder.set_input_embeddings(token_rows[component])
        if gradient_checkpointing:
            pipeline.denoiser.enable_gradient_checkpointing()

        # 4. Steps, optimizer and schedule; resume from a checkpoint of this run (never another run's).
        epoch_length = len(examples) * repeats
        setup = loop.set_up_training(accelerator, arguments, example_count=epoch_length, models=list(text_encoders.values()),
                                     parameters=[rows.new_rows for rows in token_rows.values()], use_8bit_adam=use_8bit_adam, description="Textual inversion")
        wrapped_encoders = dict(zip(text_encoders, setup.models))
        objective = steps.training_objective(arguments)
        generator = torch.Generator("cpu").manual_seed(seed + 1_000_003 * accelerator.process_index)
        run = run_fingerprint(arguments, total_steps=setup.plan.total_steps, num_processes=accelerator.num_processes,
                              data_sha256=steps.examples_digest(examples))
        checkpoints = RunCheckpoints(output, checkpointing_steps, checkpoints_total_limit, run,
                                     steps.trainable_parameters(pipeline, list(text_encoders.values())),
                                     "placeholder_token, num_vectors", {"noise": generator})
        resumed = resume_run(checkpoints, resume_from_checkpoint, setup)

        # 5. The loop: a random template per example, the text encoders run with the learned rows, the denoising loss.
        def epoch_batches(epoch_index: int) -> list[list[int]]:
            order = [index % len(examples) for index in steps.epoch_order(epoch_length, seed, epoch_index)]
            return loop.shard_batches(steps.full_batches(order, train_batch_size, accelerator.num_processes), accelerator)

        def batch_loss(batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            chosen = torch.randint(0, len(templates), (len(batch),), generator=generator)
            conditioning = pipeline.family.encode_prompts(pipeline.pipe, {name: ids[chosen] for name, ids in template_ids.items()},
                                                          wrapped_encoders)
            loss = steps.denoising_losses(pipeline, pipeline.denoiser, None, cache, batch, generator, objective=objective,
                                          device=accelerator.device, conditioning=conditioning).mean()
            return loss, loss

        try:
            loop.run_epochs(accelerator, setup, arguments, checkpoints=checkpoints, resumed=resumed, epoch_batches=epoch_batches,
                            batch_loss=batch_loss, end_of_epoch=validation.at_epoch_end(pipeline, accelerator, output),
                            description="Textual inversion")
        finally:
            # 6. Put the learned rows into each embedding matrix and the original embedding modules back.
            for component, encoder in text_encoders.items():
                original, rows = original_embeddings[component], token_rows[component]
                with torch.no_grad():
                    original.weight[rows.first_id:rows.first_id + rows.count] = rows.new_rows.detach().to(original.weight.dtype)
                encoder.set_input_embeddings(original)
                encoder.eval()
            if gradient_checkpointing:
                pipeline.denoiser.disable_gradient_checkpointing()
        accelerator.wait_for_everyone()

        # 7. The result: the pipeline with the token, and the repo with the effective configuration.
        self.set_method_config("train_config", TextualInversionTrainConfig(**arguments))
        loop.save_run(self, pipeline, accelerator, output,
                      also_write=lambda output: validation.save_before_after(pipeline, before, output, accelerator))
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
