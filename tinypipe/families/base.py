"""The contract of a diffusion model family: everything a trainer must know about one architecture.

A family (Stable Diffusion 1/2, SDXL, FLUX.1, ...) is one `ModelFamily` object in one module of this package. The
trainers (LoRA, DreamBooth, textual inversion) are family-agnostic recipes: they ask the family of their pipeline
which components train, how captions become conditioning, how an image's size and crop become conditioning, what the
training target and loss are, and which methods it supports. `tinypipe.families.family_of` detects a family from a
diffusers `model_index.json` (`_class_name`).

Tensors crossing this contract are batch-first, so that the trainers can cache them once and index them per batch:
`tokenize` returns `{tokenizer_component: LongTensor[N, L]}`, `encode_prompts` returns
`{name: Tensor[N, ...]}` (e.g. `prompt_embeds` `[N, L, D]`, `pooled_prompt_embeds` `[N, D]`), `image_conditioning`
returns `{name: Tensor[N, ...]}` (SDXL's `add_time_ids` `[N, 6]`), and `training_losses` returns `Tensor[N]`.
"""

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch

__all__ = ["ModelFamily", "TrainingObjective", "METHODS", "METHOD_NAMES", "method_of"]

METHODS = ("lora", "dreambooth_lora", "dreambooth_full", "textual_inversion")
"""The training methods a family may support: LoRA, DreamBooth-LoRA (with prior preservation), DreamBooth
fine-tuning every weight, and textual inversion."""

METHOD_NAMES = {
    "lora": "LoRA (--method lora; LoRATrainer)",
    "dreambooth_lora": "DreamBooth-LoRA (--method lora with --prior-class-prompt, or --method dreambooth with "
                       "'{\"use_lora\": true}' in --training-args; DreamBoothTrainer(use_lora=True))",
    "dreambooth_full": "DreamBooth fine-tuning every weight (--method dreambooth; DreamBoothTrainer)",
    "textual_inversion": "Textual inversion (--method textual-inversion; TextualInversionTrainer)",
}
"""Each method as a user asks for it (the command line's --method and options, the trainer class): the names every
refusal uses, never the internal ones of `METHODS`."""


def method_of(command_method: str, settings: Mapping[str, Any]) -> str:
    """The `METHODS` name of a run: its `--method` (`"lora"`, `"dreambooth"`, `"textual-inversion"`, as the trainer
    classes' own) and the settings that change it (`with_prior_preservation` for LoRA, `use_lora` for DreamBooth)."""
    if command_method == "textual-inversion":
        return "textual_inversion"
    if command_method == "dreambooth":
        return "dreambooth_lora" if settings.get("use_lora") else "dreambooth_full"
    return "dreambooth_lora" if settings.get("with_prior_preservation") else "lora"


@dataclass(frozen=True)
class TrainingObjective:
    """The loss settings of a run that a family's `training_losses` honours or refuses.

    Args:
        snr_gamma: Min-SNR-gamma loss weighting (DDPM families); None for plain MSE.
        noise_offset: Offset-noise strength (DDPM families); 0 for none.
        weighting_scheme: Timestep density and loss weighting of flow-matching families, as diffusers'
            `compute_density_for_timestep_sampling` / `compute_loss_weighting_for_sd3` name them
            (`"none"`, `"sigma_sqrt"`, `"logit_normal"`, `"mode"`, `"cosmap"`).
        logit_mean, logit_std: Parameters of the `"logit_normal"` density.
        mode_scale: Parameter of the `"mode"` density.
        guidance_scale: The guidance embedding value a guidance-distilled model (FLUX.1-dev) trains with.
    """

    snr_gamma: Optional[float] = None
    noise_offset: float = 0.0
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    guidance_scale: float = 1.0


