import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPTokenizer

from tinypipe.errors import ConfigError, DataError
from tinypipe.files import _COMPLETE_MARKER
from tinypipe.builtin import builtin_names
from tinypipe.builtin import tiny_sd
from tinypipe.builtin.tiny_sd import (
    CLIP_VOCAB_FOLDER,
    TINY_SD,
    TINY_SD_WEIGHTS,
    build_tiny_stable_diffusion,
    builtin_model_folder,
    is_builtin,
    load_clip_tokenizer,
    shapes_dataset,
    write_shapes_folder,
)

PROMPT_WORDS = (
    "a photo of the in on with and style painting picture drawing dog cat person man woman red green blue "
    "yellow white black circle square triangle star shape toy sks"
).split()


def _generate(pipeline: StableDiffusionPipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipeline("a photo of sks circle", num_inference_steps=4, generator=generator, output_type="np").images


def _to_tensor(images: list) -> torch.Tensor:
    """PIL images -> the VAE's input, `(N, 3, H, W)` in [-1, 1]."""
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2) / 127.5 - 1


def _state_dicts_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    first_state, second_state = first.state_dict(), second.state_dict()
    return first_state.keys() == second_state.keys() and all(
        torch.equal(first_state[key], second_state[key]) for key in first_state
    )


def test_shipped_tokenizer_encodes_each_prompt_word_as_one_token():
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_VOCAB_FOLDER)

    assert tokenizer.model_max_length == 77
    assert 512 < len(tokenizer) <= 2048
    assert [word for word in PROMPT_WORDS if len(tokenizer.tokenize(word)) != 1] == []
    ids = tokenizer("A photo of sks dog").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "photo</w>", "of</w>", "sks</w>", "dog</w>"]
    # Words outside the vocabulary still encode, byte by byte, and decode back.
    assert tokenizer.decode(tokenizer("zebra").input_ids, skip_special_tokens=True) == "zebra"


def test_shipped_vocab_files_are_what_make_vocab_generates(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ beside the script
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_clip_vocab.py"
    spec = importlib.util.spec_from_file_location("make_clip_vocab", script)
    make_vocab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_vocab)

    make_vocab.write_files(tmp_path)

    for file_name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / file_name).read_bytes() == (CLIP_VOCAB_FOLDER / file_name).read_bytes(), file_name


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tokenizer = load_clip_tokenizer()
    tokenizer.save_pretrained(tmp_path)

    reloaded = CLIPTokenizer.from_pretrained(tmp_path)

    assert reloaded.model_max_length == 77
    assert reloaded("a photo of sks dog").input_ids == tokenizer("a photo of sks dog").input_ids


def test_build_is_deterministic_and_leaves_global_rng_alone():
    rng_state = torch.get_rng_state()
    first, second = build_tiny_stable_diffusion(), build_tiny_stable_diffusion()

    assert torch.equal(torch.get_rng_state(), rng_state)
    for component in ("unet", "vae", "text_encoder"):
        assert getattr(first, component) is not getattr(second, component)
        assert _state_dicts_equal(getattr(first, component), getattr(second, component)), component
    assert first.text_encoder.config.vocab_size == len(first.tokenizer)
    assert first.safety_checker is None and first.feature_extractor is None


def test_build_loads_shipped_weights_over_random_initialisation():
    pretrained, random_init = build_tiny_stable_diffusion(), build_tiny_stable_diffusion(weights=None)

    for component in ("unet", "vae", "text_encoder"):
        assert not _state_dicts_equal(getattr(pretrained, component), getattr(random_init, component)), component
        assert all(parameter.dtype == torch.float32 for parameter in getattr(pretrained, component).parameters())
    shipped = load_file(TINY_SD_WEIGHTS)
    assert {key.split(".")[0] for key in shipped} == {"unet", "vae", "text_encoder"}
    assert {tensor.dtype for tensor in shipped.values()} == {torch.float16}
    assert TINY_SD_WEIGHTS.stat().st_size <= 3 * 2**20


