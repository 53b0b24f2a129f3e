"""The FLUX.1 family: detection, prompt encoding and latents as FluxPipeline does them, the flow-matching loss of
diffusers' FLUX LoRA script, dev vs schnell guidance, refusals, and a LoRA trained through the contract that plain
FluxPipeline.load_lora_weights loads with the same images."""

import json
import math
import re

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from peft import LoraConfig
from safetensors import safe_open

from tinypipe.builtin import TINY_FLUX, TINY_FLUX_SCHNELL
from tinypipe.builtin.tiny_flux import TINY_FLUX_RESOLUTION, builtin_flux_folder
from tinypipe.errors import ConfigError
from tinypipe.families import TrainingObjective, family_named, family_of
from tinypipe.families.flux import FAMILY as FLUX
from tinypipe.families.lora_files import LORA_WEIGHTS_NAME, peft_lora_layers, read_lora_state_dict, save_lora_weights

CAPTIONS = ["a photo of sks dog", "a red circle"]


@pytest.fixture(scope="module")
def folders():
    return {name: builtin_flux_folder(name) for name in (TINY_FLUX, TINY_FLUX_SCHNELL)}


@pytest.fixture(scope="module")
def dev(folders):
    return FluxPipeline.from_pretrained(folders[TINY_FLUX])


@pytest.fixture(scope="module")
def schnell(folders):
    return FluxPipeline.from_pretrained(folders[TINY_FLUX_SCHNELL])


