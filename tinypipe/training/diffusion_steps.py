"""Small pieces shared by the diffusion trainers (LoRA, DreamBooth, textual inversion).

Each is a plain function; the trainers read top to bottom and call these for the parts that are the
same in all of them: the LoRA settings, caching VAE latents and the family's conditioning, what trains, the data
order and batches, the denoising loss (the family's objective), and validation images. Nothing here knows a
model family: the pipeline's `family` (`tinypipe.families`) says how prompts and images condition its denoiser.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from PIL import Image

from ..errors import ConfigError
from ..data.images import ImageExample, cropped_image_tensor, resized_size
from ..families import TrainingObjective
from .loop import EpochEnd, end_of_epoch_due
from .tracking import log_images
from .run_fingerprint import content_digest
from .settings import check_existing_lora

logger = logging.getLogger(__name__)

__all__ = [
    "ExampleCache", "resolve_lora_settings", "log_data_summary", "native_resolution", "training_objective",
    "resolve_objective_settings", "tokenize",
    "encode_text", "encode_examples", "examples_digest",
    "mark_lora_trainable", "mark_fully_trainable", "trainable_models", "trainable_parameters", "epoch_order",
    "full_batches", "denoising_losses", "Validation", "validation_images", "image_grid", "save_images", "save_before_after",
    "labelled_before_after", "before_after_box", "BEFORE_AFTER_LABEL_WIDTH", "BEFORE_AFTER_HEADER_HEIGHT",
]

DEFAULT_LORA_RANK = 4


def resolve_lora_settings(pipeline, *, rank: Optional[int], lora_alpha: Optional[float], train_text_encoder: bool) -> tuple:
    """The rank and alpha of the LoRA that trains: a new one's (rank 4 unless given; alpha the rank unless given, as
    diffusers' training scripts set it), or the pipeline's own. The alpha is returned as the number that scales the
    update (`lora_alpha / rank`), never None, so that the run records what ran.

    Raises:
        ConfigError: The pipeline has a LoRA and `rank` / `lora_alpha` differ from its own, or `train_text_encoder`
            asks for a text-encoder LoRA it does not have.
    """
    if not pipeline.has_lora:
        rank = DEFAULT_LORA_RANK if rank is None else rank
        return rank, rank if lora_alpha is None else lora_alpha
    config = pipeline.config
    check_existing_lora({"rank": config["lora_rank"], "lora_alpha": config["lora_alpha"] or config["lora_rank"]},
                        {"rank": rank, "lora_alpha": lora_alpha})
    if train_text_encoder and not config["text_encoder_lora"]:
        raise ConfigError("train_text_encoder=True, but the pipeline's LoRA has no text-encoder part, so nothing of the text "
                          "encoder would train. Set train_text_encoder=False, or start from a pipeline without a LoRA.")
    return config["lora_rank"], config["lora_alpha"] or config["lora_rank"]


def log_data_summary(examples: Sequence[ImageExample], class_examples: Sequence[ImageExample] = (), *, resolution: int,
                     center_crop: bool, random_flip: bool) -> None:
    """A DEBUG record of the training data: counts, where it came from, captions, and how it is cropped."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    captions = sorted({example.caption for example in examples})
    logger.debug("Data: %d training images (first %s), %d distinct captions (e.g. %r); %d class images; resolution %d, "
                 "%s crop%s.", len(examples), examples[0].source if examples else None, len(captions), captions[:3],
                 len(class_examples), resolution, "center" if center_crop else "random",
                 ", random flips" if random_flip else "")


def native_resolution(pipeline) -> int:
    """The image size the base model was made for (its family's `native_resolution`: SD 1.5 512, SDXL 1024)."""
    return pipeline.family.native_resolution(pipeline.pipe)


def training_objective(settings: Mapping[str, Any]) -> TrainingObjective:
    """The loss settings of a run that the family's `training_losses` honours or refuses (the flow-matching ones,
    absent from a recipe that has none, at their defaults; `guidance_scale` None as 1.0)."""
    guidance_scale = settings.get("guidance_scale")
    return TrainingObjective(snr_gamma=settings["snr_gamma"], noise_offset=settings["noise_offset"],
                             weighting_scheme=settings.get("weighting_scheme", "none"),
                             logit_mean=settings.get("logit_mean", 0.0), logit_std=settings.get("logit_std", 1.0),
                             mode_scale=settings.get("mode_scale", 1.29),
                             guidance_scale=1.0 if guidance_scale is None else guidance_scale)


