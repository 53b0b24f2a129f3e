"""Turn the `data` a user hands a diffusion trainer into checked, captioned RGB images.

`data` may be a folder of images, a JSON / JSON Lines file of records, a Python list (of PIL images,
paths, `(image, caption)` pairs or records) or a `datasets.Dataset`. `load_image_examples` reads
every form (read by `data.image_sources`) into a list of `ImageExample`s: it decodes each image to upright
RGB and checks all of them before training starts, so a bad file fails in the first second rather than
hours in. `image_to_tensor` is the per-step transform (resize, crop, flip, scale to [-1, 1]).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .image_sources import BUILTIN_DATASETS, IMAGE_EXTENSIONS, METADATA_FILE, collect_records, list_some

__all__ = ["BUILTIN_DATASETS", "IMAGE_EXTENSIONS", "ImageExample", "check_caption_lengths", "cropped_image_tensor", "image_to_tensor", "load_image",
           "load_image_examples", "resized_size"]

logger = logging.getLogger(__name__)


@dataclass
class ImageExample:
    """One training image and its caption.

    Args:
        image (`PIL.Image.Image`): The image, in RGB mode, upright (EXIF orientation applied).
        caption (`str`, *optional*): The caption; `None` only while `filter_fn` runs, for an image
            that has no caption and no `default_caption`.
        source (`str`): Where the image came from, for messages: a file path, or `"data[3]"` for
            the fourth in-memory item.
    """

    image: Image.Image
    caption: str | None
    source: str


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file fully and return it upright and in RGB.

    The file is verified and completely decoded here, so a corrupt file fails now and not in the
    middle of training. Transparent pixels (RGBA, LA, palette transparency) are composited on white;
    16-bit and 32-bit grayscale is scaled to 8 bits by its bit depth; CMYK, 1-bit and float images
    are converted. An animated GIF, WebP or APNG gives its first frame, with a warning, as the
    diffusers training examples do.

    Args:
        path (`str` or `os.PathLike`): The image file.

    Returns:
        `PIL.Image.Image`: The image in RGB mode with its EXIF orientation applied.

    Raises:
        `DataError`: If the file does not exist, is empty, is not an image, is truncated or corrupt,
            or has more pixels than `PIL.Image.MAX_IMAGE_PIXELS` allows.

    Example:
        ```python
        >>> image = load_image("photos/dog.jpg")
        >>> image.mode
        'RGB'
        ```
    """
    image, frame_count = _read_image(Path(path))
    if frame_count > 1:
        logger.warning("%s is animated (%d frames); using its first frame.", path, frame_count)
    return image


