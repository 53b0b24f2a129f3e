"""Tests for `tinypipe.data.images`: every image mode, every broken file, the caption and size checks, the tensors.

The forms of `data` (folders, JSON, lists, datasets) are tested in test_image_sources.py."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tinypipe.errors import DataError
from tinypipe.data.images import (
    ImageExample,
    check_caption_lengths,
    image_to_tensor,
    load_image,
    load_image_examples,
)

LOGGER = "tinypipe.data.images"
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)

def _save(path, image, **save_args):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)
    return path


def _solid(color, size=(16, 16)):
    return Image.new("RGB", size, color)


def _red_left_half(size=(40, 20)):
    """A non-symmetric image: red left half, blue right half."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    return image


def _is_close(pixel, color, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color))


@pytest.fixture
def warnings_log(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    return caplog


# Captions


def test_missing_caption_falls_back_to_default_caption(tmp_path):
    _save(tmp_path / "a.png", _solid(RED))

    assert load_image_examples(tmp_path, default_caption="a photo of sks dog")[0].caption == "a photo of sks dog"


def test_missing_caption_without_default_is_an_error(tmp_path):
    image_path = _save(tmp_path / "a.png", _solid(RED))

    with pytest.raises(DataError, match="has no caption") as error:
        load_image_examples(tmp_path)
    assert str(image_path) in str(error.value)
    assert ".txt" in str(error.value) and "default_caption" in str(error.value)


def test_empty_caption_falls_back_to_default_with_one_counted_warning(tmp_path, warnings_log):
    for name in ["a", "b", "c"]:
        _save(tmp_path / f"{name}.png", _solid(RED))
    (tmp_path / "a.txt").write_text("   \n")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.txt").write_text("a red square")

    examples = load_image_examples(tmp_path, default_caption="a photo")

    assert [example.caption for example in examples] == ["a photo", "a photo", "a red square"]
    assert len(warnings_log.records) == 1
    assert warnings_log.records[0].getMessage().startswith("2 caption(s) are empty")


def test_empty_caption_without_default_is_an_error(tmp_path):
    _save(tmp_path / "a.png", _solid(RED))
    (tmp_path / "a.txt").write_text(" ")

    with pytest.raises(DataError, match="a.png has an empty caption"):
        load_image_examples(tmp_path)


# Broken files


def test_zero_byte_png_is_an_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")

    with pytest.raises(DataError, match=r"empty\.png is empty \(0 bytes\); re-export it or remove it"):
        load_image_examples(tmp_path, default_caption="a photo")


def test_truncated_jpeg_is_an_error(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = _save(tmp_path / "cut.jpg", Image.fromarray(noise), quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(DataError, match="truncated or corrupt") as error:
        load_image(path)
    assert str(path) in str(error.value) and "re-export it or remove it" in str(error.value)


def test_non_image_with_image_extension_is_an_error(tmp_path):
    (tmp_path / "fake.png").write_text("this is text, not a PNG")

    with pytest.raises(DataError, match="fake.png is not an image PIL can read; remove it or convert it"):
        load_image_examples(tmp_path, default_caption="a photo")


def test_decompression_bomb_is_an_error(tmp_path, monkeypatch):
    path = _save(tmp_path / "huge.png", _solid(RED, size=(64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)

    with pytest.raises(DataError, match="has too many pixels") as error:
        load_image(path)
    assert str(path) in str(error.value) and "MAX_IMAGE_PIXELS" in str(error.value)


# Image modes and orientation


def test_animated_gif_uses_first_frame_with_a_warning(tmp_path, warnings_log):
    frames = [_solid(color) for color in [RED, (0, 255, 0), BLUE]]
    _save(tmp_path / "anim.gif", frames[0], save_all=True, append_images=frames[1:])

    (example,) = load_image_examples(tmp_path, default_caption="a photo")

    assert example.image.getpixel((8, 8)) == RED
    assert "first frame of 1 animated image(s)" in warnings_log.records[0].getMessage()


def test_rgba_transparent_pixels_become_white(tmp_path):
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (8, 0, 16, 16))
    result = load_image(_save(tmp_path / "rgba.png", image))

    assert result.mode == "RGB"
    assert result.getpixel((2, 8)) == WHITE and result.getpixel((12, 8)) == BLUE


def test_la_transparent_pixels_become_white(tmp_path):
    image = Image.new("LA", (16, 16), (0, 0))
    image.paste((0, 255), (8, 0, 16, 16))
    result = load_image(_save(tmp_path / "la.png", image))

    assert result.getpixel((2, 8)) == WHITE and result.getpixel((12, 8)) == (0, 0, 0)


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    result = load_image(_save(tmp_path / "p.gif", image, transparency=0))

    assert result.getpixel((2, 8)) == WHITE and result.getpixel((12, 8)) == RED


def test_cmyk_is_converted_to_rgb(tmp_path):
    result = load_image(_save(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0))))

    assert result.mode == "RGB" and _is_close(result.getpixel((8, 8)), RED)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32], ids=["I;16 png", "I in memory"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, dtype):
    gradient = np.tile(np.linspace(0, 65535, 256), (64, 1)).astype(dtype)
    image = Image.fromarray(gradient)
    if dtype == np.uint16:
        _save(tmp_path / "gradient.png", image)  # PIL reads it back as mode I;16.
        data = tmp_path
    else:
        data = [image]  # Mode I, 32-bit.
    (example,) = load_image_examples(data, default_caption="a gradient")

    row = np.asarray(example.image)[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and abs(int(row[128]) - 128) <= 1
    assert np.all(np.diff(row.astype(int)) >= 0) and len(np.unique(row)) > 200


def test_1_bit_image_is_converted_to_black_and_white(tmp_path):
    image = Image.new("1", (16, 16), 0)
    image.paste(1, (8, 0, 16, 16))
    result = load_image(_save(tmp_path / "bw.png", image))

    assert result.getpixel((2, 8)) == (0, 0, 0) and result.getpixel((12, 8)) == WHITE


@pytest.mark.parametrize("orientation, red_at", [(6, "top"), (8, "bottom")])
def test_exif_orientation_is_applied(tmp_path, orientation, red_at):
    exif = Image.Exif()
    exif[0x0112] = orientation
    result = load_image(_save(tmp_path / "photo.jpg", _red_left_half(), exif=exif, quality=95))

    assert result.size == (20, 40)  # Rotated a quarter turn.
    top, bottom = result.getpixel((10, 5)), result.getpixel((10, 35))
    assert _is_close(top if red_at == "top" else bottom, RED)
    assert _is_close(bottom if red_at == "top" else top, BLUE)


# Sizes


def test_tiny_image_is_an_error_naming_size_and_minimum(tmp_path):
    path = _save(tmp_path / "dot.png", _solid(RED, size=(1, 1)))

    with pytest.raises(DataError) as error:
        load_image_examples(tmp_path, default_caption="a photo")
    assert f"{path} is 1x1 pixels, smaller than the minimum of 8 pixels per side" in str(error.value)


def test_extreme_aspect_ratio_is_an_error_naming_the_limit(tmp_path):
    path = _save(tmp_path / "strip.png", _solid(RED, size=(1, 4096)))

    with pytest.raises(DataError) as error:
        load_image_examples(tmp_path, default_caption="a photo")
    assert f"{path} is 1x4096 pixels" in str(error.value)
    assert "aspect ratio of 4.1e+03:1, beyond the limit of 8:1" in str(error.value)


# Filtering and caption length


def test_filter_fn_drops_examples(tmp_path):
    data = [(_solid(RED), "keep"), (_solid(BLUE, size=(1, 1)), "drop")]

    examples = load_image_examples(data, filter_fn=lambda example: example.caption == "keep")

    assert [example.caption for example in examples] == ["keep"]  # The 1x1 image never reached the size check.


def test_filter_fn_dropping_everything_is_an_error():
    with pytest.raises(DataError, match="filter_fn dropped all 2 examples of the list of 2 items"):
        load_image_examples([_solid(RED), _solid(BLUE)], default_caption="x", filter_fn=lambda example: False)


def test_check_caption_lengths_counts_and_warns_once(warnings_log):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "a red square one two three four five six seven eight nine".split()
    vocabulary = {"[UNK]": 0, **{word: index + 1 for index, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", model_max_length=8)
    long_caption = "one two three four five six seven eight nine"
    examples = [
        ImageExample(_solid(RED), "a red square", "data[0]"),
        ImageExample(_solid(RED), long_caption, "data[1]"),
        ImageExample(_solid(RED), long_caption, "data[2]"),
    ]

    assert check_caption_lengths(examples, tokenizer) == 2
    assert len(warnings_log.records) == 1
    message = warnings_log.records[0].getMessage()
    assert "2 of 3 captions are longer than the tokenizer's 8 tokens" in message
    assert "first: data[1], 9 tokens" in message


# image_to_tensor


def test_image_to_tensor_shape_range_and_dtype():
    tensor = image_to_tensor(_red_left_half(size=(64, 32)), resolution=16)

    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert torch.allclose(tensor[:, 8, 12], torch.tensor([-1.0, -1.0, 1.0]))  # Blue, in [-1, 1].


def test_image_to_tensor_center_crop_keeps_the_middle():
    image = Image.new("RGB", (48, 16), RED)
    image.paste(BLUE, (16, 0, 32, 16))  # Only the middle third is blue.

    tensor = image_to_tensor(image, resolution=16, center_crop=True)

    assert torch.allclose(tensor, image_to_tensor(_solid(BLUE), resolution=16))


def test_image_to_tensor_random_crop_and_flip_are_deterministic_with_generator():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 96, 3), dtype=np.uint8))

    def crop(seed):
        generator = torch.Generator().manual_seed(seed)
        return image_to_tensor(noise, resolution=32, center_crop=False, random_flip=True, generator=generator)

    assert torch.equal(crop(0), crop(0))
    assert len({crop(seed).sum().item() for seed in range(8)}) > 1
