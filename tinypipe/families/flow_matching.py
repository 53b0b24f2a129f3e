"""The rectified-flow (flow-matching) objective that FLUX.1 and Stable Diffusion 3 share, as diffusers' training scripts
(`train_dreambooth_lora_flux.py`, `train_dreambooth_lora_sd3.py`) compute it.

A timestep index is drawn from `compute_density_for_timestep_sampling` (uniform, logit-normal or mode density), its
sigma read off the scheduler's training schedule (shifted as the scheduler's config says), and the latents moved
along the straight path to the noise: `noisy = (1 - sigma) * latents + sigma * noise`. The denoiser predicts the
velocity `noise - latents`; `compute_loss_weighting_for_sd3` weights the squared error. The DDPM settings
`snr_gamma` and `noise_offset` have no meaning here and are refused.
"""

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .base import METHOD_NAMES, ModelFamily, TrainingObjective

__all__ = ["FlowMatchingFamily", "FlowMatchingDraw", "WEIGHTING_SCHEMES"]

WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")
"""The `weighting_scheme`s diffusers' `compute_density_for_timestep_sampling` / `compute_loss_weighting_for_sd3` know."""


@dataclass(frozen=True)
class FlowMatchingDraw:
    """One batch's random draws and the noisy latents made from them (on the latents' device and dtype).

    `timesteps` `[N]` are the schedule's (0..1000), `sigmas` `[N, 1, 1, 1]`; `weighting` broadcasts like `sigmas`.
    """

    noise: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    noisy: torch.Tensor
    weighting: torch.Tensor


class FlowMatchingFamily(ModelFamily):
    """A transformer family trained with flow matching: LoRA and DreamBooth-LoRA; textual inversion and full
    fine-tuning are refused with the LoRA alternative named."""

    denoiser = "transformer"
    methods = frozenset({"lora", "dreambooth_lora"})
    # The attention projections of the image and the text stream, as diffusers' FLUX and SD3 LoRA scripts target them.
    denoiser_lora_targets = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out")

    _ALTERNATIVES = {
        "textual_inversion": "its prompts go through a T5 encoder as well as CLIP, and diffusers' pipeline for it loads no "
                             "textual-inversion embeddings; teach the concept with a LoRA instead: --method lora "
                             "(LoRATrainer), with an identifier token such as 'sks' in the prompt",
        "dreambooth_full": "fine-tuning every weight of its multi-billion-parameter transformer does not fit one machine; "
                           "use DreamBooth-LoRA instead: --method dreambooth with '{\"use_lora\": true}' in --training-args "
                           "(DreamBoothTrainer(use_lora=True)), prior preservation as before",
    }

    def check_method(self, method: str) -> None:
        """Refuse textual inversion and full fine-tuning, naming the LoRA method that does the job.

        Raises:
            ConfigError: `method` is not `"lora"` or `"dreambooth_lora"`.
        """
        if method in self._ALTERNATIVES:
            raise ConfigError(f"{METHOD_NAMES[method]} is not supported for the {self.title} family: "
                              f"{self._ALTERNATIVES[method]}.")
        super().check_method(method)

    def check_objective(self, objective: TrainingObjective, *, guidance_embeds: bool = False) -> None:
        """Refuse the loss settings flow matching cannot honour (call it before heavy work; `training_losses` does).

        Args:
            objective: The run's loss settings.
            guidance_embeds: Whether the transformer takes a guidance input (FLUX.1-dev: `transformer.config.guidance_embeds`).

        Raises:
            ConfigError: Naming the setting and the fix.
        """
        if objective.snr_gamma is not None:
            raise ConfigError(f"snr_gamma={objective.snr_gamma}: Min-SNR weighting is for DDPM noise prediction and does "
                              f"not apply to {self.title}'s flow matching. Remove snr_gamma; to weight timesteps use "
                              f"weighting_scheme (one of {', '.join(WEIGHTING_SCHEMES)}).")
        if objective.noise_offset:
            raise ConfigError(f"noise_offset={objective.noise_offset}: offset noise is for DDPM noise schedules and does "
                              f"not apply to {self.title}'s flow matching. Set noise_offset=0.")
        if objective.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ConfigError(f"weighting_scheme={objective.weighting_scheme!r} is not one diffusers knows; use one of "
                              f"{', '.join(WEIGHTING_SCHEMES)}.")
        if not guidance_embeds and objective.guidance_scale != 1.0:
            raise ConfigError(f"guidance_scale={objective.guidance_scale}: this {self.title} transformer has no guidance "
                              "embedding (guidance_embeds=False, as FLUX.1-schnell and SD3), so nothing would use it. "
                              "Leave guidance_scale at 1.0, or train a guidance-distilled model such as FLUX.1-dev.")

    def training_schedule(self, pipe: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(timesteps, sigmas)` a flow-matching run trains on, `[num_train_timesteps]` each: those of a fresh
        `FlowMatchEulerDiscreteScheduler` with the pipeline's scheduler config (shifted unless the config shifts
        dynamically at sampling time, as FLUX.1-dev's does), as the diffusers scripts' copy of the scheduler has them.
        The pipeline's own scheduler is not read: sampling resets its timesteps. Built once per scheduler config
        (every training step asks), like the DDPM families' `sd.training_scheduler`."""
        timesteps, sigmas = _flow_schedule(json.dumps(dict(pipe.scheduler.config), sort_keys=True, default=str))
        return timesteps.clone(), sigmas.clone()

    def draw(self, pipe: Any, latents: torch.Tensor, generator: torch.Generator,
             objective: TrainingObjective) -> FlowMatchingDraw:
        """Draw noise then timesteps from `generator` (CPU, in that order) and make the noisy latents of one batch.

        Args:
            pipe: The diffusers pipeline (its scheduler config gives the schedule).
            latents: `[N, C, h, w]`, as `latents` returns them.
            generator: The run's CPU generator.
            objective: The density (`weighting_scheme`, `logit_mean`, `logit_std`, `mode_scale`).
        """
        from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        density = compute_density_for_timestep_sampling(
            weighting_scheme=objective.weighting_scheme, batch_size=batch, logit_mean=objective.logit_mean,
            logit_std=objective.logit_std, mode_scale=objective.mode_scale, device="cpu", generator=generator)
        timesteps, sigmas = self.training_schedule(pipe)
        # The "mode" density can reach 1.0 exactly; the schedule has no index past its last.
        indices = (density * len(timesteps)).long().clamp(0, len(timesteps) - 1)
        device, dtype = latents.device, latents.dtype
        sigmas = sigmas[indices].to(device, dtype).view(batch, *([1] * (latents.ndim - 1)))
        noise = noise.to(device, dtype)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        weighting = compute_loss_weighting_for_sd3(weighting_scheme=objective.weighting_scheme, sigmas=sigmas)
        return FlowMatchingDraw(noise, timesteps[indices].to(device), sigmas, noisy, weighting)


def weighted_losses(weighting: torch.Tensor, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The per-example weighted mean squared error `[N]`, in float32, as the diffusers scripts reduce it."""
    return (weighting.float() * (prediction.float() - target.float()) ** 2).reshape(target.shape[0], -1).mean(dim=1)


@functools.lru_cache(maxsize=8)
def _flow_schedule(config_json: str) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(json.loads(config_json))
    return scheduler.timesteps, scheduler.sigmas
