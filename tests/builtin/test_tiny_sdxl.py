"""`tinypipe/tiny-sdxl`: an offline SDXL-shaped model, a few MB, that plain diffusers loads, and the CLI accepts."""

import torch

from tinypipe.builtin import BUILTIN_NAMES
from tinypipe.builtin.tiny_sdxl import TINY_SDXL, build_tiny_sdxl, builtin_sdxl_folder


def test_tiny_sdxl_is_a_small_sdxl_folder_with_the_same_weights_on_every_build():
    from diffusers import StableDiffusionXLPipeline

    assert BUILTIN_NAMES[TINY_SDXL] == "diffusion"
    folder = builtin_sdxl_folder()
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert size < 8_000_000
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.text_encoder_2.config.projection_dim == 32
    again = build_tiny_sdxl()
    assert all(torch.equal(tensor, again.unet.state_dict()[name]) for name, tensor in pipe.unet.state_dict().items())


def test_the_cli_trains_and_generates_with_tiny_sdxl_detecting_its_family(tmp_path, capsys):
    from tinypipe.cli import main

    assert main(["train-diffuser", "xl", TINY_SDXL, "tinypipe/shapes", "a photo of sks circle", "--output", str(tmp_path / "out"),
                 "--training-args", '{"max_train_steps": 1, "num_validation_images": 0, "checkpointing_steps": 0}']) == 0
    assert '"family": "sdxl"' in (tmp_path / "out/model/config.json").read_text()
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "out"), "a photo of sks circle", "--steps", "1", "--num-images", "1",
                 "--output", str(tmp_path / "images")]) == 0
    written = sorted((tmp_path / "images").glob("*.png"))
    assert len(written) == 1 and capsys.readouterr().out.split() == [str(written[0])]