def test_vae_latents_scaled_by_scaling_factor_have_about_unit_std():
    vae = build_tiny_stable_diffusion().vae
    images = [image for shape in ("circle", "star") for image, _ in shapes_dataset(count=4, shape=shape, seed=3)]
    pixels = _to_tensor(images)

    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))

    assert 0.5 < (latents * vae.config.scaling_factor).std().item() < 2.0


@pytest.mark.parametrize(
    ("shape", "color"), [("circle", (220, 40, 40)), ("square", (40, 70, 220)), ("star", (250, 200, 0))]
)
def test_vae_reconstruction_keeps_mean_colour(shape, color):
    """Measured on the shipped weights: mean |per-channel mean colour difference| 3.7 (red circle),
    1.1 (blue square), 1.3 (yellow star) units of 255 (the weights before the shape-weighted VAE loss: 18.9 / 10.5 / 9.9)."""
    vae = build_tiny_stable_diffusion().vae
    images = [image for image, _ in shapes_dataset(count=4, shape=shape, color=color, seed=11)]
    pixels = _to_tensor(images)

    with torch.no_grad():
        reconstructions = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)

    mean_colors = ((pixels + 1) * 127.5).mean(dim=(2, 3))
    reconstructed_colors = ((reconstructions + 1) * 127.5).mean(dim=(2, 3))
    assert (mean_colors - reconstructed_colors).abs().mean().item() < 8


def test_colour_word_in_prompt_steers_generated_colour():
    """Measured on the shipped weights (3 images from seed 0, 20 steps, guidance 5): red minus blue channel
    mean +28.2 for "a photo of a red circle" and -48.7 for "a photo of a blue circle" (the light background
    fills most of each image, so the shape moves the mean by tens of units, not hundreds)."""
    pipeline = build_tiny_stable_diffusion()
    pipeline.set_progress_bar_config(disable=True)

    def red_minus_blue(prompt: str) -> float:
        generator = torch.Generator().manual_seed(0)
        images = pipeline(
            [prompt] * 3, num_inference_steps=20, guidance_scale=5.0, generator=generator, output_type="np"
        ).images
        mean_color = images.reshape(-1, 3).mean(axis=0) * 255
        return float(mean_color[0] - mean_color[2])

    red, blue = red_minus_blue("a photo of a red circle"), red_minus_blue("a photo of a blue circle")
    assert red > 10 and blue < -10, (red, blue)


@pytest.mark.parametrize("damage", ["missing", "wrong_keys"])
def test_build_with_unusable_weights_raises_config_error_naming_the_script(tmp_path, damage):
    weights = tmp_path / "tiny_sd.safetensors"
    if damage == "wrong_keys":
        shipped = load_file(TINY_SD_WEIGHTS)
        save_file({key: value for key, value in shipped.items() if not key.startswith("vae.")}, weights)

    with pytest.raises(ConfigError, match="pretrain_tiny_sd"):
        build_tiny_stable_diffusion(weights=weights)


def test_builtin_pipeline_generates_default_64px_image():
    pipeline = build_tiny_stable_diffusion()
    pipeline.set_progress_bar_config(disable=True)

    image = pipeline("a photo of sks dog", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]

    assert image.size == (64, 64) and image.mode == "RGB"


def test_builtin_folder_loads_in_plain_diffusers_and_matches_build():
    folder = builtin_model_folder(TINY_SD)

    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= {
        path.name for path in folder.iterdir()
    }
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "text_encoder" / "model.safetensors").is_file()
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()
    loaded = StableDiffusionPipeline.from_pretrained(folder)
    built = build_tiny_stable_diffusion()

    assert loaded.tokenizer.model_max_length == 77
    loaded_images, built_images = _generate(loaded), _generate(built)
    assert loaded_images.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(loaded_images, built_images, atol=1e-6)


def test_builtin_folder_is_reused_without_rebuild():
    folder = builtin_model_folder(TINY_SD)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    modified = weights.stat().st_mtime_ns

    assert builtin_model_folder(TINY_SD) == folder
    assert weights.stat().st_mtime_ns == modified
    assert _leftovers(folder) == []


