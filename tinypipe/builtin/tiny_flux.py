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

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from ..errors import ConfigError
from . import TINY_FLUX, TINY_FLUX_SCHNELL, cached_builtin_folder
from .clip_tokenizer import CLIP_VOCAB_FOLDER, load_clip_tokenizer, seeded

__all__ = ["TINY_FLUX", "TINY_FLUX_SCHNELL", "TINY_FLUX_RESOLUTION", "T5_VOCAB_FOLDER", "load_t5_tokenizer",
           "build_tiny_flux", "builtin_flux_folder"]

TINY_FLUX_RESOLUTION = 32
"""The native image size of the tiny FLUX models, in pixels (their VAE's `sample_size`)."""

T5_VOCAB_FOLDER = Path(__file__).resolve().parent / "vocab" / "t5"
"""The shipped T5 tokenizer files: `tokenizer.json`, `tokenizer_config.json` (written by `scripts/make_t5_vocab.py`)."""

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
    clip_config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=clip_tokenizer.model_max_length, bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id, pad_token_id=clip_tokenizer.pad_token_id,
    )
    # T5 v1.1 as FLUX uses it (gated GELU feed-forward, relative position buckets), 2 layers of width 32.
    t5_config = T5Config(
        vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=t5_tokenizer.pad_token_id, eos_token_id=t5_tokenizer.eos_token_id,
        decoder_start_token_id=t5_tokenizer.pad_token_id, is_encoder_decoder=False, use_cache=False,
    )
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
    vae = seeded(1, lambda: AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),  # two downsamples: 32 px -> 8x8 latents
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=16,
        sample_size=TINY_FLUX_RESOLUTION,
        scaling_factor=FLUX_SCALING_FACTOR,
        shift_factor=FLUX_SHIFT_FACTOR,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ))
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
        build_tiny_flux(guidance_embeds=GUIDANCE_EMBEDS[name]).save_pretrained(staging, safe_serialization=True)
        # transformers 5 saves only `tokenizer.json`; older readers of CLIP tokenizers want these too.
        for file_name in ("vocab.json", "merges.txt"):
            (staging / "tokenizer" / file_name).write_bytes((CLIP_VOCAB_FOLDER / file_name).read_bytes())
        # Name the T5 tokenizer as FLUX.1's own folders do: transformers 4's `T5Tokenizer` would want a SentencePiece
        # file, `T5TokenizerFast` reads `tokenizer.json` in every version.
        model_index = staging / "model_index.json"
        index = json.loads(model_index.read_text(encoding="utf-8"))
        index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
        model_index.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    shipped = {f"{vocab.name}_sha256": vocab for vocab in (CLIP_VOCAB_FOLDER / "vocab.json", CLIP_VOCAB_FOLDER / "merges.txt",
                                                           T5_VOCAB_FOLDER / "tokenizer.json")}
    return cached_builtin_folder(name, build, format_version=_BUILTIN_FORMAT_VERSION,
                                 libraries=("torch", "diffusers", "transformers", "tokenizers"), shipped=shipped)
