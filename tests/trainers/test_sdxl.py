"""SDXL through every diffusion method: each output loads unchanged in diffusers' StableDiffusionXLPipeline and gives
the same images as tinypipe's own `generate` for the same seed; an interrupted run resumes bit-identically."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tinypipe.builtin.tiny_sd import shapes_dataset
from tinypipe.builtin.tiny_sdxl import TINY_SDXL, builtin_sdxl_folder
from tinypipe.derive import derive_pipeline
from tinypipe.errors import ConfigError
from tinypipe.models.diffusion import DiffusionPipeline
from tinypipe.trainers import DreamBoothTrainer, LoRATrainer, TextualInversionTrainer

PROMPT = "a photo of sks circle"
FAST = dict(base_model=TINY_SDXL, data=shapes_dataset(count=2, resolution=32), max_train_steps=2, num_validation_images=0,
            checkpointing_steps=0, use_8bit_adam=False, train_batch_size=1)
SAMPLE = dict(num_inference_steps=2, seed=3)


def plain_sdxl():
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(builtin_sdxl_folder())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_image(pipe, prompt: str = PROMPT) -> np.ndarray:
    image = pipe(prompt, num_inference_steps=2, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(3)).images[0]
    return np.asarray(image, dtype=np.int16)


def tinypipe_image(folder: Path, prompt: str = PROMPT) -> np.ndarray:
    return np.asarray(DiffusionPipeline.from_pretrained(folder).generate(prompt, **SAMPLE)[0], dtype=np.int16)


@pytest.fixture(scope="module")
def base_image():
    return diffusers_image(plain_sdxl())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("sdxl_lora")
    LoRATrainer().train(**FAST, instance_prompt=PROMPT, train_text_encoder=True, learning_rate=5e-2, random_flip=True,
                        center_crop=False, output_dir=output)
    return output


def test_lora_on_the_unet_and_both_text_encoders_loads_in_diffusers_with_the_same_images(lora_run, base_image):
    weights = load_file(lora_run / "model/pytorch_lora_weights.safetensors")
    assert {key.split(".")[0] for key in weights} == {"unet", "text_encoder", "text_encoder_2"}
    pipe = plain_sdxl()
    pipe.load_lora_weights(lora_run / "model")
    theirs = diffusers_image(pipe)
    assert np.array_equal(theirs, tinypipe_image(lora_run)) and not np.array_equal(theirs, base_image)


def test_dreambooth_lora_with_prior_preservation_loads_in_diffusers_with_the_same_images(tmp_path, base_image):
    DreamBoothTrainer().train(**FAST, instance_prompt=PROMPT, use_lora=True, with_prior_preservation=True,
                              class_prompt="a photo of a circle", num_class_images=1, class_inference_steps=1,
                              learning_rate=5e-2, output_dir=tmp_path)
    recorded = (tmp_path / "trainer/train_config/config.json").read_text()
    assert '"with_prior_preservation": true' in recorded and '"class_prompt": "a photo of a circle"' in recorded
    pipe = plain_sdxl()
    pipe.load_lora_weights(tmp_path / "model")
    theirs = diffusers_image(pipe)
    assert np.array_equal(theirs, tinypipe_image(tmp_path)) and not np.array_equal(theirs, base_image)


def test_full_dreambooth_is_a_pipeline_folder_diffusers_loads_with_the_same_images(tmp_path, base_image):
    from diffusers import StableDiffusionXLPipeline

    DreamBoothTrainer().train(**FAST, instance_prompt=PROMPT, train_text_encoder=True, learning_rate=1e-3, output_dir=tmp_path)
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "model")
    pipe.set_progress_bar_config(disable=True)
    theirs = diffusers_image(pipe)
    assert np.array_equal(theirs, tinypipe_image(tmp_path)) and not np.array_equal(theirs, base_image)


def test_full_dreambooth_is_refused_for_a_family_without_it_naming_the_lora_alternative(monkeypatch):
    pipeline = DiffusionPipeline(TINY_SDXL)
    monkeypatch.setattr(type(pipeline.family), "methods", frozenset({"lora", "dreambooth_lora"}))
    trainer = DreamBoothTrainer().init_model(pipeline)
    with pytest.raises(ConfigError, match="full DreamBooth fine-tune .* not supported for the Stable Diffusion XL family.*use_lora=True"):
        trainer.train(**FAST, instance_prompt=PROMPT)


@pytest.fixture(scope="module")
def textual_inversion_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("sdxl_ti")
    TextualInversionTrainer().train(**FAST, placeholder_token="<sks-shape>", initializer_token="circle", learning_rate=0.5,
                                    output_dir=output)
    return output


def test_textual_inversion_writes_clip_l_and_clip_g_that_diffusers_loads_with_the_same_images(textual_inversion_run):
    embeds = load_file(textual_inversion_run / "model/learned_embeds.safetensors")
    assert sorted(embeds) == ["clip_g", "clip_l"] and embeds["clip_l"].shape == (1, 32) and embeds["clip_g"].shape == (1, 48)
    pipe = plain_sdxl()  # as diffusers documents it for SDXL embeddings: one call per text encoder
    pipe.load_textual_inversion(embeds["clip_l"], token="<sks-shape>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(embeds["clip_g"], token="<sks-shape>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    prompt = "a photo of a <sks-shape>"
    assert np.array_equal(diffusers_image(pipe, prompt), tinypipe_image(textual_inversion_run, prompt))


def test_derive_embedding_reads_an_sdxl_clip_l_clip_g_file_back(textual_inversion_run, tmp_path):
    new = {"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 48)}
    save_file(new, str(tmp_path / "other.safetensors"))
    derive_pipeline(textual_inversion_run, tmp_path / "derived", embedding=tmp_path / "other.safetensors")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "derived").textual_inversion_embeddings()["<sks-shape>"]
    assert torch.equal(loaded["clip_l"], new["clip_l"]) and torch.equal(loaded["clip_g"], new["clip_g"])
    assert torch.equal(load_file(tmp_path / "derived/model/learned_embeds.safetensors")["clip_g"], new["clip_g"])


KILLED_RUN = textwrap.dedent('''
    import os, sys
    from tinypipe.builtin.tiny_sd import shapes_dataset
    from tinypipe.trainers import lora

    save = lora.save_checkpoint
    def save_then_die(output_dir, step, **kwargs):  # the process dies right after checkpoint 1 is complete
        save(output_dir, step, **kwargs)
        os._exit(137)
    lora.save_checkpoint = save_then_die
    lora.LoRATrainer().train(
        base_model="tinypipe/tiny-sdxl", data=shapes_dataset(count=2, resolution=32), instance_prompt="a photo of sks circle",
        max_train_steps=2, checkpointing_steps=1, train_batch_size=1, learning_rate=1e-2, train_text_encoder=True,
        num_validation_images=0, use_8bit_adam=False, output_dir=sys.argv[1])
''')


def test_kill_after_a_checkpoint_then_resume_is_bit_identical(tmp_path):
    """The run is killed (os._exit, as kill -9) in its own process; the straight run and the resume run here."""
    settings = dict(FAST, learning_rate=1e-2, checkpointing_steps=1, instance_prompt=PROMPT, train_text_encoder=True)
    LoRATrainer().train(**settings, output_dir=tmp_path / "straight")
    (tmp_path / "run.py").write_text(KILLED_RUN)
    killed = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "resumed")], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}, timeout=300)  # same float math
    assert killed.returncode == 137, killed.stderr[-3000:]
    assert not (tmp_path / "resumed/model").exists()
    LoRATrainer().train(**settings, output_dir=tmp_path / "resumed", resume_from_checkpoint="latest")
    straight = load_file(tmp_path / "straight/model/pytorch_lora_weights.safetensors")
    resumed = load_file(tmp_path / "resumed/model/pytorch_lora_weights.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[key], resumed[key]) for key in straight)
