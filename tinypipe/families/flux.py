"""FLUX.1 (black-forest-labs): a rectified-flow transformer on packed 16-channel latents, conditioned by T5 and CLIP.

What a trainer needs to know, as `diffusers.FluxPipeline` and diffusers' `train_dreambooth_lora_flux.py` do it:

- **Prompts**: the CLIP text encoder's pooled output is `pooled_prompt_embeds` `[N, 768]`; the T5 encoder's last
  hidden states over `max_sequence_length` (512) tokens are `prompt_embeds` `[N, 512, 4096]`; `text_ids` are zeros.
- **Latents**: `(sample - shift_factor) * scaling_factor` of the VAE posterior; the transformer sees them packed into
  2x2 patches (`[N, h/2 * w/2, 4C]`) with one `(0, row, column)` id per patch, so `h` and `w` must be even.
- **Objective**: flow matching (`families.flow_matching`): a timestep index drawn from
  `compute_density_for_timestep_sampling`, its sigma read off the scheduler's training schedule,
  `noisy = (1 - sigma) * latents + sigma * noise`, the target the velocity `noise - latents`, weighted by
  `compute_loss_weighting_for_sd3`; the transformer's input is packed and its output unpacked. FLUX.1-dev is
  guidance-distilled: its transformer takes the guidance scale as an input (`guidance_embeds`), filled with the run's
  `guidance_scale`; schnell has none.
- **Methods**: LoRA and DreamBooth-LoRA on the transformer, optionally on the CLIP text encoder. Textual inversion
  and full fine-tuning are refused (see `check_method`).
- **LoRA files**: `FluxPipeline.save_lora_weights(transformer_lora_layers=..., text_encoder_lora_layers=...)`, read
  back by `FluxPipeline.lora_state_dict` / `load_lora_weights` (see `tinypipe.families.lora_files`).

```python
from tinypipe.families import family_named, TrainingObjective
flux = family_named("flux")
ids = flux.tokenize(pipe, ["a photo of sks dog"])
conditioning = flux.encode_prompts(pipe, ids, {"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2})
latents = flux.latents(pipe.vae, pipe.vae.encode(pixels).latent_dist.sample(generator))
losses = flux.training_losses(pipe, pipe.transformer, latents, conditioning, generator, TrainingObjective(guidance_scale=3.5))
```
"""

from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError
from .base import TrainingObjective
from .flow_matching import FlowMatchingFamily, weighted_losses

__all__ = ["FluxFamily", "FAMILY"]


