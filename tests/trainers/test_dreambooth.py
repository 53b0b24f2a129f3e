"""DreamBoothTrainer on the built-in tiny model: full and LoRA variants, prior preservation, class images, bad input."""

import json

import numpy as np
import pytest
import torch

from tinypipe import AutoModelPipeline, AutoTrainerPipeline, ConfigError, DataError
from tinypipe.models import DiffusionPipeline
from tinypipe.builtin.tiny_sd import (
    builtin_model_folder,
    shapes_dataset,
    write_shapes_folder,
)
from tinypipe.trainers import DreamBoothTrainConfig, DreamBoothTrainer
from tinypipe.training import diffusion_steps

PRIOR = dict(with_prior_preservation=True, class_prompt="a photo of a square", num_class_images=2, sample_batch_size=2,
             class_inference_steps=2)
FAST = dict(data="tinypipe/shapes", instance_prompt="a photo of sks circle", max_train_steps=3, num_validation_images=1,
            validation_inference_steps=2, use_8bit_adam=False, learning_rate=1e-4)


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def unet_state(pipeline: DiffusionPipeline) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in pipeline.unet.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short full fine-tune with prior preservation whose repo several tests read."""
    output = tmp_path_factory.mktemp("dreambooth") / "out"
    trainer = DreamBoothTrainer(train_config=DreamBoothTrainConfig(max_train_steps=1))
    pipeline = trainer.train(**FAST, **PRIOR, output_dir=str(output), checkpointing_steps=2, validation_epochs=1)
    return pipeline, output


def test_full_fine_tune_writes_a_repo_that_is_also_a_diffusers_pipeline(trained):
    pipeline, output = trained
    assert pipeline.config["fine_tuned_components"] == ("unet",) and not pipeline.has_lora
    files = {str(path.relative_to(output)) for path in output.rglob("*") if path.is_file()}
    for expected in ("model/config.json", "model/filelist.txt", "model/model_index.json",
                     "model/unet/diffusion_pytorch_model.safetensors", "model/text_encoder/model.safetensors",
                     "trainer/train_config/config.json", "validation/before_after.png", "checkpoints/checkpoint-2/complete.json"):
        assert expected in files, expected
    saved = json.loads((output / "trainer/train_config/config.json").read_text())
    assert saved["max_train_steps"] == 3 and saved["with_prior_preservation"] and saved["class_prompt"] == "a photo of a square"


def test_full_fine_tune_folder_loads_every_component_with_the_class_model_index_names(trained, tmp_path):
    import importlib

    _, output = trained
    folder = output / "model"
    index = json.loads((folder / "model_index.json").read_text())
    components = {name: value for name, value in index.items() if not name.startswith("_") and isinstance(value, list) and value[0]}
    for name, (library, class_name) in components.items():
        loaded = getattr(importlib.import_module(library), class_name).from_pretrained(folder / name)
        assert loaded is not None, name
    # The files a slow (transformers 4.x) CLIPTokenizer reads give the very same token ids.
    tokenizer_class = getattr(importlib.import_module(components["tokenizer"][0]), components["tokenizer"][1])
    saved = tokenizer_class.from_pretrained(folder / "tokenizer")
    from_files = tokenizer_class(vocab=str(folder / "tokenizer/vocab.json"), merges=str(folder / "tokenizer/merges.txt"))
    text = "a photo of sks circle, a red square!"
    assert from_files(text).input_ids == saved(text).input_ids


def test_full_fine_tune_changes_the_unet(trained):
    pipeline, _ = trained
    base = DiffusionPipeline("tinypipe/tiny-sd")
    changed = [name for name, tensor in unet_state(base).items() if not torch.equal(tensor, pipeline.unet.state_dict()[name])]
    assert len(changed) > len(unet_state(base)) // 2


def test_tinypipe_and_plain_diffusers_reload_the_full_fine_tune(trained):
    from diffusers import StableDiffusionPipeline

    pipeline, output = trained
    expected = as_array(pipeline.generate("a photo of sks circle", num_inference_steps=3, seed=4)[0])
    reloaded = AutoModelPipeline.from_pretrained(output)
    assert reloaded.config["fine_tuned_components"] == ("unet",)
    assert np.array_equal(as_array(reloaded.generate("a photo of sks circle", num_inference_steps=3, seed=4)[0]), expected)
    plain = StableDiffusionPipeline.from_pretrained(output / "model", safety_checker=None)
    image = plain("a photo of sks circle", num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(4)).images[0]
    assert np.array_equal(as_array(image), expected)


def test_a_fine_tuned_config_without_its_weights_is_refused(trained):
    pipeline, _ = trained
    with pytest.raises(ConfigError, match="from_pretrained"):
        DiffusionPipeline.from_config(pipeline.config)


def test_saved_trainer_reruns_the_same_training(trained):
    pipeline, output = trained
    trainer = AutoTrainerPipeline.from_pretrained(output)
    assert isinstance(trainer, DreamBoothTrainer)
    rerun = trainer.train(output_dir=None, num_validation_images=0)  # data, prompts and class settings from the saved config
    for name, tensor in unet_state(pipeline).items():
        assert torch.equal(tensor, rerun.unet.state_dict()[name]), name


def test_a_corrupt_class_image_is_a_clear_error(tmp_path):
    folder = write_shapes_folder(tmp_path / "class", count=1, shape="square")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match="broken.png"):
        DreamBoothTrainer().train(**FAST, **{**PRIOR, "class_data_dir": str(folder)})


@pytest.mark.parametrize("bad, message", [
    ({"class_prompt": None}, "needs class_prompt"),
    ({"num_class_images": 0}, "num_class_images must be"),
    ({"prior_loss_weight": -1.0}, "prior_loss_weight"),
    ({"class_data_dir": __file__}, "is a file, not a folder"),
])
def test_bad_prior_preservation_settings_are_clear_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        DreamBoothTrainer().train(**FAST, **{**PRIOR, **bad})


def test_instance_and_class_examples_share_each_batch(monkeypatch):
    recorded = []
    original = diffusion_steps.denoising_losses

    def recording(unet, text_encoder, noise_scheduler, cache, batch, *args, **kwargs):
        recorded.append(list(batch))
        return original(unet, text_encoder, noise_scheduler, cache, batch, *args, **kwargs)

    monkeypatch.setattr(diffusion_steps, "denoising_losses", recording)
    DreamBoothTrainer().train(**{**FAST, "data": shapes_dataset(count=3), "num_validation_images": 0, "max_train_steps": 2},
                              **PRIOR, train_batch_size=2)
    # 3 instance examples (indices 0-2) then 2 class examples (3-4): each batch is 2 instance + 2 class.
    assert len(recorded) == 2
    for batch in recorded:
        assert all(index < 3 for index in batch[:2]) and all(3 <= index < 5 for index in batch[2:]) and len(batch) == 4


def test_lora_variant_with_text_encoder_loads_in_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline

    output = tmp_path / "out"
    pipeline = DreamBoothTrainer().train(**{**FAST, "num_validation_images": 0}, **PRIOR, use_lora=True, train_text_encoder=True,
                                         rank=2, output_dir=str(output))
    assert pipeline.has_lora and not pipeline.config["fine_tuned_components"]
    assert (output / "model/pytorch_lora_weights.safetensors").is_file() and not (output / "model/model_index.json").exists()
    expected = as_array(pipeline.generate("a photo of sks circle", num_inference_steps=3, seed=2)[0])
    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder("tinypipe/tiny-sd"), safety_checker=None)
    plain.load_lora_weights(output / "model")
    image = plain("a photo of sks circle", num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(2)).images[0]
    assert np.array_equal(as_array(image), expected)
    reloaded = AutoModelPipeline.from_pretrained(output)
    assert reloaded.config["lora_rank"] == 2 and reloaded.config["text_encoder_lora"]
    assert np.array_equal(as_array(reloaded.generate("a photo of sks circle", num_inference_steps=3, seed=2)[0]), expected)


def test_full_fine_tune_of_the_text_encoder_too(tmp_path):
    base = DiffusionPipeline("tinypipe/tiny-sd").text_encoder.state_dict()
    pipeline = DreamBoothTrainer().train(**{**FAST, "num_validation_images": 0}, train_text_encoder=True, output_dir=str(tmp_path / "out"))
    assert pipeline.config["fine_tuned_components"] == ("unet", "text_encoder")
    assert any(not torch.equal(tensor, pipeline.text_encoder.state_dict()[name]) for name, tensor in base.items())
    reloaded = AutoModelPipeline.from_pretrained(tmp_path / "out")
    for name, tensor in pipeline.text_encoder.state_dict().items():
        assert torch.equal(tensor, reloaded.text_encoder.state_dict()[name]), name


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    settings = {**FAST, **PRIOR, "max_train_steps": 4, "num_validation_images": 0, "checkpointing_steps": 2}
    straight = DreamBoothTrainer().train(**settings)
    DreamBoothTrainer().train(**{**settings, "max_train_steps": 2}, output_dir=str(tmp_path / "out"))
    resumed = DreamBoothTrainer().train(**settings, output_dir=str(tmp_path / "out"), resume_from_checkpoint="latest")
    for name, tensor in unet_state(straight).items():
        assert torch.equal(tensor, resumed.unet.state_dict()[name]), name


def test_unknown_argument_lists_the_valid_ones():
    with pytest.raises(Exception, match="prior_loss_weight"):
        DreamBoothTrainer().train(**FAST, prior_los_weight=2.0)
