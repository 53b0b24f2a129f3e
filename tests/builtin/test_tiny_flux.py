"""tinypipe/tiny-flux and tinypipe/tiny-flux-schnell: offline FLUX.1 pipelines that plain diffusers loads and runs."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from transformers import T5TokenizerFast

from tinypipe.builtin import TINY_FLUX, TINY_FLUX_SCHNELL, builtin_names
from tinypipe.builtin.tiny_flux import (
    T5_VOCAB_FOLDER,
    TINY_FLUX_RESOLUTION,
    build_tiny_flux,
    builtin_flux_folder,
    load_t5_tokenizer,
)
from tinypipe.builtin.diffusion_folders import builtin_diffusion_folder
from tinypipe.errors import ConfigError
from tinypipe.families.flux import FAMILY as FLUX
from tinypipe.models.lora_targets import unmatched_target_modules

PROMPT_WORDS = "a photo of the in on with and style painting dog cat person red green blue circle square star toy sks".split()


@pytest.fixture(scope="module")
def folders():
    """Both tiny FLUX folders, built once in the session's tinypipe home."""
    return {name: builtin_flux_folder(name) for name in (TINY_FLUX, TINY_FLUX_SCHNELL)}


def _generate(pipe: FluxPipeline) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", height=TINY_FLUX_RESOLUTION, width=TINY_FLUX_RESOLUTION, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def test_shipped_t5_tokenizer_encodes_each_prompt_word_as_one_token_and_ends_with_eos():
    tokenizer = load_t5_tokenizer()

    assert isinstance(tokenizer, T5TokenizerFast)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.model_max_length == 512
    assert [word for word in PROMPT_WORDS if len(tokenizer.tokenize(word)) != 1] == []
    ids = tokenizer("a photo of sks dog").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁a", "▁photo", "▁of", "▁sks", "▁dog", "</s>"]
    # Other ASCII words encode character by character and decode back; padding uses <pad>.
    assert tokenizer.decode(tokenizer("Zebra-42").input_ids, skip_special_tokens=True) == "Zebra-42"
    padded = tokenizer(["a dog"], padding="max_length", max_length=6, return_tensors="pt").input_ids
    assert padded.tolist() == [[tokenizer.convert_tokens_to_ids("▁a"), tokenizer.convert_tokens_to_ids("▁dog"), 1, 0, 0, 0]]


def test_shipped_t5_vocab_files_are_what_make_t5_vocab_generates(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ beside the script
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_t5_vocab.py"
    spec = importlib.util.spec_from_file_location("make_t5_vocab", script)
    make_vocab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_vocab)

    make_vocab.write_files(tmp_path)

    for file_name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / file_name).read_bytes() == (T5_VOCAB_FOLDER / file_name).read_bytes(), file_name


def test_build_is_deterministic_small_and_leaves_global_rng_alone():
    rng_state = torch.get_rng_state()
    first, second = build_tiny_flux(), build_tiny_flux()

    assert torch.equal(torch.get_rng_state(), rng_state)
    for component in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        first_state, second_state = getattr(first, component).state_dict(), getattr(second, component).state_dict()
        assert all(torch.equal(first_state[key], second_state[key]) for key in first_state), component
    parameters = sum(parameter.numel() for component in ("transformer", "vae", "text_encoder", "text_encoder_2")
                     for parameter in getattr(first, component).parameters())
    assert parameters < 1_000_000  # a few MB in float32
    assert first.text_encoder_2.config.vocab_size == len(first.tokenizer_2)
    assert first.transformer.config.joint_attention_dim == first.text_encoder_2.config.d_model
    assert first.transformer.config.pooled_projection_dim == first.text_encoder.config.hidden_size


def test_tiny_flux_has_flux_latents_and_dev_vs_schnell_guidance_and_schedule(folders):
    dev, schnell = (FluxPipeline.from_pretrained(folders[name]) for name in (TINY_FLUX, TINY_FLUX_SCHNELL))

    for pipe in (dev, schnell):
        assert pipe.vae.config.latent_channels == 16 and pipe.transformer.config.in_channels == 64
        assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (0.3611, 0.1159)
        assert pipe.vae.config.sample_size == TINY_FLUX_RESOLUTION
    assert dev.transformer.config.guidance_embeds and not schnell.transformer.config.guidance_embeds
    # Every default LoRA target of the family wraps a layer of the tiny model, as of the real one.
    assert unmatched_target_modules(dev.transformer, FLUX.denoiser_lora_targets) == []
    assert unmatched_target_modules(dev.text_encoder, FLUX.text_encoder_lora_targets) == []
    assert (dev.scheduler.config.shift, dev.scheduler.config.use_dynamic_shifting) == (3.0, True)
    assert (schnell.scheduler.config.shift, schnell.scheduler.config.use_dynamic_shifting) == (1.0, False)


@pytest.mark.parametrize("name", [TINY_FLUX, TINY_FLUX_SCHNELL])
def test_builtin_flux_folder_loads_in_plain_flux_pipeline_and_generates_the_built_images(folders, name):
    folder = folders[name]

    assert {"model_index.json", "transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
            "scheduler"} <= {path.name for path in folder.iterdir()}
    assert json.loads((folder / "model_index.json").read_text())["tokenizer_2"] == ["transformers", "T5TokenizerFast"]
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer_2" / "tokenizer.json").is_file()
    loaded = FluxPipeline.from_pretrained(folder)
    built = build_tiny_flux(guidance_embeds=name == TINY_FLUX)

    loaded_images = _generate(loaded)
    assert loaded_images.shape == (1, 32, 32, 3) and np.isfinite(loaded_images).all()
    np.testing.assert_allclose(loaded_images, _generate(built), atol=1e-6)


def test_builtin_model_folder_gives_each_flux_name_its_own_flux_folder():
    dev, schnell = builtin_diffusion_folder(TINY_FLUX), builtin_diffusion_folder(TINY_FLUX_SCHNELL)

    assert dev != schnell
    for folder, guidance_embeds in ((dev, True), (schnell, False)):
        assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
        assert json.loads((folder / "transformer" / "config.json").read_text())["guidance_embeds"] is guidance_embeds
    assert {TINY_FLUX, TINY_FLUX_SCHNELL} <= set(builtin_names("diffusion"))


def test_builtin_flux_folder_refuses_other_names():
    with pytest.raises(ConfigError, match="tinypipe/tiny-flux"):
        builtin_flux_folder("tinypipe/tiny-sd")