class FluxFamily(FlowMatchingFamily):
    """FLUX.1-dev and FLUX.1-schnell (and their fine-tunes): `FluxPipeline` folders.

    Attributes (beyond `ModelFamily`'s):
        max_sequence_length: T5 tokens per prompt, `FluxPipeline`'s default, so training sees the conditioning
            generation sees.
        lora_text_encoders: The text encoders a LoRA may train: the CLIP one only (diffusers' FLUX LoRA format
            has no T5 part).
    """

    name = "flux"
    title = "FLUX.1"
    pipeline_class_names = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    default_resolution = 1024
    embedding_keys: Mapping[str, str] = {}
    max_sequence_length = 512
    generation_guidance_scale = 3.5
    lora_text_encoders = ("text_encoder",)

    def native_resolution(self, pipe: Any) -> int:
        """The image size the model was made for: its VAE config's `sample_size` (1024 for FLUX.1, 32 for the tiny
        built-ins); `default_resolution` when the VAE config has none."""
        return int(getattr(pipe.vae.config, "sample_size", None) or self.default_resolution)

    def default_guidance_scale(self, pipe: Any) -> float:
        """3.5 for a guidance-distilled transformer (FLUX.1-dev, `guidance_embeds=True`; diffusers' FLUX LoRA script's
        default), else 1.0 (FLUX.1-schnell)."""
        return 3.5 if getattr(pipe.transformer.config, "guidance_embeds", False) else 1.0

    def check_resolution(self, pipe: Any, resolution: int) -> None:
        """Refuse a training resolution whose latents cannot be packed into 2x2 patches.

        Raises:
            ConfigError: `resolution` is not a multiple of twice the VAE's downscale factor.
        """
        multiple = 2 * int(pipe.vae_scale_factor)
        if resolution % multiple:
            nearest = resolution // multiple * multiple or multiple
            raise ConfigError(f"resolution={resolution}: a {self.title} model packs its latents into 2x2 patches, so "
                              f"the resolution must be a multiple of {multiple}; use {nearest}.")

    def tokenize(self, pipe: Any, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """CLIP ids padded to 77 and T5 ids padded to `max_sequence_length`, as `FluxPipeline.encode_prompt` pads them."""
        captions = list(captions)
        clip = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True,
                              return_tensors="pt").input_ids
        t5 = pipe.tokenizer_2(captions, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                              return_tensors="pt").input_ids
        return {"tokenizer": clip, "tokenizer_2": t5}

    def encode_prompts(self, pipe: Any, input_ids: Mapping[str, torch.Tensor],
                       text_encoders: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """`prompt_embeds` `[N, L, D]` (T5 hidden states), `pooled_prompt_embeds` `[N, D]` (CLIP pooled output) and
        `text_ids` `[N, L, 3]` (zeros; the transformer takes one row of them), as `FluxPipeline.encode_prompt`.

        A component missing from `text_encoders` runs the pipeline's own module.
        """
        clip = text_encoders["text_encoder"] if "text_encoder" in text_encoders else pipe.text_encoder
        t5 = text_encoders["text_encoder_2"] if "text_encoder_2" in text_encoders else pipe.text_encoder_2
        clip_dtype, t5_dtype = pipe.text_encoder.dtype, pipe.text_encoder_2.dtype
        pooled = clip(input_ids["tokenizer"].to(_device_of(clip)), output_hidden_states=False).pooler_output
        hidden = t5(input_ids["tokenizer_2"].to(_device_of(t5)), output_hidden_states=False)[0]
        prompt_embeds = hidden.to(t5_dtype)
        text_ids = torch.zeros(prompt_embeds.shape[0], prompt_embeds.shape[1], 3, device=prompt_embeds.device,
                               dtype=clip_dtype)
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled.to(clip_dtype), "text_ids": text_ids}

    def latents(self, vae: Any, sample: torch.Tensor) -> torch.Tensor:
        """`(sample - shift_factor) * scaling_factor`, as FLUX.1's VAE statistics say (unpacked, `[N, 16, h, w]`)."""
        shift = float(vae.config.shift_factor or 0.0)
        return (sample - shift) * float(vae.config.scaling_factor)

    def training_losses(self, pipe: Any, denoiser: torch.nn.Module, latents: torch.Tensor,
                        conditioning: Mapping[str, torch.Tensor], generator: torch.Generator,
                        objective: TrainingObjective) -> torch.Tensor:
        """The per-example flow-matching loss `[N]` of diffusers' `train_dreambooth_lora_flux.py`.

        Draws from `generator` (CPU), in this order: the noise `[N, C, h, w]`, then the timestep density's `N`
        samples. The guidance input is `objective.guidance_scale` for a transformer with `guidance_embeds`
        (FLUX.1-dev), None otherwise.

        Raises:
            ConfigError: `snr_gamma` or `noise_offset` (DDPM settings with no meaning for flow matching), an unknown
                `weighting_scheme`, `guidance_scale` on a transformer without guidance embedding, or latents whose
                height or width is odd.
        """
        from diffusers import FluxPipeline

        guidance_embeds = bool(pipe.transformer.config.guidance_embeds)
        self.check_objective(objective, guidance_embeds=guidance_embeds)
        batch, channels, height, width = latents.shape
        if height % 2 or width % 2:
            raise ConfigError(f"Latents of {height}x{width}: {self.title} packs latents into 2x2 patches, so the training "
                              f"resolution must be a multiple of {2 * int(pipe.vae_scale_factor)}.")
        device, dtype = latents.device, latents.dtype

        # 1. Noise and timesteps from the run's generator; the noisy latents packed into 2x2 patches.
        draw = self.draw(pipe, latents, generator, objective)
        packed = FluxPipeline._pack_latents(draw.noisy, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, dtype)
        guidance = torch.full((batch,), float(objective.guidance_scale), device=device) if guidance_embeds else None

        # 2. The predicted velocity, unpacked, against the true one.
        transformer_dtype = pipe.transformer.dtype
        prediction = denoiser(
            hidden_states=packed.to(transformer_dtype),
            timestep=draw.timesteps / 1000,  # the transformer scales it back by 1000
            guidance=guidance,
            pooled_projections=conditioning["pooled_prompt_embeds"].to(device, transformer_dtype),
            encoder_hidden_states=conditioning["prompt_embeds"].to(device, transformer_dtype),
            txt_ids=conditioning["text_ids"][0].to(device),
            img_ids=image_ids,
            return_dict=False,
        )[0]
        vae_scale_factor = int(pipe.vae_scale_factor)
        prediction = FluxPipeline._unpack_latents(prediction, height * vae_scale_factor, width * vae_scale_factor,
                                                  vae_scale_factor)
        return weighted_losses(draw.weighting, prediction, draw.noise - latents)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


FAMILY = FluxFamily()
"""The FLUX.1 family."""
