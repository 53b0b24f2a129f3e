"""The built-in `tinypipe/tiny-sdxl`: a Stable-Diffusion-XL-shaped pipeline small enough to train on a CPU in seconds.

It has every part of SDXL - a UNet with `text_time` added conditioning (pooled text embedding and the six size/crop
ids), two CLIP text encoders (the second with a projection, as OpenCLIP ViT-bigG), two tokenizers, an Euler
scheduler - at a few hundred KB. Its UNet and text encoders are built from their configs with seeded random weights
(the same on every call); its VAE is tiny-sd's pretrained one, so latents mean something. Both tokenizers are the
CLIP vocabulary tinypipe ships for tiny-sd. Native resolution: 32 px (8x8 latents).

```python
from diffusers import StableDiffusionXLPipeline
from tinypipe.builtin.tiny_sdxl import TINY_SDXL, builtin_sdxl_folder

pipe = StableDiffusionXLPipeline.from_pretrained(builtin_sdxl_folder())
```
"""

from pathlib import Path

from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..errors import ConfigError
from . import TINY_SDXL, cached_builtin_folder
from .clip_tokenizer import save_tiny_pipeline
from .tiny_sd import TINY_SD_WEIGHTS, _load_component, _read_weights, _seeded, load_clip_tokenizer

__all__ = ["TINY_SDXL", "TINY_SDXL_RESOLUTION", "build_tiny_sdxl", "builtin_sdxl_folder"]

TINY_SDXL_RESOLUTION = 32
"""The native image size of `tinypipe/tiny-sdxl`, in pixels (its latents are 8x8)."""

# Bump when `build_tiny_sdxl` changes, so that folders cached by `builtin_sdxl_folder` are rebuilt.
_BUILTIN_FORMAT_VERSION = 1
_TIME_EMBED_DIM = 8
_PROJECTION_DIM = 32


def _text_config(tokenizer, hidden_size: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    """Build `tinypipe/tiny-sdxl`: fresh objects on every call, with the same weights on every call.

    The text encoders are 2-layer CLIPs of widths 32 (`text_encoder`) and 48 (`text_encoder_2`, projected to 32),
    so the UNet cross-attends over 80-dimensional states and its added embedding reads 6 x 8 + 32 inputs.

    Returns:
        A `diffusers.StableDiffusionXLPipeline` on the CPU in float32.
    """
    tokenizer, tokenizer_2 = load_clip_tokenizer(), load_clip_tokenizer()
    text_encoder = _seeded(10, lambda: CLIPTextModel(_text_config(tokenizer, 32)))
    text_encoder_2 = _seeded(11, lambda: CLIPTextModelWithProjection(_text_config(tokenizer_2, 48, projection_dim=_PROJECTION_DIM)))
    unet = _seeded(
        12,
        lambda: UNet2DConditionModel(
            sample_size=TINY_SDXL_RESOLUTION // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=32 + 48,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _PROJECTION_DIM,
            norm_num_groups=16,
        ),
    )
    # tiny-sd's pretrained VAE (same architecture), so that images encode to meaningful latents.
    state_dict, metadata = _read_weights(TINY_SD_WEIGHTS)
    vae = _seeded(
        13,
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=TINY_SDXL_RESOLUTION,
            scaling_factor=float(metadata.get("vae.scaling_factor", 0.13025)),
        ),
    )
    _load_component(vae, "vae", state_dict, TINY_SD_WEIGHTS)
    # SDXL's sampling scheduler; training uses DDPM with the same schedule.
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                       prediction_type="epsilon")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)


def builtin_sdxl_folder(name: str = TINY_SDXL) -> Path:
    """Save `tinypipe/tiny-sdxl` once as a diffusers folder (`StableDiffusionXLPipeline.from_pretrained` reads it).

    Cached like tiny-sd's folder (`tiny_sd.builtin_model_folder`): rebuilt only when a library version or the shipped
    VAE weights change, written into a temporary sibling and renamed into place.
    """
    if name != TINY_SDXL:
        raise ConfigError(f"{name!r} is not built here; builtin_diffusion_folder (builtin/diffusion_folders.py) builds it.")

    def build(staging: Path) -> None:
        save_tiny_pipeline(build_tiny_sdxl(), staging)

    return cached_builtin_folder(TINY_SDXL, build, format_version=_BUILTIN_FORMAT_VERSION,
                                 libraries=("torch", "diffusers", "transformers"), shipped={"weights_sha256": TINY_SD_WEIGHTS})