def load_image_examples(
    data: Any,
    *,
    default_caption: str | None = None,
    filter_fn: Callable[[ImageExample], bool] | None = None,
    min_size: int = 8,
    max_aspect_ratio: float = 8.0,
) -> list[ImageExample]:
    """Read training data in any accepted form into checked `ImageExample`s.

    Accepted forms of `data`:
    - a folder: its image files, sorted by name (not searched recursively). Captions come from a
      `metadata.jsonl` with lines `{"file_name": "dog.png", "text": "..."}` (the Hugging Face
      imagefolder format), else from `dog.txt` next to `dog.png`. Other files are skipped with one
      warning; hidden files silently.
    - a `.json` file holding a list (or a `.jsonl` file with one per line) of path strings or
      records `{"image"|"file_name"|"path": ..., "caption"|"text"|"prompt": ...}`; relative paths
      are resolved against the JSON file's folder.
    - a list of PIL images, paths, `(image, caption)` pairs or records as above (relative paths
      resolved against the working directory).
    - a `datasets.Dataset` with an `image` column and an optional `text`, `caption` or `prompt`
      column.
    - the name of a built-in data set: `"tinypipe/shapes"` (red circles, captioned "a photo of sks circle").

    An image with no caption, or an empty one, gets `default_caption`. `filter_fn` sees each
    example after that fallback and before the size and caption checks, so it can drop images that
    would fail them.

    Args:
        data (`str`, `os.PathLike`, `list` or `datasets.Dataset`): The training data.
        default_caption (`str`, *optional*): The caption of images without one, e.g. DreamBooth's
            instance prompt. If `None`, every image must have its own caption.
        filter_fn (`Callable[[ImageExample], bool]`, *optional*): Keeps the examples it returns
            `True` for.
        min_size (`int`, *optional*, defaults to 8): The smallest width and height accepted.
        max_aspect_ratio (`float`, *optional*, defaults to 8.0): The largest long-side to short-side
            ratio accepted; a square crop of a longer image keeps only a sliver of it.

    Returns:
        `list[ImageExample]`: The examples, in a deterministic order.

    Raises:
        `DataError`: If `data` is missing, empty or malformed, an image cannot be read, is too small
            or too elongated, a caption is not a string, an image has no caption and
            `default_caption` is `None`, or `filter_fn` drops every example.

    Example:
        ```python
        >>> examples = load_image_examples("dog_photos/", default_caption="a photo of sks dog")
        >>> examples[0].caption
        'a photo of sks dog'
        ```
    """
    if min_size < 1 or max_aspect_ratio < 1:
        raise ValueError(f"min_size must be >= 1 and max_aspect_ratio >= 1, got {min_size} and {max_aspect_ratio}.")
    # 1. Gather the images (or their paths) and the captions given with them.
    records, description = collect_records(data)

    # 2. Read every image and fall back to `default_caption`.
    examples, animated_sources, empty_caption_ids = [], [], set()
    for record in records:
        if isinstance(record.image, Path):
            image, frame_count = _read_image(record.image)
        else:
            image, frame_count = _prepare_image(record.image, record.source)
        example = ImageExample(image=image, caption=record.caption or default_caption, source=record.source)
        examples.append(example)
        if frame_count > 1:
            animated_sources.append(record.source)
        if record.caption == "":
            empty_caption_ids.add(id(example))
    if animated_sources:
        logger.warning("Using the first frame of %d animated image(s): %s.", len(animated_sources),
                       list_some(animated_sources))

    # 3. The user's filter.
    if filter_fn is not None:
        kept = [example for example in examples if filter_fn(example)]
        if not kept:
            raise DataError(f"filter_fn dropped all {len(examples)} examples of {description}; loosen it.")
        logger.info("filter_fn kept %d of %d examples.", len(kept), len(examples))
        examples = kept

    # 4. Check sizes and captions, reporting every problem at once.
    problems = [problem for example in examples if (problem := _size_problem(example, min_size, max_aspect_ratio))]
    uncaptioned = [example for example in examples if example.caption is None]
    for state, empty in (("no caption", False), ("an empty caption", True)):
        sources = [example.source for example in uncaptioned if (id(example) in empty_caption_ids) == empty]
        if sources:
            problems.append(
                f"{list_some(sources)} {'has' if len(sources) == 1 else 'have'} {state}: write one in a `<stem>.txt` file "
                f"next to the image or in {METADATA_FILE}, or pass an instance prompt (default_caption=...)."
            )
    if problems:
        more = f"\n  ... and {len(problems) - 10} more." if len(problems) > 10 else ""
        raise DataError(f"{len(problems)} problem(s) in {description}:\n  " + "\n  ".join(problems[:10]) + more)
    empty = [example.source for example in examples if id(example) in empty_caption_ids]
    if empty:
        logger.warning("%d caption(s) are empty (%s); using default_caption %r instead.", len(empty), list_some(empty),
                       default_caption)
    return examples


def check_caption_lengths(examples: Sequence[ImageExample], tokenizer: Any) -> int:
    """Count the captions the text encoder will truncate, and warn once if there are any.

    Args:
        examples (`Sequence[ImageExample]`): The examples, e.g. from `load_image_examples`.
        tokenizer (`transformers.PreTrainedTokenizerBase`): The text encoder's tokenizer; captions
            longer than its `model_max_length` (special tokens included) are counted.

    Returns:
        `int`: How many captions are too long.

    Example:
        ```python
        >>> check_caption_lengths(examples, pipeline.tokenizer)
        0
        ```
    """
    captioned = [example for example in examples if example.caption]
    if not captioned:
        return 0
    limit = tokenizer.model_max_length
    token_ids = tokenizer([example.caption for example in captioned], verbose=False)["input_ids"]
    too_long = [(example, len(ids)) for example, ids in zip(captioned, token_ids) if len(ids) > limit]
    if too_long:
        first, length = too_long[0]
        logger.warning(
            "%d of %d captions are longer than the tokenizer's %d tokens and will be truncated (first: %s, %d "
            "tokens); shorten them if their ends matter.", len(too_long), len(captioned), limit, first.source, length,
        )
    return len(too_long)


