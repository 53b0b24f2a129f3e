"""Stable Diffusion 1/2: a UNet conditioned on one CLIP text encoder's last hidden states, trained with DDPM noise.

The training target is the scheduler's `prediction_type`: the noise (epsilon, SD 1.x, SD 2 base) or the velocity
(v-prediction, SD 2 768), with optional offset noise and Min-SNR-gamma weighting, computed as diffusers'
`train_dreambooth_lora.py` computes them. `DDPMFamily` holds that objective; SDXL (`families.sdxl`) shares it and
adds its second text encoder and size conditioning.
"""

import functools
import json
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import ModelFamily, TrainingObjective

__all__ = ["DDPMFamily", "StableDiffusionFamily", "FAMILY", "training_scheduler"]


class DDPMFamily(ModelFamily):
    """A UNet family trained on DDPM noise (epsilon or v-prediction): the objective SD 1/2 and SDXL share."""

    denoiser = "unet"
    denoiser_lora_targets = ("to_k", "to_q", "to_v", "to_out.0")

    def tokenize(self, pipe: Any, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Ids padded/truncated to each tokenizer's `model_max_length`, as the text encoders expect."""
        return {name: _token_ids(getattr(pipe, name), captions) for name in self.tokenizers}

    def denoiser_inputs(self, conditioning: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        """The keyword arguments of the UNet's call besides the noisy latents and timesteps."""
        return {"encoder_hidden_states": conditioning["prompt_embeds"].to(dtype)}

    def training_losses(self, pipe: Any, denoiser: torch.nn.Module, latents: torch.Tensor,
                        conditioning: Mapping[str, torch.Tensor], generator: torch.Generator,
                        objective: TrainingObjective) -> torch.Tensor:
        """DDPM denoising loss per example: noise (plus offset noise), uniform timesteps, epsilon or velocity target,
        optional Min-SNR-gamma weighting. Draws from `generator` in this order: noise, offset noise, timesteps.

        Raises:
            ConfigError: A flow-matching `weighting_scheme` (DDPM families do not sample timesteps that way).
        """
        if objective.weighting_scheme != "none":
            raise ConfigError(f"weighting_scheme={objective.weighting_scheme!r} is a flow-matching setting; the {self.title} "
                              "family trains on DDPM noise. Leave it at 'none' (use snr_gamma to weight the loss).")
        noise_scheduler = training_scheduler(pipe)
        device = latents.device
        noise = torch.randn(latents.shape, generator=generator)
        if objective.noise_offset:
            noise = noise + objective.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        noise, timesteps = noise.to(device), timesteps.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        prediction = denoiser(noisy, timesteps, **self.denoiser_inputs(conditioning, noisy.dtype), return_dict=False)[0]
        losses = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if objective.snr_gamma is not None:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(noise_scheduler, timesteps)
            weights = torch.minimum(snr, torch.full_like(snr, objective.snr_gamma))
            weights = weights / snr if noise_scheduler.config.prediction_type == "epsilon" else weights / (snr + 1)
            losses = losses * weights
        return losses


class StableDiffusionFamily(DDPMFamily):
    """Stable Diffusion 1.x / 2.x: `StableDiffusionPipeline`, one CLIP text encoder, 512 px."""

    name = "sd"
    title = "Stable Diffusion 1/2"
    pipeline_class_names = ("StableDiffusionPipeline",)
    text_encoders = ("text_encoder",)
    tokenizers = ("tokenizer",)
    default_resolution = 512

    def pipeline_load_arguments(self) -> dict[str, Any]:
        """No safety checker: a fine-tuning base model is loaded for training and sampling, not for serving."""
        return {"safety_checker": None, "requires_safety_checker": False}

    def encode_prompts(self, pipe: Any, input_ids: Mapping[str, torch.Tensor],
                       text_encoders: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """`{"prompt_embeds": [N, L, D]}`: the text encoder's last hidden states, as `StableDiffusionPipeline` uses them."""
        encoder = text_encoders["text_encoder"]
        ids = input_ids["tokenizer"].to(_device_of(encoder))
        return {"prompt_embeds": encoder(ids)[0]}


def training_scheduler(pipe: Any) -> Any:
    """A DDPM scheduler with the base model's noise schedule, as the diffusers training scripts build it (made once per
    schedule: a pipeline sampling with another scheduler class, Euler for SDXL, would log its extra keys every step)."""
    return _ddpm_scheduler(json.dumps(dict(pipe.scheduler.config), sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _ddpm_scheduler(config_json: str) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(json.loads(config_json))


def _token_ids(tokenizer: Any, captions: Sequence[str]) -> torch.Tensor:
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


FAMILY = StableDiffusionFamily()
