"""FLUX.1 (dev- and schnell-style) and SD3 through the diffusion trainers: each LoRA loads unchanged in the family's own
diffusers pipeline class and gives the same images as tinypipe's `generate` for the same seed; a resumed run ends
bit-identical to a straight one; what a flow-matching family cannot do is refused before any work."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinypipe.builtin import TINY_FLUX, TINY_FLUX_SCHNELL, TINY_SD, TINY_SD3
from tinypipe.builtin.diffusion_folders import builtin_diffusion_folder
from tinypipe.builtin.tiny_sd import shapes_dataset
from tinypipe.errors import ConfigError
from tinypipe.families import family_of
from tinypipe.models.diffusion import DiffusionPipeline
from tinypipe.trainers import DreamBoothTrainer, LoRATrainer, TextualInversionTrainer

PROMPT = "a photo of sks circle"
FAST = dict(data=shapes_dataset(count=2, resolution=32), max_train_steps=2, num_validation_images=0, checkpointing_steps=0,
            train_batch_size=1, learning_rate=5e-2)
SAMPLE = dict(num_inference_steps=2, seed=3, guidance_scale=3.5)


def plain_image(name: str, lora_folder=None) -> np.ndarray:
    folder = builtin_diffusion_folder(name)
    pipe = family_of(folder / "model_index.json").pipeline_class.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if lora_folder is not None:
        pipe.load_lora_weights(lora_folder)
    image = pipe(PROMPT, num_inference_steps=2, guidance_scale=3.5, height=32, width=32,
                 generator=torch.Generator("cpu").manual_seed(3)).images[0]
    return np.asarray(image, dtype=np.int16)


def tinypipe_image(repo) -> np.ndarray:
    return np.asarray(DiffusionPipeline.from_pretrained(repo).generate(PROMPT, **SAMPLE)[0], dtype=np.int16)


@pytest.mark.parametrize("name", [TINY_FLUX, TINY_FLUX_SCHNELL, TINY_SD3])
def test_lora_with_the_text_encoder_loads_in_the_familys_pipeline_with_the_same_images(name, tmp_path):
    LoRATrainer().train(**FAST, base_model=name, instance_prompt=PROMPT, train_text_encoder=True, output_dir=tmp_path)
    components = {key.split(".")[0] for key in load_file(tmp_path / "model/pytorch_lora_weights.safetensors")}
    family = DiffusionPipeline.from_pretrained(tmp_path).family
    assert components == {"transformer", *family.lora_text_encoders}  # never FLUX's T5
    theirs = plain_image(name, tmp_path / "model")
    assert np.array_equal(theirs, tinypipe_image(tmp_path)) and not np.array_equal(theirs, plain_image(name))
    recorded = json.loads((tmp_path / "trainer/train_config/config.json").read_text())
    assert recorded["guidance_scale"] == (3.5 if name == TINY_FLUX else 1.0)  # the family's default, as it ran


def test_flux_dreambooth_lora_with_prior_preservation_loads_in_flux_pipeline_with_the_same_images(tmp_path):
    DreamBoothTrainer().train(**FAST, base_model=TINY_FLUX, instance_prompt=PROMPT, use_lora=True, with_prior_preservation=True,
                              class_prompt="a photo of a circle", num_class_images=1, class_inference_steps=1,
                              weighting_scheme="logit_normal", output_dir=tmp_path)
    recorded = json.loads((tmp_path / "trainer/train_config/config.json").read_text())
    assert recorded["with_prior_preservation"] and recorded["weighting_scheme"] == "logit_normal"
    assert np.array_equal(plain_image(TINY_FLUX, tmp_path / "model"), tinypipe_image(tmp_path))


@pytest.mark.parametrize("name", [TINY_FLUX, TINY_SD3])
def test_resume_from_a_checkpoint_is_bit_identical(name, tmp_path):
    settings = dict(FAST, base_model=name, instance_prompt=PROMPT, checkpointing_steps=1, learning_rate=1e-2,
                    train_text_encoder=True)
    LoRATrainer().train(**settings, output_dir=tmp_path / "straight")
    LoRATrainer().train(**settings, output_dir=tmp_path / "resumed")
    # As if the run had been killed after its first checkpoint: the later checkpoint and the repo never written.
    for leftover in ("model", "trainer", "checkpoint-2"):
        shutil.rmtree(tmp_path / "resumed" / leftover, ignore_errors=True)
    LoRATrainer().train(**settings, output_dir=tmp_path / "resumed", resume_from_checkpoint="latest")
    straight = load_file(tmp_path / "straight/model/pytorch_lora_weights.safetensors")
    resumed = load_file(tmp_path / "resumed/model/pytorch_lora_weights.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[key], resumed[key]) for key in straight)


@pytest.mark.parametrize("train, message", [
    (lambda output: TextualInversionTrainer().train(**FAST, base_model=TINY_FLUX, placeholder_token="<sks>",
                                                    initializer_token="circle", output_dir=output), "LoRA"),
    (lambda output: DreamBoothTrainer().train(**FAST, base_model=TINY_FLUX, instance_prompt=PROMPT, output_dir=output),
     "use_lora=True"),
    (lambda output: LoRATrainer().train(**FAST, base_model=TINY_FLUX, instance_prompt=PROMPT, snr_gamma=5.0,
                                        output_dir=output), "snr_gamma"),
    (lambda output: LoRATrainer().train(**FAST, base_model=TINY_FLUX_SCHNELL, instance_prompt=PROMPT, guidance_scale=3.5,
                                        output_dir=output), "guidance_scale"),
    (lambda output: LoRATrainer().train(**FAST, base_model=TINY_SD, instance_prompt=PROMPT, weighting_scheme="logit_normal",
                                        output_dir=output), "weighting_scheme"),
    (lambda output: LoRATrainer().train(**FAST, base_model=TINY_FLUX, instance_prompt=PROMPT, resolution=36,
                                        output_dir=output), "multiple of"),
], ids=["flux-textual-inversion", "flux-full-dreambooth", "flux-snr-gamma", "schnell-guidance", "sd-weighting-scheme",
        "flux-resolution"])
def test_what_a_family_cannot_do_is_refused_before_any_work_naming_the_fix(train, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_train_diffuser_detects_flux_from_the_model_and_generate_reads_the_repo(tmp_path, capsys):
    from tinypipe.cli import main

    settings = json.dumps({"max_train_steps": 1, "num_validation_images": 1, "validation_inference_steps": 1,
                           "train_batch_size": 1})  # the before/after validation images too
    assert main(["train-diffuser", "flux-circles", TINY_FLUX, "tinypipe/shapes", PROMPT, "--training-args", settings,
                 "--output", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out/model/config.json").read_text())["family"] == "flux"
    assert main(["generate", str(tmp_path / "out"), PROMPT, "--output", str(tmp_path / "images"), "--steps", "2"]) == 0
    assert list((tmp_path / "images").glob("*.png"))
