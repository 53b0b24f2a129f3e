"""Class images for prior preservation (DreamBooth paper, section 4.2), shared by the DreamBooth and LoRA trainers.

The class images are the user's (`class_data_dir`), topped up with images the base model generates for the class
prompt. As in diffusers' `train_dreambooth.py`, generated images are written into `class_data_dir` when one is
given, so a later run finds them there; without one they are cached in the tinypipe home under a key of base
model, revision, class prompt, resolution, seed and count. The log says how many were found and generated, and where.
"""

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..files import atomic_file, cached_folder
from ..builtin.diffusion_folders import builtin_diffusion_folder
from ..builtin.tiny_sd import is_builtin
from ..models.diffusion import DiffusionPipeline
from ..data.images import IMAGE_EXTENSIONS, ImageExample, load_image, load_image_examples

logger = logging.getLogger(__name__)

__all__ = ["CLASS_IMAGES_FOLDER", "check_prior_settings", "class_images_cache_key", "prepare_class_examples"]

CLASS_IMAGES_FOLDER = "class_images"


def check_prior_settings(class_prompt: Any) -> None:
    """Refuse prior preservation without a class prompt, saying what to give (the counts and weights are checked with
    every other setting, by `settings.check_training_settings`)."""
    if not isinstance(class_prompt, str) or not class_prompt.strip():
        raise ConfigError("with_prior_preservation=True needs class_prompt, the prompt of the subject's class "
                          "(e.g. 'a photo of a dog' for 'a photo of sks dog').")


def class_images_cache_key(pipeline: DiffusionPipeline, *, class_prompt: str, resolution: int, seed: int, count: int,
                           inference_steps: int, guidance_scale: float) -> Optional[dict]:
    """What the `count` generated class images for these settings are cached under; None for a pipeline that is not a base model.

    The key covers the base model (and, for a built-in or local one, its weights), the revision, the class prompt,
    the resolution, the seed, the count and the sampling settings, so changing any of them never reuses stale images.
    A pipeline that carries its own trained weights (LoRA, fine-tune, new tokens) is not cached.
    """
    config = pipeline.config
    if pipeline.has_lora or config["fine_tuned_components"] or config["textual_inversion_tokens"]:
        return None
    base_model = config["base_model"]
    key = {"base_model": base_model, "revision": config["revision"], "class_prompt": class_prompt, "resolution": resolution,
           "seed": seed, "count": count, "inference_steps": inference_steps, "guidance_scale": guidance_scale,
           "torch_dtype": str(config["torch_dtype"]), "weights": _local_weights_fingerprint(base_model)}
    return key


def _local_weights_fingerprint(base_model: str) -> Optional[str]:
    """A stamp of a built-in or local model's files (names, sizes, modification times); None for a hub id."""
    folder = builtin_diffusion_folder(base_model) if is_builtin(base_model) else Path(base_model)
    if not folder.is_dir():
        return None
    stamp = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            stamp.update(f"{path.relative_to(folder).as_posix()} {stat.st_size} {stat.st_mtime_ns}\n".encode("utf-8"))
    return stamp.hexdigest()


def _user_class_examples(folder: Path, class_prompt: str, limit: int) -> list[ImageExample]:
    """The first `limit` images of the user's class folder (sorted by name), captioned with the class prompt.

    A folder that does not exist yet is created (empty), as diffusers' `train_dreambooth.py` does: the class images are
    then all generated into it.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"class_data_dir (--prior-class-image-dir) {str(folder)!r} is a file, not a folder; give a folder "
                          "of class images (a new one is created and filled), or leave it out to generate them into the cache.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"class_data_dir (--prior-class-image-dir) {str(folder)!r} cannot be created ({error.strerror}); "
                          "give a folder you can write, or leave it out to generate the class images into the cache.") from None
    if not any(path.suffix.lower() in IMAGE_EXTENSIONS for path in folder.iterdir() if not path.name.startswith(".")):
        return []
    examples = load_image_examples(folder, default_caption=class_prompt)
    return [dataclasses.replace(example, caption=class_prompt) for example in examples[:limit]]


def _generate_class_images(pipeline: DiffusionPipeline, class_prompt: str, count: int, *, resolution: int, seed: int,
                           sample_batch_size: int, inference_steps: int, guidance_scale: float, show_progress: bool) -> list:
    """`count` images of the class prompt from the pipeline as it is now, batch `b` seeded with `seed + b`."""
    images = []
    with tqdm(total=count, desc="Generating class images", disable=not show_progress) as progress:
        for batch_index, start in enumerate(range(0, count, sample_batch_size)):
            size = min(sample_batch_size, count - start)
            images += pipeline.generate(class_prompt, num_inference_steps=inference_steps, guidance_scale=guidance_scale,
                                        seed=seed + batch_index, num_images_per_prompt=size, height=resolution, width=resolution)
            progress.update(size)
    return images


def _write_class_images(folder: Path, images: list, seed: int) -> list[Path]:
    """Save generated class images into the user's folder under new names (an existing file is never overwritten)."""
    paths = []
    for image in images:
        index = len(paths)
        while (path := folder / f"class-seed{seed}-{index:05d}.png").exists():
            index += 1
        with atomic_file(path) as partial:  # a reader never sees half an image
            image.save(partial, format="PNG")
        paths.append(path)
    return paths


