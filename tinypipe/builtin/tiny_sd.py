"""Built-in models and data that need no download: a tiny Stable Diffusion and a shapes instance data set.

`tinypipe/tiny-sd` is a Stable-Diffusion-shaped pipeline (UNet, VAE, CLIP text encoder, CLIP tokenizer, DDPM
scheduler) small enough to train and sample on a CPU in seconds. Its weights ship with tinypipe in
`tinypipe/builtin/weights/tiny_sd.safetensors` (about 2 MB, float16), pretrained by `pretrain_tiny_sd.py` on
`shapes_dataset` images: the VAE reconstructs shapes in their colours, and prompts such as "a photo of a red
circle" or "a blue square" generate crude blobs of that colour. It exists for tests, demos and smoke runs,
offline.

The tokenizer (`clip_tokenizer.load_clip_tokenizer`, shared with `tiny_flux`) is built from the vocabulary shipped
in `tinypipe/builtin/vocab/clip/` (see `scripts/make_clip_vocab.py` there), in which common prompt words and the
identifier `sks` are one token each.
"""

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from ..errors import ConfigError, DataError
from . import TINY_SD, builtin_names, cached_builtin_folder  # noqa: F401  (TINY_SD: its public home is here too)
from . import is_builtin as _is_builtin
from .clip_tokenizer import CLIP_VOCAB_FOLDER, load_clip_tokenizer  # noqa: F401  (public here too, as before)
from .clip_tokenizer import save_tiny_pipeline, seeded as _seeded

TINY_SD_RESOLUTION = 64
"""The default image size of `tinypipe/tiny-sd`, in pixels (its latents are 16x16)."""

TINY_SD_WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny_sd.safetensors"
"""The shipped weights of `tinypipe/tiny-sd`: keys prefixed `unet.`, `vae.`, `text_encoder.`, written by
`python scripts/pretrain_tiny_sd.py`; the VAE's `scaling_factor` is in the file's metadata."""

SHAPES = ("circle", "square", "triangle", "star")
"""The shapes `shapes_dataset` can draw."""

# Bump when `build_tiny_stable_diffusion` changes, so that folders cached by `builtin_model_folder` are rebuilt.
_BUILTIN_FORMAT_VERSION = 2


def build_tiny_stable_diffusion(weights: str | os.PathLike | None = TINY_SD_WEIGHTS) -> StableDiffusionPipeline:
    """Build `tinypipe/tiny-sd`: fresh objects on every call, with the same weights on every call.

    The UNet works on 4x16x16 latents with channels (32, 64) and cross-attention over 32-dimensional text
    states; the VAE downsamples 4x (64 px images); the text encoder is a 2-layer CLIP with width 32. No
    safety checker. The models are built from their configs (each seeded separately), then the pretrained
    weights are loaded from `weights`, converted to float32.

    Args:
        weights (`str` or `os.PathLike`, *optional*, defaults to `TINY_SD_WEIGHTS`):
            A safetensors file written by `python scripts/pretrain_tiny_sd.py`. `None` keeps the
            seeded random initialisation (what that script starts from).

    Returns:
        A `diffusers.StableDiffusionPipeline` on the CPU in float32, with a `DDPMScheduler`.

    Raises:
        ConfigError: `weights` is missing or does not fit the models.

    Example:
        ```py
        >>> pipeline = build_tiny_stable_diffusion()
        >>> image = pipeline("a photo of a red circle", num_inference_steps=20, guidance_scale=5.0).images[0]
        >>> image.size
        (64, 64)
        ```
    """
    # 1. The shipped weights and the VAE scaling factor measured when they were trained.
    state_dict, metadata = _read_weights(weights) if weights is not None else ({}, {})
    # The default is Stable Diffusion's, for the random initialisation.
    scaling_factor = float(metadata.get("vae.scaling_factor", 0.18215))

    # 2. The models, from their configs.
    tokenizer = load_clip_tokenizer()
    unet = _seeded(
        0,
        lambda: UNet2DConditionModel(
            sample_size=TINY_SD_RESOLUTION // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),  # diffusers reads this as the number of heads (16 channels each)
            norm_num_groups=16,
        ),
    )
    vae = _seeded(
        1,
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 32),  # three blocks: two downsamples, so 64 px -> 16x16 latents
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=TINY_SD_RESOLUTION,
            scaling_factor=scaling_factor,
        ),
    )
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = _seeded(2, lambda: CLIPTextModel(text_config))
    # Stable Diffusion's training noise schedule.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )

    # 3. The pretrained weights over the random initialisation.
    if weights is not None:
        for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
            _load_component(module, name, state_dict, weights)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _load_component(
    module: torch.nn.Module, name: str, state_dict: dict[str, torch.Tensor], weights: str | os.PathLike
) -> None:
    """Load the tensors of `state_dict` whose keys start with `name.` into `module`, all of them, exactly."""
    prefix = f"{name}."
    module_state = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    expected = module.state_dict()
    missing, unexpected = sorted(expected.keys() - module_state.keys()), sorted(module_state.keys() - expected.keys())
    mismatched = sorted(
        key for key in expected.keys() & module_state.keys() if expected[key].shape != module_state[key].shape
    )
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"{weights} does not fit the {name} that build_tiny_stable_diffusion builds: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}) and {len(mismatched)} "
            f"mismatched (e.g. {mismatched[:2]}) keys under {prefix!r}. "
            f"Rerun `python scripts/pretrain_tiny_sd.py --output {weights}`."
        )
    module.load_state_dict(module_state, strict=True)


