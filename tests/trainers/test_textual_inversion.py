"""TextualInversionTrainer on the built-in tiny model: only the new rows train, the file diffusers reads, bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinypipe import AutoModelPipeline, AutoTrainerPipeline, ConfigError
from tinypipe.models import DiffusionPipeline
from tinypipe.builtin.tiny_sd import builtin_model_folder
from tinypipe.trainers import TextualInversionTrainConfig, TextualInversionTrainer

TOKEN = "<sks-shape>"
FAST = dict(data="tinypipe/shapes", placeholder_token=TOKEN, initializer_token="circle", max_train_steps=3,
            num_validation_images=1, validation_inference_steps=2, use_8bit_adam=False, learning_rate=1e-2)


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def base_state():
    pipeline = DiffusionPipeline("tinypipe/tiny-sd")
    embeddings = pipeline.text_encoder.get_input_embeddings().weight.detach()
    return {"text_encoder": {k: v.clone() for k, v in pipeline.text_encoder.state_dict().items()},
            "unet": {k: v.clone() for k, v in pipeline.unet.state_dict().items()},
            "embeddings": embeddings.clone(), "vocab_size": len(pipeline.tokenizer),
            "circle": embeddings[pipeline.tokenizer.encode("circle", add_special_tokens=False)[0]].clone()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output = tmp_path_factory.mktemp("textual_inversion") / "out"
    trainer = TextualInversionTrainer(train_config=TextualInversionTrainConfig(num_vectors=2, max_train_steps=1))
    pipeline = trainer.train(**FAST, output_dir=str(output), checkpointing_steps=2)
    return pipeline, output


def test_only_the_new_embedding_rows_change(trained, base_state):
    pipeline, _ = trained
    weight = pipeline.text_encoder.get_input_embeddings().weight
    old = base_state["vocab_size"]
    assert weight.shape[0] == old + 2
    assert torch.equal(weight[:old], base_state["embeddings"])  # bit-identical
    assert not torch.equal(weight[old], base_state["circle"]) and not torch.equal(weight[old + 1], base_state["circle"])
    for name, tensor in pipeline.text_encoder.state_dict().items():
        if not name.endswith("token_embedding.weight"):
            assert torch.equal(tensor, base_state["text_encoder"][name]), name
    for name, tensor in pipeline.unet.state_dict().items():
        assert torch.equal(tensor, base_state["unet"][name]), name
    assert not any(parameter.requires_grad for parameter in pipeline.text_encoder.parameters())


def test_learned_embeds_file_and_repo(trained):
    pipeline, output = trained
    files = {str(path.relative_to(output)) for path in output.rglob("*") if path.is_file()}
    for expected in ("model/learned_embeds.safetensors", "trainer/train_config/config.json", "validation/before_after.png",
                     "checkpoints/checkpoint-2/complete.json"):
        assert expected in files, expected
    stored = load_file(output / "model/learned_embeds.safetensors")
    assert list(stored) == [TOKEN] and stored[TOKEN].shape == (2, 32)
    assert torch.equal(stored[TOKEN], pipeline.text_encoder.get_input_embeddings().weight[-2:])
    saved = json.loads((output / "trainer/train_config/config.json").read_text())
    assert saved["max_train_steps"] == 3 and saved["num_vectors"] == 2 and saved["placeholder_token"] == TOKEN


def test_diffusers_load_textual_inversion_reads_the_file(trained):
    from diffusers import StableDiffusionPipeline

    pipeline, output = trained
    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder("tinypipe/tiny-sd"), safety_checker=None)
    plain.load_textual_inversion(output / "model")
    ids = plain.tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
    assert plain.tokenizer.unk_token_id not in ids
    assert torch.equal(plain.text_encoder.get_input_embeddings().weight[ids], pipeline.text_encoder.get_input_embeddings().weight[-2:])
    expected = as_array(pipeline.generate(f"a photo of a {TOKEN}", num_inference_steps=3, seed=6)[0])
    image = plain(f"a photo of a {TOKEN}", num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(6)).images[0]
    assert np.array_equal(as_array(image), expected)


def test_tinypipe_reloads_the_token_and_the_trainer_reruns(trained):
    pipeline, output = trained
    reloaded = AutoModelPipeline.from_pretrained(output)
    assert reloaded.config["textual_inversion_tokens"] == (TOKEN,)
    prompt = dict(num_inference_steps=3, seed=2)
    assert np.array_equal(as_array(reloaded.generate(f"a {TOKEN}", **prompt)[0]), as_array(pipeline.generate(f"a {TOKEN}", **prompt)[0]))
    rerun = AutoTrainerPipeline.from_pretrained(output).train(output_dir=None, num_validation_images=0)
    assert torch.equal(rerun.textual_inversion_embeddings()[TOKEN], pipeline.textual_inversion_embeddings()[TOKEN])


def test_style_templates_and_resume(tmp_path):
    settings = {**FAST, "learnable_property": "style", "num_validation_images": 0, "max_train_steps": 4, "checkpointing_steps": 2}
    straight = TextualInversionTrainer().train(**settings)
    TextualInversionTrainer().train(**{**settings, "max_train_steps": 2}, output_dir=str(tmp_path / "out"))
    resumed = TextualInversionTrainer().train(**settings, output_dir=str(tmp_path / "out"), resume_from_checkpoint="latest")
    assert torch.equal(straight.textual_inversion_embeddings()[TOKEN], resumed.textual_inversion_embeddings()[TOKEN])


@pytest.mark.parametrize("bad, message", [
    ({"placeholder_token": "circle"}, "already known"),
    ({"placeholder_token": "sks"}, "already known"),
    ({"placeholder_token": "<two words>"}, "without spaces"),
    ({"initializer_token": "zebra"}, "must be exactly one"),
    ({"initializer_token": "red circle"}, "must be exactly one"),
    ({"learnable_property": "texture"}, "learnable_property"),
    ({"num_vectors": 0}, "num_vectors"),
    ({"placeholder_token": None}, "needs placeholder_token"),
])
def test_bad_settings_are_clear_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        TextualInversionTrainer().train(**{**FAST, **bad})


def test_a_token_the_pipeline_already_has_is_refused():
    pipeline = DiffusionPipeline("tinypipe/tiny-sd")
    pipeline.load_textual_inversion(torch.zeros(32), token=TOKEN)
    with pytest.raises(ConfigError, match="already known"):
        TextualInversionTrainer().init_model(pipeline).train(**FAST)
