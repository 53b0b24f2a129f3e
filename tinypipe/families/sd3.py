"""Stable Diffusion 3: an MMDiT transformer on 16-channel latents, conditioned by two CLIP encoders and T5.

What a trainer needs to know, as `diffusers.StableDiffusion3Pipeline` and diffusers' `train_dreambooth_lora_sd3.py`
do it:

- **Prompts**: each CLIP encoder's penultimate hidden states, concatenated on the feature axis and zero-padded to
  T5's width, then followed by T5's hidden states over `max_sequence_length` (256) tokens: `prompt_embeds`
  `[N, 77 + 256, 4096]`; the two CLIP encoders' projected pooled outputs side by side: `pooled_prompt_embeds`
  `[N, 2048]`.
- **Latents**: `(sample - shift_factor) * scaling_factor`, unpacked (the transformer patchifies them itself).
- **Objective**: flow matching (`families.flow_matching`) with the scheduler's static shift, the raw timestep as the
  transformer's input, and the script's output preconditioning: the prediction becomes `noisy - sigma * prediction`
  and the target the clean latents.
- **Methods**: LoRA and DreamBooth-LoRA on the transformer, optionally on both CLIP text encoders (diffusers' SD3
  LoRA format has no T5 part). Textual inversion and full fine-tuning are refused.
- **LoRA files**: `StableDiffusion3Pipeline.save_lora_weights(transformer_lora_layers=..., text_encoder_lora_layers=...,
  text_encoder_2_lora_layers=...)`, read back by `load_lora_weights` (see `tinypipe.families.lora_files`).
"""

from typing import Any, Mapping, Sequence

import torch

from .base import TrainingObjective
from .flow_matching import FlowMatchingFamily, weighted_losses

__all__ = ["StableDiffusion3Family", "FAMILY"]


class StableDiffusion3Family(FlowMatchingFamily):
    """Stable Diffusion 3 / 3.5: `StableDiffusion3Pipeline` folders.

    Attributes (beyond `ModelFamily`'s):
        max_sequence_length: T5 tokens per prompt, `StableDiffusion3Pipeline`'s default, so training sees the
            conditioning generation sees.
        lora_text_encoders: The text encoders a LoRA may train: the two CLIP ones.
    """

    name = "sd3"
    title = "Stable Diffusion 3"
    pipeline_class_names = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    default_resolution = 1024
    embedding_keys: Mapping[str, str] = {}
    max_sequence_length = 256
    generation_guidance_scale = 7.0
    lora_text_encoders = ("text_encoder", "text_encoder_2")

    def native_resolution(self, pipe: Any) -> int:
        """The transformer's `sample_size` times the VAE's downscale (1024 for SD3, 32 for `tinypipe/tiny-sd3`)."""
        return int(pipe.transformer.config.sample_size) * int(pipe.vae_scale_factor)

    def tokenize(self, pipe: Any, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """CLIP ids padded to 77 for both CLIP tokenizers, T5 ids padded to `max_sequence_length`."""
        captions = list(captions)
        ids = {name: getattr(pipe, name)(captions, padding="max_length", max_length=pipe.tokenizer_max_length,
                                         truncation=True, return_tensors="pt").input_ids
               for name in ("tokenizer", "tokenizer_2")}
        ids["tokenizer_3"] = pipe.tokenizer_3(captions, padding="max_length", max_length=self.max_sequence_length,
                                              truncation=True, add_special_tokens=True, return_tensors="pt").input_ids
        return ids

    def encode_prompts(self, pipe: Any, input_ids: Mapping[str, torch.Tensor],
                       text_encoders: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """`prompt_embeds` `[N, 77 + L, D_T5]` and `pooled_prompt_embeds` `[N, P1 + P2]`, as
        `StableDiffusion3Pipeline.encode_prompt` computes them (no clip skip). A component missing from
        `text_encoders` runs the pipeline's own module."""
        def encoder(name: str) -> torch.nn.Module:
            return text_encoders[name] if name in text_encoders else getattr(pipe, name)

        hidden, pooled = [], []
        for encoder_name, tokenizer_name in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            module = encoder(encoder_name)
            output = module(input_ids[tokenizer_name].to(_device_of(module)), output_hidden_states=True)
            pooled.append(output[0])
            hidden.append(output.hidden_states[-2].to(pipe.text_encoder.dtype))
        t5 = encoder("text_encoder_3")
        t5_states = t5(input_ids["tokenizer_3"].to(_device_of(t5)))[0].to(pipe.text_encoder_3.dtype)
        clip_states = torch.cat(hidden, dim=-1)
        clip_states = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
        return {"prompt_embeds": torch.cat([clip_states, t5_states.to(clip_states.device)], dim=-2),
                "pooled_prompt_embeds": torch.cat(pooled, dim=-1)}

    def latents(self, vae: Any, sample: torch.Tensor) -> torch.Tensor:
        """`(sample - shift_factor) * scaling_factor`, as SD3's VAE statistics say."""
        return (sample - float(vae.config.shift_factor or 0.0)) * float(vae.config.scaling_factor)

    def training_losses(self, pipe: Any, denoiser: torch.nn.Module, latents: torch.Tensor,
                        conditioning: Mapping[str, torch.Tensor], generator: torch.Generator,
                        objective: TrainingObjective) -> torch.Tensor:
        """The per-example loss `[N]` of diffusers' `train_dreambooth_lora_sd3.py` (with its default output
        preconditioning). Draws from `generator` (CPU): the noise `[N, C, h, w]`, then the timestep density's `N` samples.

        Raises:
            ConfigError: `snr_gamma`, `noise_offset`, an unknown `weighting_scheme`, or a `guidance_scale` (SD3 has no
                guidance embedding).
        """
        self.check_objective(objective, guidance_embeds=False)
        draw = self.draw(pipe, latents, generator, objective)
        transformer_dtype = pipe.transformer.dtype
        device = latents.device
        prediction = denoiser(
            hidden_states=draw.noisy.to(transformer_dtype),
            timestep=draw.timesteps,
            encoder_hidden_states=conditioning["prompt_embeds"].to(device, transformer_dtype),
            pooled_projections=conditioning["pooled_prompt_embeds"].to(device, transformer_dtype),
            return_dict=False,
        )[0]
        # Preconditioned output (EDM, section 5): the denoised latents, compared with the clean ones.
        denoised = prediction.float() * (-draw.sigmas) + draw.noisy
        return weighted_losses(draw.weighting, denoised, latents)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


FAMILY = StableDiffusion3Family()
"""The Stable Diffusion 3 family."""
