"""LoRATrainer on the built-in tiny model: the repo it writes, reloading it everywhere, and bad input."""

import json

import numpy as np
import pytest
import torch

from tinypipe import (
    AutoModelPipeline,
    AutoTrainerPipeline,
    ConfigError,
    DataError,
    TrainingError,
)
from tinypipe.models import DiffusionPipeline
from tinypipe.builtin.tiny_sd import builtin_model_folder, write_shapes_folder
from tinypipe.trainers import LoRATrainConfig, LoRATrainer

# Small and fast: a few steps, one small validation image.
FAST = dict(data="tinypipe/shapes", instance_prompt="a photo of sks circle", max_train_steps=4, num_validation_images=1,
            validation_inference_steps=2, use_8bit_adam=False, learning_rate=1e-3)


def lora_weights(pipeline: DiffusionPipeline) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in pipeline.lora_state_dicts()["unet"].items()}


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run whose repo several tests read."""
    output = tmp_path_factory.mktemp("lora") / "out"
    trainer = LoRATrainer(train_config=LoRATrainConfig(max_train_steps=2, learning_rate=1e-3))
    trainer.init_model(DiffusionPipeline("tinypipe/tiny-sd"))
    pipeline = trainer.train(**{**FAST, "max_train_steps": 4}, output_dir=str(output), checkpointing_steps=2, validation_epochs=1)
    return pipeline, output


def test_training_changes_the_lora_and_writes_the_repo(trained):
    pipeline, output = trained
    assert pipeline.has_lora
    assert any(tensor.abs().sum() > 0 for name, tensor in lora_weights(pipeline).items() if "lora_B" in name or "lora.up" in name)
    files = sorted(str(path.relative_to(output)) for path in output.rglob("*") if path.is_file())
    for expected in ("model/config.json", "model/filelist.txt", "model/pytorch_lora_weights.safetensors",
                     "trainer/config.json", "trainer/filelist.txt", "trainer/train_config/config.json",
                     "validation/before_after.png", "validation/epoch-0001/grid.png", "validation/epoch-0001/image-00.png"):
        assert expected in files
    assert any(name.startswith("checkpoints/checkpoint-") for name in files)


def test_effective_configuration_is_recorded(trained):
    _, output = trained
    saved = json.loads((output / "trainer/train_config/config.json").read_text())
    assert saved["max_train_steps"] == 4  # the call-time value, not the constructor's 2
    assert saved["learning_rate"] == 1e-3 and saved["data"] == "tinypipe/shapes"
    assert saved["base_model"] == "tinypipe/tiny-sd"
    assert saved["lora_alpha"] == saved["rank"] == 4  # the alpha that scaled the update (the rank: none was given)
    ran = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert saved["num_train_epochs"] == 1 + max(record["epoch"] for record in ran) < 30  # the epochs that ran (from 0)


def test_reloaded_pipeline_generates_the_same_images(trained):
    pipeline, output = trained
    expected = pipeline.generate("a photo of sks circle", num_inference_steps=4, seed=3)[0]
    reloaded = AutoModelPipeline.from_pretrained(output)
    assert isinstance(reloaded, DiffusionPipeline) and reloaded.config["lora_rank"] == 4
    assert np.array_equal(as_array(reloaded.generate("a photo of sks circle", num_inference_steps=4, seed=3)[0]), as_array(expected))


def test_plain_diffusers_load_lora_weights_reproduces_the_images(trained):
    from diffusers import StableDiffusionPipeline

    pipeline, output = trained
    expected = pipeline.generate("a photo of sks circle", num_inference_steps=4, guidance_scale=7.5, seed=5)[0]
    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder("tinypipe/tiny-sd"), safety_checker=None)
    plain.load_lora_weights(output / "model")
    image = plain("a photo of sks circle", num_inference_steps=4, guidance_scale=7.5,
                  generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert np.array_equal(as_array(image), as_array(expected))
    base = StableDiffusionPipeline.from_pretrained(builtin_model_folder("tinypipe/tiny-sd"), safety_checker=None)
    untouched = base("a photo of sks circle", num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert not np.array_equal(as_array(untouched), as_array(expected))  # the LoRA really changes the images


def test_saved_trainer_reruns_the_same_training(trained, tmp_path):
    pipeline, output = trained
    trainer = AutoTrainerPipeline.from_pretrained(output)
    assert isinstance(trainer, LoRATrainer)
    rerun = trainer.train(output_dir=None)  # base model and data come from the saved config
    for name, tensor in lora_weights(pipeline).items():
        assert torch.equal(tensor, lora_weights(rerun)[name]), name


def test_in_memory_data_and_a_folder_train(tmp_path):
    from tinypipe.builtin.tiny_sd import shapes_dataset

    folder = write_shapes_folder(tmp_path / "shapes", count=3)
    for data in (shapes_dataset(count=3), [image for image, _ in shapes_dataset(count=3)], str(folder)):
        pipeline = LoRATrainer().train(**{**FAST, "data": data, "max_train_steps": 1, "num_validation_images": 0})
        assert pipeline.has_lora


def test_all_the_options_together(tmp_path):
    """Text-encoder LoRA, min-SNR weighting, offset noise, checkpointing, accumulation, cosine schedule, random flip."""
    pipeline = LoRATrainer().train(**FAST, train_text_encoder=True, snr_gamma=5.0, noise_offset=0.05, gradient_checkpointing=True,
                                   gradient_accumulation_steps=2, lr_schedule="cosine", warmup_steps=1, random_flip=True,
                                   center_crop=False, rank=2, lora_alpha=4, output_dir=str(tmp_path / "out"))
    assert set(pipeline.lora_state_dicts()) == {"unet", "text_encoder"}
    reloaded = AutoModelPipeline.from_pretrained(tmp_path / "out")
    prompt = dict(num_inference_steps=3, seed=1)
    assert np.array_equal(as_array(reloaded.generate("a photo of sks circle", **prompt)[0]),
                          as_array(pipeline.generate("a photo of sks circle", **prompt)[0]))


def test_unknown_lr_schedule():
    with pytest.raises(ConfigError, match=r"lr_schedule 'cosin' is not known; choose one of \['linear', 'cosine'"):
        LoRATrainer().train(**{**FAST, "lr_schedule": "cosin"})


def test_max_train_steps_zero():
    with pytest.raises(ConfigError, match=r"max_train_steps must be a whole number >= 1 \(or None, null in JSON, for the default\), got 0"):
        LoRATrainer().train(**{**FAST, "max_train_steps": 0})


def test_unknown_training_argument_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown arguments \['learning_rat'\]; valid ones are \[.*'learning_rate'"):
        LoRATrainer().train(**FAST, learning_rat=1e-4)
    with pytest.raises(ConfigError, match=r"unknown keys \['epochz'\]"):
        LoRATrainConfig(epochz=3)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        LoRATrainer().train(**{**FAST, "data": str(tmp_path / "empty")})


def test_fp16_on_cpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("fp16 is fine on a GPU")
    with pytest.raises(ConfigError, match="mixed_precision='fp16' needs a CUDA GPU"):
        LoRATrainer().train(**FAST, mixed_precision="fp16")


def test_nan_loss_stops_and_publishes_nothing(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"The loss became (nan|inf) at step \d+; training stopped and nothing was saved"):
        LoRATrainer().train(**{**FAST, "max_train_steps": 30, "learning_rate": 1e30}, max_grad_norm=None, output_dir=str(output),
                            checkpointing_steps=1, checkpoints_total_limit=1)
    assert not (output / "model").exists() and not (output / "trainer").exists()
    assert len(list((output / "checkpoints").glob("checkpoint-*"))) == 1  # the last good checkpoint stays