def resolve_objective_settings(pipeline, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check the run's loss settings against the pipeline's family before any heavy work, and resolve what the family
    decides: `{"guidance_scale": ...}` (given, or the family's default, e.g. 3.5 for FLUX.1-dev), to record.

    Raises:
        ConfigError: A setting the family cannot honour (`snr_gamma` for flow matching, `weighting_scheme` for SD, ...).
    """
    guidance_scale = settings.get("guidance_scale")
    if guidance_scale is None:
        guidance_scale = pipeline.family.default_guidance_scale(pipeline.pipe)
    objective = training_objective({**settings, "guidance_scale": guidance_scale})
    guidance_embeds = bool(getattr(pipeline.denoiser.config, "guidance_embeds", False))
    pipeline.family.check_objective(objective, guidance_embeds=guidance_embeds)
    if settings["resolution"] is not None:
        pipeline.family.check_resolution(pipeline.pipe, settings["resolution"])
    return {"guidance_scale": guidance_scale}


@dataclass
class ExampleCache:
    """What the loop needs of each example, computed once: VAE posterior, token ids, text and image conditioning.

    `latent_mean`/`latent_std` are `[N, C, h, w]` (with `random_flip`, `[2N, ...]`: the flipped copies follow), and so
    is each `image_conditioning` tensor (SDXL's `add_time_ids`, from each image's original size and crop); `input_ids`
    holds `{tokenizer: [N, tokens]}`; `text_conditioning` the family's encoded prompts `{name: [N, ...]}` when the
    text encoders are frozen, else None (they run every step).
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    vae: Any
    input_ids: dict[str, torch.Tensor]
    text_conditioning: Optional[dict[str, torch.Tensor]]
    image_conditioning: dict[str, torch.Tensor]
    flipped: bool

    def __len__(self) -> int:
        return len(next(iter(self.input_ids.values())))


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's length, as the text encoder expects."""
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def encode_text(pipeline, input_ids: Mapping[str, torch.Tensor], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """The family's text conditioning of every row of `input_ids`, by batches, in float32 (frozen text encoders)."""
    count = len(next(iter(input_ids.values())))
    parts = [pipeline.family.encode_prompts(pipeline.pipe, {name: ids[start:start + batch_size] for name, ids in input_ids.items()},
                                            pipeline.text_encoders)
             for start in range(0, count, batch_size)]
    return {name: torch.cat([part[name].float() for part in parts]) for name in parts[0]}


@torch.no_grad()
def encode_examples(pipeline, examples: Sequence[ImageExample], resolution: int, *, center_crop: bool, random_flip: bool,
                    seed: int, cache_text: bool, device: torch.device, batch_size: int = 8) -> ExampleCache:
    """Run the frozen VAE (and text encoders) over every example once; record each image's size and crop.

    With `random_flip`, both orientations are encoded, so a flip costs nothing per step (a flipped copy's crop is where
    it lies in the mirrored image). With `center_crop=False`, each image's random crop is drawn once (seeded) rather
    than every step.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    crops = [cropped_image_tensor(example.image, resolution, center_crop=center_crop, generator=generator) for example in examples]
    pixels = torch.stack([tensor for tensor, _ in crops])
    original_sizes = [(example.image.height, example.image.width) for example in examples]
    corners = [corner for _, corner in crops]
    if random_flip:
        pixels = torch.cat([pixels, pixels.flip(-1)])
        original_sizes = original_sizes + original_sizes
        corners = corners + [(top, resized_size(example.image.size, resolution)[0] - resolution - left)
                             for example, (top, left) in zip(examples, corners)]
    vae = pipeline.vae
    means, stds = [], []
    for start in range(0, len(pixels), batch_size):
        posterior = vae.encode(pixels[start:start + batch_size].to(device, vae.dtype)).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    input_ids = pipeline.family.tokenize(pipeline.pipe, [example.caption for example in examples])
    text_conditioning = encode_text(pipeline, input_ids, batch_size) if cache_text else None
    image_conditioning = pipeline.family.image_conditioning(original_sizes, corners, resolution)
    return ExampleCache(torch.cat(means), torch.cat(stds), vae, input_ids, text_conditioning, image_conditioning, random_flip)


def examples_digest(examples: Sequence[ImageExample]) -> str:
    """SHA-256 of the training images (mode, size, pixels) and captions: the data part of a run's fingerprint."""
    return content_digest(part for example in examples for part in
                          (example.image.mode, str(example.image.size), example.image.tobytes(), example.caption or ""))


def _freeze_pipeline(pipeline) -> None:
    for model in (pipeline.denoiser, pipeline.vae, *pipeline.text_encoders.values()):
        model.requires_grad_(False)


def mark_lora_trainable(pipeline, trainable_models: Sequence[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Freeze the whole pipeline, then let only the LoRA weights of `trainable_models` train (in fp32)."""
    _freeze_pipeline(pipeline)
    parameters = []
    for model in trainable_models:
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.data = parameter.data.float()
                parameter.requires_grad_(True)
                parameters.append(parameter)
    return parameters


def mark_fully_trainable(pipeline, trainable_models: Sequence[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Freeze the whole pipeline, then let every weight of `trainable_models` train (in fp32), as a full fine-tune."""
    _freeze_pipeline(pipeline)
    parameters = []
    for model in trainable_models:
        if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
            model.to(torch.float32)
        model.requires_grad_(True)
        parameters.extend(model.parameters())
    return parameters


def trainable_models(pipeline, train_text_encoder: bool) -> list[torch.nn.Module]:
    """What trains in a denoising fine-tune: the denoiser, and with `train_text_encoder` the family's
    `lora_text_encoders` (every text encoder but FLUX.1's T5)."""
    encoders = [pipeline.text_encoders[name] for name in pipeline.family.lora_text_encoders] if train_text_encoder else []
    return [pipeline.denoiser] + encoders


def trainable_parameters(pipeline, trainable_models: Sequence[torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """The parameters that train, by name (`unet.<param>`, `text_encoder.<param>`, ...), as checkpoints store them."""
    names = {id(model): name for name, model in pipeline.text_encoders.items()}
    names[id(pipeline.denoiser)] = pipeline.family.denoiser
    return {f"{names[id(model)]}.{name}": parameter for model in trainable_models
            for name, parameter in model.named_parameters() if parameter.requires_grad}


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch; a pure function of (seed, epoch), so resuming repeats it."""
    generator = torch.Generator("cpu").manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def full_batches(order: Sequence[int], batch_size: int, num_processes: int) -> list[list[int]]:
    """An epoch's batches of `batch_size` examples, as many as the processes can share evenly, every one full.

    The order wraps around to its start to fill the last batches (`shard_batches` then gives each process its share).
    """
    per_step = batch_size * num_processes
    count = max(1, -(-len(order) // per_step)) * per_step
    padded = [order[index % len(order)] for index in range(count)]
    return [padded[start:start + batch_size] for start in range(0, count, batch_size)]


def denoising_losses(pipeline, denoiser, text_encoders: Optional[Mapping[str, torch.nn.Module]], cache: ExampleCache,
                     batch: Sequence[int], generator: torch.Generator, *, objective: TrainingObjective, device: torch.device,
                     conditioning: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
    """The per-example denoising loss of one batch: the family's training objective on cached latents.

    Args:
        pipeline: The `DiffusionPipeline` (its family, VAE config and scheduler config).
        denoiser: The denoiser to call (accelerate-wrapped when it trains).
        text_encoders: The text encoders to run when the cache holds no text conditioning (wrapped when they train).
        cache: Cached latents and conditioning. `batch`: example indices into it.
        generator: CPU generator for every random draw of the step (flip, posterior sample, then the family's noise
            and timesteps).
        objective: The run's loss settings (`training_objective`).
        conditioning: Text conditioning to use instead of the cache's (textual inversion computes its own).

    Returns:
        A `[len(batch)]` tensor of losses.
    """
    family = pipeline.family
    index = torch.tensor(list(batch))
    if cache.flipped:
        index = index + len(cache) * torch.randint(0, 2, (len(index),), generator=generator)
    mean, std = cache.latent_mean[index], cache.latent_std[index]
    latents = family.latents(cache.vae, mean + std * torch.randn(mean.shape, generator=generator)).to(device)
    if conditioning is None:
        ids = torch.tensor(list(batch))
        if cache.text_conditioning is not None:
            conditioning = {name: value[ids].to(device) for name, value in cache.text_conditioning.items()}
        else:
            conditioning = family.encode_prompts(pipeline.pipe, {name: value[ids] for name, value in cache.input_ids.items()},
                                                 text_encoders)
    conditioning = {**conditioning, **{name: value[index].to(device) for name, value in cache.image_conditioning.items()}}
    return family.training_losses(pipeline.pipe, denoiser, latents, conditioning, generator, objective)


@dataclass
class Validation:
    """The validation images of a diffusion run: what they show, how they are sampled, and how often.

    The same seeds are used every time, so the images before training, after each validated epoch and after
    training compare directly. Each prompt gets `count` images.

    Attributes:
        prompts: The prompts, in order (`validation_prompt`, then `validation_prompts`).
        last_step: The optimizer step of the newest end-of-epoch work (the "fine-tuned" step of `before_after.png`).
    """

    prompts: tuple[str, ...]
    count: int
    seed: int
    inference_steps: int
    guidance_scale: float
    every_epochs: int
    last_step: int = 0

    @classmethod
    def of(cls, settings: Mapping[str, Any], *, default_prompt: str) -> "Validation":
        """The validation of a run with these (effective) arguments: `validation_prompt` and then each of
        `validation_prompts` (when given), else `default_prompt`."""
        prompts = ([settings["validation_prompt"]] if settings["validation_prompt"] else []) + \
            [prompt for prompt in settings.get("validation_prompts") or [] if prompt != settings["validation_prompt"]]
        return cls(tuple(prompts or [default_prompt]), settings["num_validation_images"], settings["seed"],
                   settings["validation_inference_steps"], settings["validation_guidance_scale"], settings["validation_epochs"])

    @property
    def prompt(self) -> str:
        """The first prompt."""
        return self.prompts[0]

    def images(self, pipeline) -> list[Image.Image]:
        """The validation images of `pipeline` as it is now: `count` for each prompt, in prompt order."""
        return [image for prompt in self.prompts for image in
                validation_images(pipeline, prompt, self.count, self.seed, self.inference_steps, self.guidance_scale)]

    def by_prompt(self, images: Sequence[Image.Image]) -> list[list[Image.Image]]:
        """`images` (as `images` returns them) split into one list per prompt."""
        return [list(images[index * self.count:(index + 1) * self.count]) for index in range(len(self.prompts))]

    def at_epoch_end(self, pipeline, accelerator, output: Optional[Path]) -> Callable[[EpochEnd], None]:
        """The end-of-epoch work of `run_epochs`: `validation/epoch-NNNN/` every `every_epochs` epochs and at the end,
        also sent to the run's trackers (`report_to`)."""

        def end_of_epoch(epoch: EpochEnd) -> None:
            self.last_step = epoch.global_step
            if not accelerator.is_main_process or not end_of_epoch_due(epoch.index, self.every_epochs, epoch.is_last):
                return
            if output is None and not accelerator.trackers:
                return
            rows = self.by_prompt(self.images(pipeline))
            if output is not None:
                save_images([image for row in rows for image in row], output / "validation" / f"epoch-{epoch.index + 1:04d}",
                            rows=len(rows))
            log_images(accelerator, {f"validation/prompt-{index}": row for index, row in enumerate(rows)}, epoch.global_step)

        return end_of_epoch

    def save_before_after(self, pipeline, before: Sequence[Image.Image], output: Path, accelerator: Any = None) -> None:
        """Write `validation/before_after.png`: for each prompt, the base model's images above the fine-tuned ones,
        labelled with the prompt, "base" and "fine-tuned" at `last_step` (and send it to the trackers, if any)."""
        path = output / "validation" / "before_after.png"
        save_before_after(self.by_prompt(before), self.by_prompt(self.images(pipeline)), path, prompts=self.prompts,
                          step=self.last_step)
        if accelerator is not None and accelerator.trackers and path.is_file():
            with Image.open(path) as grid:
                log_images(accelerator, {"validation/before_after": [grid.convert("RGB")]}, self.last_step)


def validation_images(pipeline, prompt: str, count: int, seed: int, num_inference_steps: int, guidance_scale: float) -> list[Image.Image]:
    """`count` seeded images for `prompt` (the same seeds before and after training).

    The models run in eval mode (as the saved repo does when reloaded), and go back to their mode afterwards.
    """
    if count < 1:
        return []
    models = [pipeline.denoiser, *pipeline.text_encoders.values(), pipeline.vae]
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        return pipeline.generate(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                                 num_images_per_prompt=count)
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def image_grid(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """Paste rows of equally sized images into one image."""
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(row) for row in rows), height * len(rows)), "white")
    for row_index, row in enumerate(rows):
        for column, image in enumerate(row):
            grid.paste(image, (column * width, row_index * height))
    return grid


def save_images(images: Sequence[Image.Image], folder: Path, rows: int = 1) -> None:
    """Write `image-00.png ...` and `grid.png` (the images in `rows` rows, one per prompt) into `folder`."""
    if not images:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(folder / f"image-{index:02d}.png")
    per_row = -(-len(images) // rows)
    image_grid([images[start:start + per_row] for start in range(0, len(images), per_row)]).save(folder / "grid.png")


# The labelled before/after grid: a label column on the left, a line with the prompt above each prompt's two rows.
BEFORE_AFTER_LABEL_WIDTH = 84
BEFORE_AFTER_HEADER_HEIGHT = 16


def before_after_box(prompt_index: int, row: int, column: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where an image sits in `before_after.png`: prompt `prompt_index`, row 0 (base) or 1 (fine-tuned), `column`.

    Returns:
        The `(left, top, right, bottom)` box, as `Image.crop` takes it.
    """
    width, height = image_size
    left = BEFORE_AFTER_LABEL_WIDTH + column * width
    top = prompt_index * (BEFORE_AFTER_HEADER_HEIGHT + 2 * height) + BEFORE_AFTER_HEADER_HEIGHT + row * height
    return left, top, left + width, top + height


def labelled_before_after(before: Sequence[Sequence[Image.Image]], after: Sequence[Sequence[Image.Image]],
                          prompts: Sequence[str], step: int) -> Image.Image:
    """The before/after grid: per prompt, its text, then a "base" row and a "fine-tuned, step N" row (same seeds).

    Args:
        before: The base model's images, one list per prompt.
        after: The fine-tuned model's images, one list per prompt.
        prompts: The prompts, in the same order.
        step: The optimizer step of the fine-tuned images.
    """
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    width, height = before[0][0].size
    columns = max(len(row) for row in list(before) + list(after))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(int(measure.textlength(prompt, font=font)) for prompt in prompts) + 8
    grid = Image.new("RGB", (max(BEFORE_AFTER_LABEL_WIDTH + columns * width, text_width),
                             len(prompts) * (BEFORE_AFTER_HEADER_HEIGHT + 2 * height)), "white")
    draw = ImageDraw.Draw(grid)
    for index, prompt in enumerate(prompts):
        top = before_after_box(index, 0, 0, (width, height))[1] - BEFORE_AFTER_HEADER_HEIGHT
        draw.text((4, top + 2), prompt, fill="black", font=font)
        for row, (images, label) in enumerate(((before[index], "base"), (after[index], f"fine-tuned\nstep {step}"))):
            label_top = before_after_box(index, row, 0, (width, height))[1]
            draw.multiline_text((4, label_top + 2), label, fill="black", font=font)
            for column, image in enumerate(images):
                grid.paste(image, before_after_box(index, row, column, (width, height))[:2])
    return grid


def save_before_after(before: Sequence[Sequence[Image.Image]], after: Sequence[Sequence[Image.Image]], path: Path, *,
                      prompts: Sequence[str], step: int) -> None:
    """Write the labelled before/after grid (`labelled_before_after`) to `path`; nothing when there are no images."""
    if any(before) and any(after):
        path.parent.mkdir(parents=True, exist_ok=True)
        labelled_before_after(before, after, prompts, step).save(path)
