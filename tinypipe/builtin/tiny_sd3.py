"""The built-in tiny Stable Diffusion 3 pipeline that needs no download: `tinypipe/tiny-sd3`.

SD3's architecture at toy size, with seeded random weights (generated images are noise; it exists for tests and
smoke runs of the SD3 family, offline): an `SD3Transformer2DModel` (two joint blocks, width 32, 2x2 patches) on
16-channel latents; the 16-channel VAE of `tiny_flux` with SD3's `scaling_factor` and `shift_factor`; two CLIP text
encoders with projection (`text_encoder`, `text_encoder_2`, as CLIP-L and CLIP-G; both read the shipped CLIP
tokenizer) and a T5 encoder (`text_encoder_3`, the shipped T5 tokenizer) of width 64, which the two CLIP encoders'
concatenated states (32 + 32) are padded to; a `FlowMatchEulerDiscreteScheduler` with SD3's static shift 3.

Native size: the transformer's `sample_size` (8 latent pixels) times the VAE's 4x, 32 px, which is also what plain
`StableDiffusion3Pipeline.__call__` defaults to.
"""

from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection, T5EncoderModel

from ..errors import ConfigError
from . import TINY_SD3, cached_builtin_folder
from .clip_tokenizer import load_clip_tokenizer, seeded
from .tiny_flux import (
    BUILD_LIBRARIES,
    SHIPPED_VOCABULARIES,
    TINY_FLUX_RESOLUTION,
    load_t5_tokenizer,
    save_tiny_folder,
    tiny_clip_config,
    tiny_latent_vae,
    tiny_t5_config,
)

__all__ = ["TINY_SD3", "build_tiny_sd3", "builtin_sd3_folder"]

# Stable Diffusion 3's published VAE latent statistics (stabilityai/stable-diffusion-3-medium-diffusers, vae/config.json).
SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609

# Bump when `build_tiny_sd3` changes, so that the folder cached by `builtin_sd3_folder` is rebuilt.
_BUILTIN_FORMAT_VERSION = 1


def build_tiny_sd3() -> StableDiffusion3Pipeline:
    """Build `tinypipe/tiny-sd3`: fresh objects on every call, with the same (seeded random) weights on every call.

    Returns:
        A `diffusers.StableDiffusion3Pipeline` on the CPU in float32.

    Example:
        ```py
        >>> build_tiny_sd3()("a red circle", num_inference_steps=2).images[0].size
        (32, 32)
        ```
    """
    clip_tokenizer, t5_tokenizer = load_clip_tokenizer(), load_t5_tokenizer()
    clip_config = tiny_clip_config(clip_tokenizer, projection_dim=32)
    t5_config = tiny_t5_config(t5_tokenizer, d_model=2 * clip_config.hidden_size)  # fits both CLIPs' states side by side
    transformer = seeded(0, lambda: SD3Transformer2DModel(
        sample_size=TINY_FLUX_RESOLUTION // 4,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,  # the last block has no text-stream output (`to_add_out`); the first has every LoRA target
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_config.d_model,
        caption_projection_dim=32,
        pooled_projection_dim=2 * clip_config.projection_dim,  # both CLIPs' pooled outputs side by side
        pos_embed_max_size=16,
    ))
    vae = seeded(1, lambda: tiny_latent_vae(SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR))
    text_encoder = seeded(2, lambda: CLIPTextModelWithProjection(clip_config))
    text_encoder_2 = seeded(3, lambda: CLIPTextModelWithProjection(clip_config))
    text_encoder_3 = seeded(4, lambda: T5EncoderModel(t5_config))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                    tokenizer=clip_tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=load_clip_tokenizer(),
                                    text_encoder_3=text_encoder_3, tokenizer_3=t5_tokenizer)


def builtin_sd3_folder(name: str = TINY_SD3) -> Path:
    """Save `tinypipe/tiny-sd3` once as a regular diffusers folder (loads in plain
    `diffusers.StableDiffusion3Pipeline.from_pretrained`), cached like the other built-ins, and return it.

    Raises:
        ConfigError: `name` is not `TINY_SD3`.
    """
    if name != TINY_SD3:
        raise ConfigError(f"{name!r} is not the built-in SD3 model {TINY_SD3!r}.")
    return cached_builtin_folder(name, lambda staging: save_tiny_folder(build_tiny_sd3(), staging, "tokenizer_3"),
                                 format_version=_BUILTIN_FORMAT_VERSION, libraries=BUILD_LIBRARIES, shipped=SHIPPED_VOCABULARIES)