def _read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file, as float32, and its metadata."""
    try:
        with safe_open(str(path), framework="pt") as file:
            tensors = {key: file.get_tensor(key).float() for key in file.keys()}
            return tensors, file.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise ConfigError(
            f"Cannot read the tiny-sd weights {path}: {error}. Reinstall tinypipe, or write them with "
            f"`python scripts/pretrain_tiny_sd.py --output {path}`."
        ) from error


def is_builtin(name: str) -> bool:
    """Whether `name` names a built-in diffusion model (such as `TINY_SD`) rather than a folder or Hub repo."""
    return _is_builtin(name, "diffusion")


def builtin_model_folder(name: str) -> Path:
    """Save a built-in model once as a regular diffusers folder and return that folder.

    The folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`,
    safetensors weights) loads unchanged in plain `diffusers.StableDiffusionPipeline.from_pretrained`. It is
    cached under `tinypipe_home() / "builtin"` and rebuilt only when the torch, diffusers or transformers
    version or the shipped weights change. It is written into a temporary sibling and renamed into place, so
    a crash or a concurrent writer never leaves a half-written folder that gets used.

    Args:
        name (`str`):
            `TINY_SD` (every other built-in diffusion model is built by its own module; `diffusion_folders` finds any).

    Returns:
        The folder.

    Raises:
        ConfigError: `name` is not a built-in model.

    Example:
        ```py
        >>> folder = builtin_model_folder(TINY_SD)
        >>> pipeline = StableDiffusionPipeline.from_pretrained(folder)
        ```
    """
    if not is_builtin(name):
        known = builtin_names("diffusion")
        raise ConfigError(f"{name!r} is not a built-in model; the built-in models are {known}. Use one of those.")
    if name != TINY_SD:  # another family's built-in model: its own module builds it
        raise ConfigError(f"{name!r} is not built here; builtin_diffusion_folder (builtin/diffusion_folders.py) builds every built-in diffusion model.")

    def build(staging: Path) -> None:
        save_tiny_pipeline(build_tiny_stable_diffusion(), staging)

    # A rerun of `pretrain_tiny_sd` changes the shipped weights without changing any version.
    return cached_builtin_folder(name, build, format_version=_BUILTIN_FORMAT_VERSION,
                                 libraries=("torch", "diffusers", "transformers"), shipped={"weights_sha256": TINY_SD_WEIGHTS})


def shapes_dataset(
    count: int = 8,
    resolution: int = TINY_SD_RESOLUTION,
    shape: str = "circle",
    color: tuple[int, int, int] = (220, 40, 40),
    seed: int = 0,
    caption: str | None = None,
) -> list[tuple[Image.Image, str]]:
    """Generate a small instance data set: one distinctive coloured shape per image, with captions.

    Each image shows the shape at a different position, size and rotation on a different light gradient
    background, which makes a DreamBooth-style subject that a tiny model can learn in a few steps.

    Args:
        count (`int`, defaults to 8):
            How many images to make.
        resolution (`int`, defaults to 64):
            The width and height of each image, in pixels (at least 16).
        shape (`str`, defaults to `"circle"`):
            One of `SHAPES`: `"circle"`, `"square"`, `"triangle"` or `"star"`.
        color (`tuple[int, int, int]`, defaults to `(220, 40, 40)`):
            The RGB colour of the shape, each channel in 0-255.
        seed (`int`, defaults to 0):
            The seed of the layout; the same arguments always give the same images.
        caption (`str`, *optional*):
            The caption of every image; defaults to `"a photo of sks <shape>"`.

    Returns:
        A list of `(image, caption)` pairs; the images are RGB `PIL.Image.Image`s.

    Raises:
        DataError: an argument is out of range, or `shape` is not one of `SHAPES`.

    Example:
        ```py
        >>> image, caption = shapes_dataset(count=4, shape="star")[0]
        >>> image.size, caption
        ((64, 64), 'a photo of sks star')
        ```
    """
    if shape not in SHAPES:
        raise DataError(f"shape={shape!r} is not a shape shapes_dataset can draw; use one of {list(SHAPES)}.")
    if count < 1 or resolution < 16:
        raise DataError(f"count={count} and resolution={resolution} must be at least 1 and 16 respectively.")
    if len(color) != 3 or not all(isinstance(channel, int) and 0 <= channel <= 255 for channel in color):
        raise DataError(f"color={color!r} must be three integers in 0-255, e.g. (220, 40, 40).")
    caption = f"a photo of sks {shape}" if caption is None else caption
    rng = random.Random(seed)
    # Draw at 4x the size and downsample, which anti-aliases the edges.
    supersample = 4
    size = resolution * supersample
    examples = []
    for _ in range(count):
        # 1. A light vertical gradient between two random light colours.
        top, bottom = (np.array([rng.uniform(200, 255) for _ in range(3)]) for _ in range(2))
        weights = np.linspace(0.0, 1.0, size)[:, None, None]
        gradient = (1 - weights) * top + weights * bottom
        canvas = Image.fromarray(np.broadcast_to(gradient, (size, size, 3)).astype(np.uint8), mode="RGB")

        # 2. The shape, with a random size, position and rotation that keep it inside the image.
        radius = rng.uniform(0.18, 0.32) * size
        margin = radius + 0.04 * size
        center = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
        angle = rng.uniform(0.0, 2 * np.pi)
        _draw_shape(ImageDraw.Draw(canvas), shape, center, radius, angle, color)
        examples.append((canvas.resize((resolution, resolution), Image.LANCZOS), caption))
    return examples


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    center: tuple[float, float],
    radius: float,
    angle: float,
    color: tuple[int, int, int],
) -> None:
    """Draw one filled `shape` whose outer corners lie on a circle of `radius` around `center`."""
    x, y = center
    if shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
        return
    # Polygons: a square and a triangle have their corners on the circle; a star alternates 5 outer
    # corners with 5 inner ones.
    corner_radii = {"square": [radius] * 4, "triangle": [radius] * 3, "star": [radius, 0.45 * radius] * 5}[shape]
    step = 2 * np.pi / len(corner_radii)
    points = [
        (x + r * np.cos(angle + index * step), y + r * np.sin(angle + index * step))
        for index, r in enumerate(corner_radii)
    ]
    draw.polygon(points, fill=color)


def write_shapes_folder(
    folder: str | os.PathLike,
    count: int = 8,
    resolution: int = TINY_SD_RESOLUTION,
    shape: str = "circle",
    color: tuple[int, int, int] = (220, 40, 40),
    seed: int = 0,
    caption: str | None = None,
) -> Path:
    """Write `shapes_dataset(...)` to a folder: `<shape>_000.png`, ... each with a `.txt` caption beside it.

    Args:
        folder (`str` or `os.PathLike`):
            Where to write the files (created if missing; files of the same names are overwritten).
        count, resolution, shape, color, seed, caption:
            As in `shapes_dataset`.

    Returns:
        The folder, as a `Path`.

    Example:
        ```py
        >>> folder = write_shapes_folder("instance_images", count=4)
        >>> sorted(path.name for path in folder.iterdir())[:2]
        ['circle_000.png', 'circle_000.txt']
        ```
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples = shapes_dataset(count=count, resolution=resolution, shape=shape, color=color, seed=seed, caption=caption)
    for index, (image, text) in enumerate(examples):
        image.save(folder / f"{shape}_{index:03d}.png")
        (folder / f"{shape}_{index:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder
