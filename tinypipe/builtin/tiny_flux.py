"""Built-in tiny FLUX.1 pipelines that need no download: `tinypipe/tiny-flux` and `tinypipe/tiny-flux-schnell`.

Both have FLUX.1's architecture at toy size, with seeded random weights (generated images are noise; they exist
for tests, demos and smoke runs of the FLUX family, offline):

- a `FluxTransformer2DModel` (one double-stream and one single-stream block, width 32) on FLUX's 16-channel
  latents packed into 2x2 patches; `tinypipe/tiny-flux` has the guidance embedding of the guidance-distilled
  FLUX.1-dev (`guidance_embeds=True`), `tinypipe/tiny-flux-schnell` has none, as FLUX.1-schnell;
- an `AutoencoderKL` with 16 latent channels, FLUX's `scaling_factor` and `shift_factor`, and no quant convs;
- a CLIP text encoder (its pooled output conditions the transformer) with the CLIP tokenizer shipped for
  `tinypipe/tiny-sd`, and a T5 encoder (its hidden states are the text tokens) with the T5 tokenizer shipped in
  `tinypipe/builtin/vocab/t5/` (see `scripts/make_t5_vocab.py`);
- a `FlowMatchEulerDiscreteScheduler` with the published scheduler settings of each model (dev: shift 3 with
  resolution-dependent dynamic shifting; schnell: no shift).

Native size: the VAE downsamples 4x and its config's `sample_size` (the FLUX family's source of a model's native
resolution, 1024 in FLUX.1's published config) is `TINY_FLUX_RESOLUTION`, 32 px: 8x8 latents, 16 image tokens.
Plain `FluxPipeline.__call__` ignores that and defaults to 128 latent pixels a side (512 px here), so pass
`height`/`width` when calling it directly.

```python
from diffusers import FluxPipeline
pipe = FluxPipeline.from_pretrained(builtin_flux_folder("tinypipe/tiny-flux"))
image = pipe("a photo of sks dog", height=32, width=32, num_inference_steps=2).images[0]
```
"""

import json
from pathlib import Path
from typing import Optional

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from ..errors import ConfigError
from . import TINY_FLUX, TINY_FLUX_SCHNELL, cached_builtin_folder
from .clip_tokenizer import CLIP_VOCAB_FOLDER, load_clip_tokenizer, save_tiny_pipeline, seeded

__all__ = ["TINY_FLUX", "TINY_FLUX_SCHNELL", "TINY_FLUX_RESOLUTION", "T5_VOCAB_FOLDER", "load_t5_tokenizer",
           "tiny_clip_config", "tiny_t5_config", "tiny_latent_vae", "save_tiny_folder", "build_tiny_flux",
           "builtin_flux_folder"]

TINY_FLUX_RESOLUTION = 32
"""The native image size of the tiny FLUX models, in pixels (their VAE's `sample_size`)."""

T5_VOCAB_FOLDER = Path(__file__).resolve().parent / "vocab" / "t5"
"""The shipped T5 tokenizer files: `tokenizer.json`, `tokenizer_config.json` (written by `scripts/make_t5_vocab.py`)."""

SHIPPED_VOCABULARIES = {f"{path.name}_sha256": path for path in (
    CLIP_VOCAB_FOLDER / "vocab.json", CLIP_VOCAB_FOLDER / "merges.txt", T5_VOCAB_FOLDER / "tokenizer.json")}
"""The shipped files a cached tiny FLUX (or SD3) folder is rebuilt for when they change."""

BUILD_LIBRARIES = ("torch", "diffusers", "transformers", "tokenizers")
"""The libraries whose version changes the files of a cached tiny FLUX (or SD3) folder."""

GUIDANCE_EMBEDS = {TINY_FLUX: True, TINY_FLUX_SCHNELL: False}
"""Whether each tiny FLUX model has FLUX.1-dev's guidance embedding."""

# FLUX.1's published VAE latent statistics (black-forest-labs/FLUX.1-dev, vae/config.json).
FLUX_SCALING_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159

# The published scheduler settings (scheduler/scheduler_config.json of FLUX.1-dev and FLUX.1-schnell).
_SCHEDULER_SETTINGS = {
    True: dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
               max_image_seq_len=4096),
    False: dict(shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                max_image_seq_len=4096),
}

# Bump when `build_tiny_flux` changes, so that folders cached by `builtin_flux_folder` are rebuilt.
_BUILTIN_FORMAT_VERSION = 1


def load_t5_tokenizer() -> T5TokenizerFast:
    """Load the T5 tokenizer shipped with tinypipe (about 300 pieces, `model_max_length` 512).

    Returns:
        A `transformers.T5TokenizerFast` built from `T5_VOCAB_FOLDER`.

    Example:
        ```py
        >>> load_t5_tokenizer().tokenize("a photo of sks dog")
        ['▁a', '▁photo', '▁of', '▁sks', '▁dog']
        ```
    """
    return T5TokenizerFast.from_pretrained(T5_VOCAB_FOLDER)


def tiny_clip_config(tokenizer, projection_dim: Optional[int] = None) -> CLIPTextConfig:
    """A 2-layer CLIP text encoder of width 32 for `tokenizer` (with `projection_dim`, for a `CLIPTextModelWithProjection`)."""
    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra,
    )


def tiny_t5_config(tokenizer, d_model: int) -> T5Config:
    """A 2-layer T5 v1.1 encoder (gated-GELU feed-forward, relative position buckets, as FLUX and SD3 use) of width
    `d_model` for `tokenizer`."""
    return T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=d_model // 8,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, is_encoder_decoder=False, use_cache=False,
    )


def tiny_latent_vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """A 16-latent-channel `AutoencoderKL` without quant convs (FLUX.1's and SD3's design) that downsamples 4x, with
    `sample_size` `TINY_FLUX_RESOLUTION`: 32 px images, 8x8 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),  # two downsamples
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=16,
        sample_size=TINY_FLUX_RESOLUTION,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def save_tiny_folder(pipe, staging: Path, t5_tokenizer: str) -> None:
    """Save a tiny pipeline as a diffusers folder that transformers 4 reads too: the CLIP vocabulary files beside each
    CLIP tokenizer's `tokenizer.json`, and the T5 tokenizer component named `T5TokenizerFast` in `model_index.json`
    (as FLUX.1's and SD3's own folders name it; transformers 4's `T5Tokenizer` would want a SentencePiece file)."""
    save_tiny_pipeline(pipe, staging, not_clip=(t5_tokenizer,))
    model_index = staging / "model_index.json"
    index = json.loads(model_index.read_text(encoding="utf-8"))
    index[t5_tokenizer] = ["transformers", "T5TokenizerFast"]
    model_index.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_flux(guidance_embeds: bool = True) -> FluxPipeline:
    """Build a tiny FLUX.1 pipeline: fresh objects on every call, with the same (seeded random) weights on every call.

    Args:
        guidance_embeds (`bool`, *optional*, defaults to `True`):
            Give the transformer FLUX.1-dev's guidance embedding (`tinypipe/tiny-flux`); `False` builds the
            schnell-style `tinypipe/tiny-flux-schnell`.

    Returns:
        A `diffusers.FluxPipeline` on the CPU in float32.

    Example:
        ```py
        >>> pipe = build_tiny_flux(guidance_embeds=False)
        >>> pipe("a red circle", height=32, width=32, num_inference_steps=2).images[0].size
        (32, 32)
        ```
    """
    clip_tokenizer, t5_tokenizer = load_clip_tokenizer(), load_t5_tokenizer()
    clip_config, t5_config = tiny_clip_config(clip_tokenizer), tiny_t5_config(t5_tokenizer, d_model=32)
    transformer = seeded(0, lambda: FluxTransformer2DModel(
        patch_size=1,
        in_channels=16 * 4,  # 16 latent channels in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_config.d_model,
        pooled_projection_dim=clip_config.hidden_size,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    ))
    vae = seeded(1, lambda: tiny_latent_vae(FLUX_SCALING_FACTOR, FLUX_SHIFT_FACTOR))
    text_encoder = seeded(2, lambda: CLIPTextModel(clip_config))
    text_encoder_2 = seeded(3, lambda: T5EncoderModel(t5_config))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **_SCHEDULER_SETTINGS[guidance_embeds])
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer, transformer=transformer)


def builtin_flux_folder(name: str) -> Path:
    """Save a tiny FLUX model once as a regular diffusers folder and return that folder.

    The folder (`model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `text_encoder_2/`, `tokenizer/`,
    `tokenizer_2/`, `scheduler/`, safetensors weights) loads unchanged in plain `diffusers.FluxPipeline.from_pretrained`.
    It is cached under `tinypipe_home() / "builtin"` like `tinypipe/tiny-sd` and rebuilt only when the torch,
    diffusers, transformers or tokenizers version or the shipped vocabularies change.

    Args:
        name (`str`):
            `TINY_FLUX` or `TINY_FLUX_SCHNELL`.

    Returns:
        The folder.

    Raises:
        ConfigError: `name` is not a tiny FLUX model.
    """
    if name not in GUIDANCE_EMBEDS:
        raise ConfigError(f"{name!r} is not a built-in FLUX model; those are {sorted(GUIDANCE_EMBEDS)}. Use one of those.")

    def build(staging: Path) -> None:
        save_tiny_folder(build_tiny_flux(guidance_embeds=GUIDANCE_EMBEDS[name]), staging, "tokenizer_2")

    return cached_builtin_folder(name, build, format_version=_BUILTIN_FORMAT_VERSION, libraries=BUILD_LIBRARIES,
                                 shipped=SHIPPED_VOCABULARIES)