def _latents(pipe, seed=0):
    """Latents of random 32 px images through the contract: `[2, 16, 8, 8]`."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(2, 3, TINY_FLUX_RESOLUTION, TINY_FLUX_RESOLUTION, generator=generator) * 2 - 1
    with torch.no_grad():
        return FLUX.latents(pipe.vae, pipe.vae.encode(pixels).latent_dist.sample(generator=generator))


def _conditioning(pipe):
    with torch.no_grad():
        return FLUX.encode_prompts(pipe, FLUX.tokenize(pipe, CAPTIONS), {})


def _generate(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(CAPTIONS[0], height=TINY_FLUX_RESOLUTION, width=TINY_FLUX_RESOLUTION, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def test_family_is_detected_from_flux_folders_and_class_names(folders):
    assert family_of(folders[TINY_FLUX] / "model_index.json") is FLUX
    assert family_of(folders[TINY_FLUX_SCHNELL] / "model_index.json") is FLUX
    assert family_of("FluxImg2ImgPipeline") is FLUX and family_named("flux") is FLUX
    assert FLUX.pipeline_class is FluxPipeline
    assert (FLUX.denoiser, FLUX.text_encoders, FLUX.tokenizers) == ("transformer", ("text_encoder", "text_encoder_2"),
                                                                   ("tokenizer", "tokenizer_2"))
    with pytest.raises(ConfigError, match="flux"):
        family_of("NoSuchPipeline")


def test_native_resolution_is_the_vae_sample_size_and_resolution_must_pack(dev):
    assert FLUX.native_resolution(dev) == TINY_FLUX_RESOLUTION and FLUX.default_resolution == 1024
    FLUX.check_resolution(dev, 32)
    with pytest.raises(ConfigError, match="resolution=36.*multiple of 8"):
        FLUX.check_resolution(dev, 36)


def test_encode_prompts_equals_flux_pipeline_encode_prompt(dev):
    conditioning = _conditioning(dev)

    with torch.no_grad():
        prompt_embeds, pooled_prompt_embeds, text_ids = dev.encode_prompt(CAPTIONS, max_sequence_length=512)
    assert conditioning["prompt_embeds"].shape == (2, 512, 32) and conditioning["pooled_prompt_embeds"].shape == (2, 32)
    torch.testing.assert_close(conditioning["prompt_embeds"], prompt_embeds, rtol=0, atol=0)
    torch.testing.assert_close(conditioning["pooled_prompt_embeds"], pooled_prompt_embeds, rtol=0, atol=0)
    assert conditioning["text_ids"].shape == (2, 512, 3) and torch.equal(conditioning["text_ids"][0], text_ids)


def test_latents_subtract_shift_factor_then_scale(dev):
    sample = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))

    torch.testing.assert_close(FLUX.latents(dev.vae, sample), (sample - 0.1159) * 0.3611)


def _independent_flow_matching_losses(pipe, latents, conditioning, seed, objective):
    """The FLUX LoRA script's loss, written out without the family or diffusers' helpers, drawing in the same order."""
    generator = torch.Generator().manual_seed(seed)
    batch, channels, height, width = latents.shape
    noise = torch.randn(latents.shape, generator=generator)
    if objective.weighting_scheme == "logit_normal":
        u = torch.sigmoid(torch.normal(objective.logit_mean, objective.logit_std, (batch,), generator=generator))
    else:
        u = torch.rand((batch,), generator=generator)
        if objective.weighting_scheme == "mode":
            u = 1 - u - objective.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    config = pipe.scheduler.config
    sigmas = torch.arange(config.num_train_timesteps, 0, -1, dtype=torch.float32) / config.num_train_timesteps
    if not config.use_dynamic_shifting:
        sigmas = config.shift * sigmas / (1 + (config.shift - 1) * sigmas)
    index = (u * config.num_train_timesteps).long()
    sigma = sigmas[index].view(batch, 1, 1, 1)
    noisy = (1 - sigma) * latents + sigma * noise
    # 2x2 patches, row-major over the patch grid; ids (0, row, column).
    packed = noisy.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    packed = packed.reshape(batch, height * width // 4, channels * 4)
    rows, columns = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, columns], dim=-1).reshape(-1, 3).float()
    guidance = torch.full((batch,), objective.guidance_scale) if pipe.transformer.config.guidance_embeds else None
    with torch.no_grad():
        prediction = pipe.transformer(hidden_states=packed, timestep=sigmas[index], guidance=guidance,
                                      pooled_projections=conditioning["pooled_prompt_embeds"],
                                      encoder_hidden_states=conditioning["prompt_embeds"],
                                      txt_ids=torch.zeros(conditioning["prompt_embeds"].shape[1], 3), img_ids=image_ids,
                                      return_dict=False)[0]
    prediction = prediction.reshape(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    prediction = prediction.reshape(batch, channels, height, width)
    weighting = {"sigma_sqrt": sigma ** -2.0, "cosmap": 2 / (math.pi * (1 - 2 * sigma + 2 * sigma ** 2))}.get(
        objective.weighting_scheme, torch.ones_like(sigma))
    return (weighting * (prediction - (noise - latents)) ** 2).reshape(batch, -1).mean(dim=1)


@pytest.mark.parametrize(("model", "objective"), [
    ("dev", TrainingObjective(guidance_scale=3.5)),
    ("dev", TrainingObjective(weighting_scheme="logit_normal", logit_mean=0.5, logit_std=0.8, guidance_scale=2.0)),
    ("schnell", TrainingObjective(weighting_scheme="mode", mode_scale=1.29)),
    ("schnell", TrainingObjective(weighting_scheme="cosmap")),
    ("shifted", TrainingObjective(weighting_scheme="sigma_sqrt")),
])
def test_training_losses_equal_an_independent_recomputation_of_flow_matching(request, model, objective):
    if model == "shifted":  # a static shift (as SD3's scheduler has): the training sigmas are the shifted ones
        schnell = request.getfixturevalue("schnell")
        pipe = FluxPipeline(**{**schnell.components, "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)})
    else:
        pipe = request.getfixturevalue(model)
    latents, conditioning = _latents(pipe), _conditioning(pipe)

    with torch.no_grad():
        losses = FLUX.training_losses(pipe, pipe.transformer, latents, conditioning, torch.Generator().manual_seed(7),
                                      objective)

    expected = _independent_flow_matching_losses(pipe, latents, conditioning, 7, objective)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)


def test_training_losses_are_reproducible_from_the_generator_state(schnell):
    latents, conditioning = _latents(schnell), _conditioning(schnell)
    objective = TrainingObjective(weighting_scheme="logit_normal")

    def two_steps(generator):
        with torch.no_grad():
            return [FLUX.training_losses(schnell, schnell.transformer, latents, conditioning, generator, objective)
                    for _ in range(2)]

    first, second = two_steps(torch.Generator().manual_seed(3)), two_steps(torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])  # the generator moves on: each step draws anew
    # A resumed run restores the generator state and continues with the same draws.
    generator = torch.Generator().manual_seed(3)
    two_steps(generator)
    state = generator.get_state()
    resumed = torch.Generator()
    resumed.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(two_steps(generator), two_steps(resumed)))


def test_dev_transformer_gets_the_guidance_scale_and_schnell_gets_none(dev, schnell):
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            seen[name] = kwargs["guidance"]
        return hook

    for name, pipe, objective in (("dev", dev, TrainingObjective(guidance_scale=3.5)), ("schnell", schnell, TrainingObjective())):
        handle = pipe.transformer.register_forward_pre_hook(record(name), with_kwargs=True)
        try:
            with torch.no_grad():
                FLUX.training_losses(pipe, pipe.transformer, _latents(pipe), _conditioning(pipe),
                                     torch.Generator().manual_seed(0), objective)
        finally:
            handle.remove()

    assert torch.equal(seen["dev"], torch.full((2,), 3.5)) and seen["schnell"] is None
    with pytest.raises(ConfigError, match="guidance_scale=3.5.*no guidance embedding"):
        FLUX.training_losses(schnell, schnell.transformer, _latents(schnell), _conditioning(schnell),
                             torch.Generator().manual_seed(0), TrainingObjective(guidance_scale=3.5))


@pytest.mark.parametrize(("objective", "message"), [
    (TrainingObjective(snr_gamma=5.0), "snr_gamma=5.0.*does not apply to FLUX.1's flow matching.*Remove snr_gamma"),
    (TrainingObjective(noise_offset=0.1), "noise_offset=0.1.*does not apply.*Set noise_offset=0"),
    (TrainingObjective(weighting_scheme="uniform"), "weighting_scheme='uniform'.*none, sigma_sqrt, logit_normal"),
])
def test_ddpm_loss_settings_are_refused_naming_the_setting(dev, objective, message):
    with pytest.raises(ConfigError, match=message):
        FLUX.check_objective(objective, guidance_embeds=True)
    with pytest.raises(ConfigError, match=message):
        FLUX.training_losses(dev, dev.transformer, _latents(dev), _conditioning(dev), torch.Generator(), objective)


@pytest.mark.parametrize(("method", "message"), [
    ("textual_inversion", r"Textual inversion \(--method textual-inversion; TextualInversionTrainer\) is not supported "
                          r"for the FLUX.1 family.*LoRA instead: --method lora"),
    ("dreambooth_full", r"DreamBooth fine-tuning every weight \(--method dreambooth; DreamBoothTrainer\) is not supported "
                        r"for the FLUX.1 family.*--method dreambooth with '\{\"use_lora\": true\}' in --training-args"),
])
def test_textual_inversion_and_full_fine_tune_are_refused_naming_the_lora_alternative_as_the_user_asks_for_it(method, message):
    with pytest.raises(ConfigError, match=message) as refused:
        FLUX.check_method(method)
    assert not re.search(r"\b(dreambooth_lora|dreambooth_full|textual_inversion)\b", str(refused.value))  # no internal name
    FLUX.check_method("lora")
    FLUX.check_method("dreambooth_lora")


def test_lora_trained_through_the_contract_loads_in_a_fresh_flux_pipeline_with_the_same_images(folders, tmp_path):
    pipe = FluxPipeline.from_pretrained(folders[TINY_FLUX])
    configs = {"transformer": LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                         target_modules=list(FLUX.denoiser_lora_targets)),
               "text_encoder": LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                          target_modules=list(FLUX.text_encoder_lora_targets))}
    for component, config in configs.items():
        getattr(pipe, component).add_adapter(config)
    parameters = [parameter for component in configs for name, parameter in getattr(pipe, component).named_parameters()
                  if "lora_" in name]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    latents = _latents(pipe)
    ids = FLUX.tokenize(pipe, CAPTIONS)

    # 1. Two steps: encode (the CLIP LoRA trains) -> losses -> backward -> step.
    for _ in range(2):
        conditioning = FLUX.encode_prompts(pipe, ids, {"text_encoder": pipe.text_encoder})
        losses = FLUX.training_losses(pipe, pipe.transformer, latents, conditioning, generator,
                                      TrainingObjective(guidance_scale=3.5))
        assert torch.isfinite(losses).all()
        losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(parameter.abs().sum() > 0 for name, parameter in pipe.transformer.named_parameters() if "lora_B" in name)

    # 2. Saved with FluxPipeline.save_lora_weights; the file names only diffusers' components and no local path.
    weights = save_lora_weights(FLUX, tmp_path, peft_lora_layers(pipe, list(configs)),
                                {name: config.to_dict() for name, config in configs.items()})
    assert weights == tmp_path / LORA_WEIGHTS_NAME
    with safe_open(str(weights), framework="pt") as file:
        assert {key.split(".")[0] for key in file.keys()} == {"transformer", "text_encoder"}
        assert str(folders[TINY_FLUX]) not in json.dumps(file.metadata())
    parts = read_lora_state_dict(FLUX, weights)
    trained = peft_lora_layers(pipe, ["transformer"])["transformer"]
    assert parts["transformer"].keys() == trained.keys()
    assert all(torch.equal(parts["transformer"][key], trained[key]) for key in trained)

    # 3. Plain diffusers loads it and draws the trained pipeline's images.
    fresh = FluxPipeline.from_pretrained(folders[TINY_FLUX])
    base_images = _generate(fresh)
    fresh.load_lora_weights(tmp_path)
    trained_images, loaded_images = _generate(pipe), _generate(fresh)
    np.testing.assert_array_equal(loaded_images, trained_images)
    assert np.abs(loaded_images - base_images).max() > 1e-3
    assert "default_0" in fresh.text_encoder.peft_config  # the CLIP part loaded too


def test_lora_file_has_no_place_for_a_t5_lora(tmp_path):
    with pytest.raises(ConfigError, match="transformer, text_encoder only, not text_encoder_2"):
        save_lora_weights(FLUX, tmp_path, {"transformer": {}, "text_encoder_2": {}})