@pytest.mark.own_builtins  # damages the folder it builds
@pytest.mark.parametrize("damage", ["missing_marker", "other_versions"])
def test_builtin_folder_rebuilds_incomplete_or_stale_folder(damage):
    folder = builtin_model_folder(TINY_SD)
    marker = folder / _COMPLETE_MARKER
    if damage == "missing_marker":
        marker.unlink()
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    else:
        marker.write_text(json.dumps({**json.loads(marker.read_text()), "torch": "0.0.0"}))

    assert builtin_model_folder(TINY_SD) == folder

    assert json.loads(marker.read_text())["torch"] == torch.__version__
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert _leftovers(folder) == []


@pytest.mark.own_builtins  # damages the folder it builds
def test_builtin_folder_crash_while_writing_leaves_nothing_used(monkeypatch):
    class CrashingPipeline:
        def save_pretrained(self, folder, safe_serialization):
            (folder / "model_index.json").write_text("{}")
            raise KeyboardInterrupt

    monkeypatch.setattr(tiny_sd, "build_tiny_stable_diffusion", CrashingPipeline)
    with pytest.raises(KeyboardInterrupt):
        builtin_model_folder(TINY_SD)
    monkeypatch.undo()

    folder = builtin_model_folder(TINY_SD)
    assert _leftovers(folder) == []
    StableDiffusionPipeline.from_pretrained(folder)


def _leftovers(folder):
    """Staging or stale copies left beside a built-in folder (the writers' lock file may stay)."""
    return [path.name for path in folder.parent.glob(f".{folder.name}.*") if path.suffix != ".lock"]


def test_concurrent_processes_both_get_one_complete_folder(tmp_path):
    script = "from tinypipe.builtin.tiny_sd import builtin_model_folder; print(builtin_model_folder('tinypipe/tiny-sd'))"
    environment = {**os.environ, "TINYPIPE_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    writers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=environment)
               for _ in range(2)]
    outputs = [writer.communicate(timeout=120)[0].strip() for writer in writers]

    assert [writer.returncode for writer in writers] == [0, 0]
    folder = tmp_path / "builtin" / "tinypipe--tiny-sd"
    assert outputs == [str(folder)] * 2
    assert _leftovers(folder) == []
    StableDiffusionPipeline.from_pretrained(folder)


def test_unknown_builtin_name_raises_config_error_listing_names():
    with pytest.raises(ConfigError, match="tinypipe/tiny-sd"):
        builtin_model_folder("tinypipe/no-such-model")
    assert is_builtin(TINY_SD) and not is_builtin("tinypipe/no-such-model") and not is_builtin("tinypipe/tiny-llama")
    assert TINY_SD in builtin_names("diffusion")


def test_shapes_dataset_is_deterministic_with_captions():
    examples = shapes_dataset(count=3, resolution=48, shape="star", color=(0, 0, 255), seed=7)

    assert len(examples) == 3
    assert all(image.size == (48, 48) and image.mode == "RGB" for image, _ in examples)
    assert [caption for _, caption in examples] == ["a photo of sks star"] * 3
    same = shapes_dataset(count=3, resolution=48, shape="star", color=(0, 0, 255), seed=7)
    assert [image.tobytes() for image, _ in examples] == [image.tobytes() for image, _ in same]
    other_seed = shapes_dataset(count=3, resolution=48, shape="star", color=(0, 0, 255), seed=8)
    assert examples[0][0].tobytes() != other_seed[0][0].tobytes()
    # The shape is drawn in the requested colour; the background is light.
    pixels = np.asarray(examples[0][0]).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - (0, 0, 255)).sum(axis=1) < 10).sum() > 20
    assert shapes_dataset(count=1, caption="my toy")[0][1] == "my toy"


def test_shapes_dataset_rejects_unknown_shape():
    with pytest.raises(DataError, match="hexagon.*circle"):
        shapes_dataset(shape="hexagon")


def test_write_shapes_folder_writes_images_with_caption_files(tmp_path):
    folder = write_shapes_folder(tmp_path / "instance", count=2, shape="square")

    assert sorted(path.name for path in folder.iterdir()) == [
        "square_000.png",
        "square_000.txt",
        "square_001.png",
        "square_001.txt",
    ]
    assert (folder / "square_001.txt").read_text().strip() == "a photo of sks square"
