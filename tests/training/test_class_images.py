"""Class images of prior preservation: the user's folder topped up in place (as diffusers does), else a cache."""

import logging

import numpy as np
import pytest

from tinypipe.models import DiffusionPipeline
from tinypipe.builtin.tiny_sd import write_shapes_folder
from tinypipe.training import class_images

SETTINGS = dict(class_prompt="a photo of a square", resolution=64, seed=0, sample_batch_size=2, inference_steps=2,
                guidance_scale=7.5)


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def pipeline():
    return DiffusionPipeline("tinypipe/tiny-sd")


def test_class_images_are_cached_and_a_rerun_generates_nothing(pipeline, monkeypatch):
    settings = dict(SETTINGS, class_data_dir=None, num_class_images=3)
    first = class_images.prepare_class_examples(pipeline, **settings)
    assert [example.caption for example in first] == ["a photo of a square"] * 3

    def must_not_run(*args, **kwargs):
        raise AssertionError("class images were generated again")

    monkeypatch.setattr(class_images, "_generate_class_images", must_not_run)
    again = class_images.prepare_class_examples(pipeline, **settings)
    assert [as_array(example.image).tolist() for example in again] == [as_array(example.image).tolist() for example in first]
    for change in ({"class_prompt": "a photo of a star"}, {"seed": 1}, {"num_class_images": 4}, {"resolution": 32}):
        with pytest.raises(AssertionError, match="generated again"):  # a changed key never reuses stale images
            class_images.prepare_class_examples(pipeline, **{**settings, **change})


def test_generated_class_images_top_up_the_given_folder_and_the_log_says_where(pipeline, tmp_path, caplog, monkeypatch):
    folder = write_shapes_folder(tmp_path / "class", count=2, shape="square")
    (folder / "notes.md").write_text("not an image")
    mine = {path.name: path.read_bytes() for path in folder.iterdir()}
    with caplog.at_level(logging.INFO, logger="tinypipe"):
        examples = class_images.prepare_class_examples(pipeline, **SETTINGS, class_data_dir=str(folder), num_class_images=3)
    assert len(examples) == 3 and all(example.caption == "a photo of a square" for example in examples)
    generated = sorted(set(path.name for path in folder.iterdir()) - set(mine))
    assert len(generated) == 1 and generated[0].endswith(".png")  # written into the user's folder, as diffusers does
    assert all((folder / name).read_bytes() == content for name, content in mine.items())  # their files untouched
    assert f"2 class images found in {folder.resolve()}, 1 generated into it" in caplog.text

    def must_not_run(*args, **kwargs):
        raise AssertionError("class images were generated again")

    monkeypatch.setattr(class_images, "_generate_class_images", must_not_run)
    again = class_images.prepare_class_examples(pipeline, **SETTINGS, class_data_dir=str(folder), num_class_images=3)
    assert sorted(example.source for example in again) == sorted(example.source for example in examples)  # found, not made
    assert len(class_images.prepare_class_examples(pipeline, **SETTINGS, class_data_dir=str(folder), num_class_images=1)) == 1
