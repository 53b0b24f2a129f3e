"""The Stable Diffusion 3 family: detection, prompt encoding as StableDiffusion3Pipeline does it, the preconditioned
flow-matching loss of diffusers' SD3 LoRA script, refusals, and a LoRA that plain load_lora_weights loads."""

import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from peft import LoraConfig

from tinypipe.builtin import TINY_SD3
from tinypipe.builtin.tiny_sd3 import builtin_sd3_folder
from tinypipe.errors import ConfigError
from tinypipe.families import TrainingObjective, family_of
from tinypipe.families.lora_files import peft_lora_layers, save_lora_weights
from tinypipe.families.sd3 import FAMILY as SD3

CAPTIONS = ["a photo of sks dog", "a red circle"]


@pytest.fixture(scope="module")
def folder():
    return builtin_sd3_folder(TINY_SD3)


@pytest.fixture(scope="module")
def pipe(folder):
    return StableDiffusion3Pipeline.from_pretrained(folder)


def _latents(pipe):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        return SD3.latents(pipe.vae, pipe.vae.encode(pixels).latent_dist.sample(generator=generator))


def _generate(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(CAPTIONS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


def test_family_is_detected_and_encodes_prompts_as_the_pipeline_does(folder, pipe):
    assert family_of(folder / "model_index.json") is SD3 and SD3.native_resolution(pipe) == 32
    with torch.no_grad():
        conditioning = SD3.encode_prompts(pipe, SD3.tokenize(pipe, CAPTIONS), {})
        prompt_embeds, _, pooled_prompt_embeds, _ = pipe.encode_prompt(CAPTIONS, None, None, do_classifier_free_guidance=False)

    assert conditioning["prompt_embeds"].shape == (2, 77 + 256, 64)
    torch.testing.assert_close(conditioning["prompt_embeds"], prompt_embeds, rtol=0, atol=0)
    torch.testing.assert_close(conditioning["pooled_prompt_embeds"], pooled_prompt_embeds, rtol=0, atol=0)


def test_training_losses_equal_an_independent_recomputation_of_preconditioned_flow_matching(pipe):
    latents = _latents(pipe)
    with torch.no_grad():
        conditioning = SD3.encode_prompts(pipe, SD3.tokenize(pipe, CAPTIONS), {})
        losses = SD3.training_losses(pipe, pipe.transformer, latents, conditioning, torch.Generator().manual_seed(5),
                                     TrainingObjective(weighting_scheme="logit_normal", logit_mean=0.3))

        generator = torch.Generator().manual_seed(5)
        noise = torch.randn(latents.shape, generator=generator)
        u = torch.sigmoid(torch.normal(0.3, 1.0, (2,), generator=generator))
        shift = pipe.scheduler.config.shift
        sigmas = torch.arange(1000, 0, -1, dtype=torch.float32) / 1000
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        sigma = sigmas[(u * 1000).long()].view(2, 1, 1, 1)
        noisy = (1 - sigma) * latents + sigma * noise
        prediction = pipe.transformer(hidden_states=noisy, timestep=sigma.flatten() * 1000,
                                      encoder_hidden_states=conditioning["prompt_embeds"],
                                      pooled_projections=conditioning["pooled_prompt_embeds"], return_dict=False)[0]
        expected = ((noisy - sigma * prediction - latents) ** 2).reshape(2, -1).mean(dim=1)

    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)


def test_guidance_and_ddpm_settings_and_textual_inversion_are_refused():
    with pytest.raises(ConfigError, match="guidance_scale=3.5.*no guidance embedding"):
        SD3.check_objective(TrainingObjective(guidance_scale=3.5))
    with pytest.raises(ConfigError, match="snr_gamma=5.0.*Stable Diffusion 3's flow matching"):
        SD3.check_objective(TrainingObjective(snr_gamma=5.0))
    with pytest.raises(ConfigError, match="Textual inversion .* is not supported for the Stable Diffusion 3 family.*LoRA"):
        SD3.check_method("textual_inversion")
    with pytest.raises(ConfigError, match="DreamBooth fine-tuning every weight .* is not supported.*use_lora"):
        SD3.check_method("dreambooth_full")


def test_lora_on_transformer_and_both_clip_encoders_loads_in_a_fresh_sd3_pipeline_with_the_same_images(folder, tmp_path):
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    configs = {"transformer": LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                         target_modules=list(SD3.denoiser_lora_targets))}
    configs.update({name: LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=list(SD3.text_encoder_lora_targets)) for name in SD3.lora_text_encoders})
    for component, config in configs.items():
        getattr(pipe, component).add_adapter(config)
    parameters = [parameter for component in configs for name, parameter in getattr(pipe, component).named_parameters()
                  if "lora_" in name]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    generator, latents, ids = torch.Generator().manual_seed(0), _latents(pipe), SD3.tokenize(pipe, CAPTIONS)
    for _ in range(2):
        conditioning = SD3.encode_prompts(pipe, ids, {name: getattr(pipe, name) for name in SD3.lora_text_encoders})
        losses = SD3.training_losses(pipe, pipe.transformer, latents, conditioning, generator, TrainingObjective())
        assert torch.isfinite(losses).all() and not math.isnan(losses.sum().item())
        losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    save_lora_weights(SD3, tmp_path, peft_lora_layers(pipe, list(configs)), {name: c.to_dict() for name, c in configs.items()})
    fresh = StableDiffusion3Pipeline.from_pretrained(folder)
    base_images = _generate(fresh)
    fresh.load_lora_weights(tmp_path)

    loaded_images = _generate(fresh)
    np.testing.assert_array_equal(loaded_images, _generate(pipe))
    assert np.abs(loaded_images - base_images).max() > 1e-3
    assert all("default_0" in getattr(fresh, name).peft_config for name in SD3.lora_text_encoders)
