"""Tests for `tinypipe.models.diffusion`: DiffusionPipeline's own rules (generation, fine-tuned components, LoRA)."""

import numpy as np
import pytest

from tinypipe import ConfigError
from tinypipe.models import TINY_SD, DiffusionPipeline

SMALL = dict(num_inference_steps=2, height=32, width=32, seed=0)


@pytest.fixture(scope="module")
def pipeline():
    return DiffusionPipeline(TINY_SD, device="cpu")


def test_calling_a_pipeline_generates_as_generate_does(pipeline):
    called, generated = pipeline("a photo of sks circle", **SMALL), pipeline.generate("a photo of sks circle", **SMALL)
    assert len(called) == 1 and np.array_equal(np.asarray(called[0]), np.asarray(generated[0]))


def test_a_config_recording_fine_tuned_weights_is_refused_outside_from_pretrained():
    with pytest.raises(ConfigError, match=r"fine_tuned_components may hold \[.*'unet'.*'text_encoder'.*\], got \['vae'\]"):
        DiffusionPipeline(TINY_SD, fine_tuned_components=("vae",))
    with pytest.raises(ConfigError, match=r"only a saved repo holds; load it with DiffusionPipeline.from_pretrained"):
        DiffusionPipeline(TINY_SD, textual_inversion_tokens=("<cat-toy>",))


def test_a_pipeline_is_either_fine_tuned_or_given_a_lora():
    fine_tuned = DiffusionPipeline(TINY_SD, device="cpu")
    fine_tuned.mark_fine_tuned(["unet"])
    with pytest.raises(ConfigError, match="own weights were fine-tuned"):
        fine_tuned.add_lora(rank=2)
    with_lora = DiffusionPipeline(TINY_SD, lora_rank=2, device="cpu")
    with pytest.raises(ConfigError, match="This pipeline has a LoRA"):
        with_lora.mark_fine_tuned(["unet"])
    with pytest.raises(ConfigError, match="already has a LoRA"):
        with_lora.add_lora(rank=2)
