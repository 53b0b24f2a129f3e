"""The family layer: detection from model_index.json, and SDXL's conditioning computed as diffusers computes it."""

import json

import pytest
import torch

from tinypipe.builtin.tiny_sdxl import TINY_SDXL
from tinypipe.errors import ConfigError
from tinypipe.families import family_named, family_of
from tinypipe.models.diffusion import DiffusionPipeline


@pytest.fixture(scope="module")
def sdxl():
    return DiffusionPipeline(TINY_SDXL)


def test_the_family_is_detected_from_model_index_and_recorded(sdxl):
    assert sdxl.family is family_named("sdxl") and sdxl.config["family"] == "sdxl"
    assert family_of("StableDiffusionPipeline").name == "sd"
    assert sdxl.family.text_encoders == ("text_encoder", "text_encoder_2") and sdxl.family.denoiser == "unet"


def test_an_unknown_pipeline_class_is_a_clear_error_listing_the_families(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ConfigError, match=r"'KandinskyV22Pipeline' is not a supported model family; tinypipe trains: sd .*sdxl"):
        DiffusionPipeline(str(tmp_path))
    with pytest.raises(ConfigError, match="Unknown model family 'kandinsky'.*sd .*sdxl.*flux.*sd3"):
        family_named("kandinsky")


def test_a_config_recording_another_family_is_refused():
    with pytest.raises(ConfigError, match="records the model family 'sd'.*Stable Diffusion XL"):
        DiffusionPipeline(TINY_SDXL, family="sd")


def test_add_time_ids_are_those_diffusers_computes(sdxl):
    """Original (height, width), crop (top, left), target size: StableDiffusionXLPipeline._get_add_time_ids."""
    ours = sdxl.family.image_conditioning([(48, 40), (32, 64)], [(3, 5), (0, 17)], 32)["add_time_ids"]
    projection = sdxl.pipe.text_encoder_2.config.projection_dim
    theirs = torch.cat([sdxl.pipe._get_add_time_ids(size, crop, (32, 32), torch.float32, text_encoder_projection_dim=projection)
                        for size, crop in (((48, 40), (3, 5)), ((32, 64), (0, 17)))])
    assert torch.equal(ours, theirs)


def test_sdxl_prompt_conditioning_is_the_pipelines_own(sdxl):
    """Penultimate states of both encoders concatenated, pooled from text_encoder_2: StableDiffusionXLPipeline.encode_prompt."""
    prompts = ["a photo of sks circle", "a red square"]
    ours = sdxl.family.encode_prompts(sdxl.pipe, sdxl.family.tokenize(sdxl.pipe, prompts), sdxl.text_encoders)
    with torch.no_grad():
        embeds, _, pooled, _ = sdxl.pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    assert torch.equal(ours["prompt_embeds"], embeds) and torch.equal(ours["pooled_prompt_embeds"], pooled)


def test_a_method_the_family_lacks_is_refused_naming_the_others(sdxl, monkeypatch):
    monkeypatch.setattr(type(sdxl.family), "methods", frozenset({"lora", "dreambooth_lora"}))
    with pytest.raises(ConfigError, match=r"Textual inversion \(--method textual-inversion; TextualInversionTrainer\) is not "
                                          r"supported for the Stable Diffusion XL family; it supports: LoRA \(--method lora; "
                                          r"LoRATrainer\); DreamBooth-LoRA \(--method lora with --prior-class-prompt"):
        sdxl.family.check_method("textual_inversion")


def test_sdxl_add_time_ids_record_each_images_original_size_and_its_real_crop(sdxl):
    """A 80x48 image at 32 px: resized to 53x32, cropped at (0, 10) (center) or a seeded random place; a flipped copy
    records its crop where it lies in the mirrored image."""
    from PIL import Image

    from tinypipe.data.images import ImageExample, cropped_image_tensor
    from tinypipe.training.diffusion_steps import encode_examples

    image = Image.new("RGB", (80, 48), (200, 30, 30))
    examples = [ImageExample(image=image, caption="a photo of sks circle", source="wide.png")]
    centered = encode_examples(sdxl, examples, 32, center_crop=True, random_flip=True, seed=0, cache_text=True,
                               device=torch.device("cpu"))
    assert centered.image_conditioning["add_time_ids"].tolist() == [[48, 80, 0, 10, 32, 32], [48, 80, 0, 11, 32, 32]]
    cropped = encode_examples(sdxl, examples, 32, center_crop=False, random_flip=False, seed=5, cache_text=True,
                              device=torch.device("cpu"))
    _, (top, left) = cropped_image_tensor(image, 32, center_crop=False, generator=torch.Generator("cpu").manual_seed(5))
    assert cropped.image_conditioning["add_time_ids"].tolist() == [[48, 80, top, left, 32, 32]]
    assert cropped.text_conditioning["prompt_embeds"].shape[-1] == 32 + 48
