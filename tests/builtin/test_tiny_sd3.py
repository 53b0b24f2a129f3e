"""tinypipe/tiny-sd3: an offline Stable Diffusion 3 pipeline that plain diffusers loads and runs."""

import json

import numpy as np
import torch
from diffusers import StableDiffusion3Pipeline

from tinypipe.builtin import TINY_SD3, builtin_names
from tinypipe.builtin.diffusion_folders import builtin_diffusion_folder
from tinypipe.builtin.tiny_sd3 import build_tiny_sd3
from tinypipe.families.sd3 import FAMILY as SD3
from tinypipe.models.lora_targets import unmatched_target_modules


def _generate(pipe: StableDiffusion3Pipeline) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np").images


def test_builtin_sd3_folder_loads_in_plain_sd3_pipeline_and_generates_the_built_images_at_32_px():
    folder = builtin_diffusion_folder(TINY_SD3)

    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and index["tokenizer_3"] == ["transformers", "T5TokenizerFast"]
    assert TINY_SD3 in builtin_names("diffusion")
    loaded = StableDiffusion3Pipeline.from_pretrained(folder)
    assert loaded.vae.config.latent_channels == 16 and loaded.transformer.config.in_channels == 16
    assert (loaded.vae.config.scaling_factor, loaded.vae.config.shift_factor) == (1.5305, 0.0609)
    assert (loaded.scheduler.config.shift, loaded.scheduler.config.use_dynamic_shifting) == (3.0, False)
    # The two CLIP encoders' states side by side fit T5's width, as SD3's prompt encoding pads them to it.
    clip_widths = loaded.text_encoder.config.hidden_size + loaded.text_encoder_2.config.hidden_size
    assert clip_widths <= loaded.text_encoder_3.config.d_model

    # Every default LoRA target of the family wraps a layer of the tiny model, as of the real one.
    assert unmatched_target_modules(loaded.transformer, SD3.denoiser_lora_targets) == []
    for name in SD3.lora_text_encoders:
        assert unmatched_target_modules(getattr(loaded, name), SD3.text_encoder_lora_targets) == [], name

    images = _generate(loaded)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    np.testing.assert_allclose(images, _generate(build_tiny_sd3()), atol=1e-6)