def prepare_class_examples(pipeline: DiffusionPipeline, *, class_prompt: str, class_data_dir: Any, num_class_images: int,
                           resolution: int, seed: int, sample_batch_size: int, inference_steps: int, guidance_scale: float,
                           accelerator: Any = None) -> list[ImageExample]:
    """The class images of prior preservation: the user's first, topped up with generated ones to `num_class_images`.

    With `class_data_dir`, the missing images are generated into that folder (as diffusers does), so the next run
    finds them there; without one, they are generated into a cache in the tinypipe home (reused while the base
    model, prompt, resolution, seed, count and sampling settings are the same). Either way the log says how many
    images were found, how many generated, and where.

    Args:
        pipeline: The base pipeline that generates the missing images.
        class_prompt: Their prompt, and the caption of every class image.
        class_data_dir: A folder of the user's class images (created when it does not exist), or None. Its non-image
            files are skipped; a corrupt image is an error.
        num_class_images: How many class images to train with.
        resolution, seed, sample_batch_size, inference_steps, guidance_scale: Generation settings (part of the cache key).
        accelerator: With several processes, the main one generates and the others wait for it, then read the images.

    Returns:
        `num_class_images` examples captioned with `class_prompt`.

    Raises:
        ConfigError: `class_data_dir` is a file, or cannot be created. DataError: An image in it cannot be read.
    """
    show_progress = accelerator is None or accelerator.is_main_process
    several = accelerator is not None and accelerator.num_processes > 1

    def generate(count: int) -> list:
        return _generate_class_images(pipeline, class_prompt, count, resolution=resolution, seed=seed,
                                      sample_batch_size=sample_batch_size, inference_steps=inference_steps,
                                      guidance_scale=guidance_scale, show_progress=show_progress)

    # 1. The user's folder: use what is there, generate the rest into it.
    if class_data_dir is not None:
        folder = Path(class_data_dir)
        examples = _user_class_examples(folder, class_prompt, num_class_images)
        found, missing = len(examples), num_class_images - len(examples)
        if several:
            accelerator.wait_for_everyone()  # every process has counted before the main one adds images
        if missing:
            if show_progress:
                _write_class_images(folder, generate(missing), seed)
            if several:
                accelerator.wait_for_everyone()
            examples = _user_class_examples(folder, class_prompt, num_class_images)
        logger.info("Prior preservation: %d class images found in %s, %d generated into it.", found, folder.resolve(), missing)
        return examples

    # 2. No folder: from the cache, or generated now (by the main process; the others wait for it) and cached.
    settings = dict(class_prompt=class_prompt, resolution=resolution, seed=seed, count=num_class_images,
                    inference_steps=inference_steps, guidance_scale=guidance_scale)
    key = class_images_cache_key(pipeline, **settings)
    if key is None:
        logger.info("Prior preservation: generating %d class images (not cached: the pipeline has trained weights).",
                    num_class_images)
        return [ImageExample(image, class_prompt, f"generated class image {index}")
                for index, image in enumerate(generate(num_class_images))]
    built = []

    def build(folder: Path) -> None:
        for index, image in enumerate(generate(num_class_images)):
            image.save(folder / f"class-{index:05d}.png")
        built.append(folder)

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:32]
    folder = cached_folder(digest, key, build, area=CLASS_IMAGES_FOLDER)
    logger.info("Prior preservation: %d class images %s the cache %s.", num_class_images,
                "generated into" if built else "found in", folder)
    paths = sorted(folder.glob("class-*.png"))
    if len(paths) != num_class_images:
        raise DataError(f"The class image cache {folder} is incomplete; delete it and train again.")
    return [ImageExample(load_image(path), class_prompt, str(path)) for path in paths]