def image_to_tensor(
    image: Image.Image,
    resolution: int,
    center_crop: bool = True,
    random_flip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Resize, crop and optionally flip an image into a square training tensor.

    Args:
        image (`PIL.Image.Image`): The image (converted to RGB if it is not).
        resolution (`int`): The side of the square output, in pixels; the shorter side of the image
            is resized (bilinear, as in the diffusers training scripts) to it first.
        center_crop (`bool`, *optional*, defaults to `True`): Crop the center; if `False`, crop at a
            random position drawn from `generator`.
        random_flip (`bool`, *optional*, defaults to `False`): Flip horizontally with probability 0.5.
        generator (`torch.Generator`, *optional*): A CPU generator for the random crop and flip, for
            reproducible runs; the global torch RNG if `None`.

    Returns:
        `torch.Tensor`: A float32 tensor of shape `(3, resolution, resolution)` with values in [-1, 1].

    Example:
        ```python
        >>> image_to_tensor(load_image("dog.jpg"), resolution=512).shape
        torch.Size([3, 512, 512])
        ```
    """
    pixels, _ = cropped_image_tensor(image, resolution, center_crop=center_crop, random_flip=random_flip, generator=generator)
    return pixels


def resized_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The `(width, height)` an image of `size` is resized to before its square crop: shorter side `resolution`."""
    width, height = size
    scale = resolution / min(width, height)
    if scale == 1:
        return size
    return max(resolution, round(width * scale)), max(resolution, round(height * scale))


def cropped_image_tensor(
    image: Image.Image,
    resolution: int,
    center_crop: bool = True,
    random_flip: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """`image_to_tensor`, also giving the `(top, left)` of the crop in the resized image: what SDXL conditions on.

    With a flip, the crop is given as it lies in the flipped resized image (the flip comes after the crop, which is
    the same as cropping the mirrored image there).

    Returns:
        `(pixels, (top, left))`: the `(3, resolution, resolution)` tensor in [-1, 1] and the crop's top-left corner.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}.")
    if image.mode != "RGB":
        image = _to_rgb(image, "image")
    # 1. Resize so the shorter side is `resolution`.
    size = resized_size(image.size, resolution)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    # 2. Crop a square.
    width, height = image.size
    if center_crop:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
    image = image.crop((left, top, left + resolution, top + resolution))
    # 3. Flip.
    if random_flip and torch.rand(1, generator=generator).item() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = width - resolution - left
    # 4. HWC uint8 -> CHW float in [-1, 1].
    pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return pixels / 127.5 - 1.0, (top, left)


def _read_image(path: Path) -> tuple[Image.Image, int]:
    """Open, verify and fully decode an image file; returns it in RGB and its frame count."""
    if not path.is_file():
        raise DataError(f"Image {path} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise DataError(f"Image {path} is empty (0 bytes); re-export it or remove it.")
    try:
        with Image.open(path) as image:
            image.verify()  # What can be checked without decoding (PNG checksums); leaves `image` unusable.
        with Image.open(path) as image:
            return _prepare_image(image, str(path))
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        raise DataError(
            f"Image {path} has too many pixels ({error}). If you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS "
            "(or set it to None) before loading."
        ) from error
    except UnidentifiedImageError as error:
        raise DataError(f"{path} is not an image PIL can read; remove it or convert it to PNG or JPEG.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"Image {path} is truncated or corrupt ({error}); re-export it or remove it.") from error


def _prepare_image(image: Image.Image, source: str) -> tuple[Image.Image, int]:
    """Decode fully, take the first frame, apply EXIF orientation and convert to RGB (a new image)."""
    frame_count = getattr(image, "n_frames", 1)
    try:
        if frame_count > 1:
            image.seek(0)
        image.load()
    except (OSError, ValueError) as error:
        raise DataError(f"Image {source} is truncated or corrupt ({error}); re-export it or remove it.") from error
    return _to_rgb(ImageOps.exif_transpose(image), source), frame_count


def _to_rgb(image: Image.Image, source: str) -> Image.Image:
    """Convert any PIL mode to RGB: transparency onto white, high bit depths scaled rather than clipped."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_to_uint8(image)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise DataError(f"Image {source} has color mode {image.mode}, which PIL cannot convert to RGB; save it as "
                        "RGB.") from error


def _to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grayscale image to 8 bits.

    16-bit images (and 32-bit ones whose values fit 16 bits, as PIL reads some 16-bit files) are
    scaled by their bit depth, so 65535 becomes 255 and contrast is kept; floats in [0, 1] are
    multiplied by 255; values already in [0, 255] are kept; any other range is stretched to it.
    """
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = float(pixels.min()), float(pixels.max())
    if image.mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        pixels = pixels / 257
    elif image.mode == "F" and low >= 0 and high <= 1:
        pixels = pixels * 255
    elif low < 0 or high > 255:
        pixels = (pixels - low) / (high - low) * 255
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _size_problem(example: ImageExample, min_size: int, max_aspect_ratio: float) -> str | None:
    """What is wrong with the size of `example`'s image, or `None`."""
    width, height = example.image.size
    ratio = max(width, height) / max(min(width, height), 1)
    reasons = []
    if min(width, height) < min_size:
        reasons.append(f"smaller than the minimum of {min_size} pixels per side")
    if ratio > max_aspect_ratio:
        reasons.append(f"an aspect ratio of {ratio:.3g}:1, beyond the limit of {max_aspect_ratio:g}:1")
    if not reasons:
        return None
    reasons = " and ".join(reasons)
    return f"{example.source} is {width}x{height} pixels, {reasons}: crop or remove it, or drop it with filter_fn."