class ModelFamily:
    """One diffusion model family. Subclasses set the attributes and implement the methods.

    Attributes:
        name: Short name used in configs, messages and tables (`"sd"`, `"sdxl"`, `"flux"`).
        title: Human name (`"Stable Diffusion XL"`).
        pipeline_class_names: `model_index.json` `_class_name`s that are this family; the first is the diffusers
            pipeline class the family loads, saves and generates with.
        denoiser: Component name of the model that denoises (`"unet"` or `"transformer"`).
        text_encoders: Component names of the text encoders, in the pipeline's order.
        tokenizers: Component names of the tokenizers, one per text encoder, same order.
        default_resolution: Training resolution in pixels when the user gives none.
        methods: The members of `METHODS` this family supports; the others are refused before heavy work.
        denoiser_lora_targets: Default LoRA target modules of the denoiser.
        text_encoder_lora_targets: Default LoRA target modules of a (CLIP) text encoder.
        embedding_keys: For textual inversion, the key under which each text encoder's vectors are stored in a
            multi-encoder embedding file (SDXL: `{"text_encoder": "clip_l", "text_encoder_2": "clip_g"}`);
            empty when one encoder (the file holds `{token: vectors}`) or unsupported.
        generation_guidance_scale: The guidance scale `generate` uses when given none (the pipeline's own default).
    """

    name: str = ""
    title: str = ""
    pipeline_class_names: tuple[str, ...] = ()
    denoiser: str = "unet"
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    default_resolution: int = 512
    methods: frozenset = frozenset(METHODS)
    denoiser_lora_targets: tuple[str, ...] = ()
    text_encoder_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    embedding_keys: Mapping[str, str] = {}
    generation_guidance_scale: float = 7.5

    @property
    def lora_text_encoders(self) -> tuple[str, ...]:
        """The text encoders that train with `train_text_encoder` (a LoRA on each, or every weight): all of them by
        default; a family whose LoRA file format has no place for one (FLUX.1's T5) names fewer."""
        return self.text_encoders

    def native_resolution(self, pipe: Any) -> int:
        """The image size in pixels the model was made for: the denoiser's `sample_size` times the VAE's downscale
        (SD 1.5 512, SDXL 1024), else `default_resolution`."""
        sample_size = getattr(getattr(pipe, self.denoiser).config, "sample_size", None)
        if isinstance(sample_size, int):
            return sample_size * int(pipe.vae_scale_factor)
        return self.default_resolution

    def check_resolution(self, pipe: Any, resolution: int) -> None:
        """Refuse a training resolution the model cannot take (call it before heavy work); any by default.

        Raises:
            ConfigError: Naming the resolution and the nearest one that works.
        """

    def default_guidance_scale(self, pipe: Any) -> float:
        """The guidance value a run trains with when the user gives none: 1.0 (no guidance input) by default."""
        return 1.0

    def check_objective(self, objective: TrainingObjective, *, guidance_embeds: bool = False) -> None:
        """Refuse loss settings this family cannot honour, before heavy work. A DDPM family has no flow-matching
        timestep density and no guidance input.

        Raises:
            ConfigError: Naming the setting and the fix.
        """
        from ..errors import ConfigError

        if objective.weighting_scheme != "none":
            raise ConfigError(f"weighting_scheme={objective.weighting_scheme!r} is the timestep density of flow-matching "
                              f"models (FLUX.1, SD3) and does not apply to {self.title}; remove it (snr_gamma weights "
                              "DDPM timesteps).")
        if objective.guidance_scale != 1.0:
            raise ConfigError(f"guidance_scale={objective.guidance_scale}: {self.title}'s denoiser has no guidance input, "
                              "so nothing would use it; remove guidance_scale (validation_guidance_scale sets the images' "
                              "classifier-free guidance).")

    @property
    def pipeline_class(self) -> type:
        """The diffusers pipeline class (imported on first use)."""
        import diffusers

        return getattr(diffusers, self.pipeline_class_names[0])

    def pipeline_load_arguments(self) -> dict[str, Any]:
        """Extra keyword arguments for the pipeline class's `from_pretrained` (SD 1/2: no safety checker); none by default."""
        return {}

    def tokenize(self, pipe: Any, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids of each caption for each tokenizer: `{tokenizer_component: LongTensor[N, L]}`."""
        raise NotImplementedError

    def encode_prompts(self, pipe: Any, input_ids: Mapping[str, torch.Tensor],
                       text_encoders: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """The denoiser's text conditioning from `tokenize`'s ids, computed as the family's pipeline computes it.

        `text_encoders` maps component names to the modules to run (the trainer passes accelerate-wrapped ones when
        they train). Returns batch-first tensors, e.g. `{"prompt_embeds": [N, L, D], "pooled_prompt_embeds": [N, D]}`.
        """
        raise NotImplementedError

    def image_conditioning(self, original_sizes: Sequence[tuple[int, int]], crops_top_left: Sequence[tuple[int, int]],
                           resolution: int) -> dict[str, torch.Tensor]:
        """Per-image conditioning from each image's `(height, width)` before resizing and the `(top, left)` of its
        crop; empty for families that have none (SDXL returns `{"add_time_ids": [N, 6]}`)."""
        return {}

    def latents(self, vae: Any, sample: torch.Tensor) -> torch.Tensor:
        """Latents the denoiser trains on, from a VAE posterior sample `[N, C, h, w]` (scaling and shift applied)."""
        return sample * float(vae.config.scaling_factor)

    def training_losses(self, pipe: Any, denoiser: torch.nn.Module, latents: torch.Tensor,
                        conditioning: Mapping[str, torch.Tensor], generator: torch.Generator,
                        objective: TrainingObjective) -> torch.Tensor:
        """The per-example training loss `[N]` of one batch: noise and timesteps drawn from `generator` (CPU), the
        family's target (epsilon / v-prediction / flow velocity) and weighting, the denoiser's prediction.

        `pipe` gives the scheduler config (`pipe.scheduler.config`); `denoiser` is the module to call (possibly
        accelerate-wrapped); `conditioning` is `encode_prompts` merged with `image_conditioning`, on the device.

        Raises:
            ConfigError: An `objective` setting this family cannot honour (e.g. `snr_gamma` for flow matching).
        """
        raise NotImplementedError

    def check_method(self, method: str) -> None:
        """Refuse a method the family does not support, naming the alternatives.

        Raises:
            ConfigError: `method` is not in `methods`.
        """
        from ..errors import ConfigError

        if method not in self.methods:
            supported = "; ".join(METHOD_NAMES[name] for name in METHODS if name in self.methods)
            raise ConfigError(f"{METHOD_NAMES[method]} is not supported for the {self.title} family; it supports: "
                              f"{supported}.")
