"""Tests for `tinypipe.data.image_sources`: every form of training data (folder, metadata.jsonl, JSON, lists,
datasets) and every malformed one, read through `load_image_examples` as a user does."""

import json
import logging

import pytest
from PIL import Image

from tinypipe.data.image_sources import IMAGE_EXTENSIONS, collect_records
from tinypipe.data.images import ImageExample, load_image_examples
from tinypipe.errors import DataError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _save(path, image, **save_args):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)
    return path


def _solid(color, size=(16, 16)):
    return Image.new("RGB", size, color)


@pytest.fixture
def warnings_log(caplog):
    caplog.set_level(logging.WARNING, logger="tinypipe.data.image_sources")
    return caplog


def test_records_keep_paths_unread_until_images_are_loaded(tmp_path):
    _save(tmp_path / "a.png", _solid(RED))
    (tmp_path / "a.txt").write_text("a red square\n")
    records, description = collect_records(tmp_path)
    assert description == f"folder {tmp_path}"
    assert [(record.image, record.caption) for record in records] == [(tmp_path / "a.png", "a red square")]
    assert ".png" in IMAGE_EXTENSIONS and ".txt" not in IMAGE_EXTENSIONS


def test_folder_reads_sorted_images_with_txt_captions(tmp_path):
    for name, color in [("b.png", BLUE), ("a.jpg", RED)]:
        _save(tmp_path / name, _solid(color))
    (tmp_path / "a.txt").write_text("a red square\n")
    (tmp_path / "b.txt").write_text("a blue square")

    examples = load_image_examples(tmp_path)

    assert [example.source for example in examples] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert [example.caption for example in examples] == ["a red square", "a blue square"]
    assert all(isinstance(example, ImageExample) and example.image.mode == "RGB" for example in examples)


def test_folder_reads_captions_from_metadata_jsonl(tmp_path):
    _save(tmp_path / "a.png", _solid(RED))
    _save(tmp_path / "b.png", _solid(BLUE))
    lines = [{"file_name": "a.png", "text": "red"}, {"file_name": "b.png", "caption": "blue"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    assert [example.caption for example in load_image_examples(tmp_path)] == ["red", "blue"]


def test_folder_skips_non_image_files_with_one_warning(tmp_path, warnings_log):
    _save(tmp_path / "a.png", _solid(RED))
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "weights.ckpt").write_bytes(b"\0" * 8)
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 8)
    (tmp_path / "more").mkdir()

    examples = load_image_examples(tmp_path, default_caption="a photo")

    assert len(examples) == 1
    assert len(warnings_log.records) == 1
    message = warnings_log.records[0].getMessage()
    assert "Skipped 3 entries" in message and "notes.md" in message and "more/" in message
    assert ".DS_Store" not in message


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="contains no images") as error:
        load_image_examples(tmp_path, default_caption="a photo")
    assert str(tmp_path) in str(error.value) and ".png" in str(error.value)


def test_nonexistent_path_is_an_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as error:
        load_image_examples(missing)
    assert str(missing) in str(error.value) and "a folder of images" in str(error.value)


def test_non_string_caption_is_an_error_naming_file_and_key(tmp_path):
    _save(tmp_path / "a.png", _solid(RED))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": 42}) + "\n")

    with pytest.raises(DataError, match="captions must be strings") as error:
        load_image_examples(tmp_path)
    assert f"{tmp_path / 'metadata.jsonl'} line 1 key 'text' has type int (42)" in str(error.value)


def test_malformed_metadata_jsonl_names_the_line(tmp_path):
    _save(tmp_path / "a.png", _solid(RED))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "red"}\n{"file_name": "a.png",\n')

    with pytest.raises(DataError, match="line 2 is not valid JSON") as error:
        load_image_examples(tmp_path)
    assert str(tmp_path / "metadata.jsonl") in str(error.value)


def test_metadata_naming_a_missing_image_is_an_error(tmp_path):
    _save(tmp_path / "a.png", _solid(RED))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "typo.png", "text": "red"}) + "\n")

    with pytest.raises(DataError, match="line 1 names 'typo.png', which is not an image"):
        load_image_examples(tmp_path)


def test_json_file_with_relative_paths(tmp_path):
    _save(tmp_path / "images/a.png", _solid(RED))
    _save(tmp_path / "images/b.png", _solid(BLUE))
    records = [{"image": "images/a.png", "caption": "red"}, "images/b.png"]
    (tmp_path / "data.json").write_text(json.dumps(records))

    examples = load_image_examples(tmp_path / "data.json", default_caption="a photo")

    assert [(example.source, example.caption) for example in examples] == [
        (str(tmp_path / "images/a.png"), "red"),
        (str(tmp_path / "images/b.png"), "a photo"),
    ]


def test_json_record_naming_a_missing_image_is_an_error(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps([{"file_name": "gone.png", "text": "red"}]))

    with pytest.raises(DataError, match=r"data.json item 0 names .*gone.png, which is not a file; fix the path"):
        load_image_examples(tmp_path / "data.json")


def test_malformed_json_names_the_line(tmp_path):
    (tmp_path / "data.json").write_text('[\n  {"image": "a.png"},\n  {"image": "b.png",}\n]\n')

    with pytest.raises(DataError, match="line 3 is not valid JSON") as error:
        load_image_examples(tmp_path / "data.json")
    assert str(tmp_path / "data.json") in str(error.value)


def test_list_of_pil_images(tmp_path):
    examples = load_image_examples([_solid(RED), Image.new("RGBA", (16, 16), (0, 0, 0, 0))], default_caption="x")

    assert [example.source for example in examples] == ["data[0]", "data[1]"]
    assert examples[1].image.getpixel((0, 0)) == WHITE


def test_list_of_image_caption_pairs(tmp_path):
    path = _save(tmp_path / "b.png", _solid(BLUE))

    examples = load_image_examples([(_solid(RED), "red"), (path, "blue")])

    assert [(example.source, example.caption) for example in examples] == [("data[0]", "red"), (str(path), "blue")]


def test_empty_list_is_an_error():
    with pytest.raises(DataError, match="Training data is an empty list; pass a folder of images"):
        load_image_examples([])


def test_datasets_dataset_with_image_column():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": [_solid(RED), _solid(BLUE)], "text": ["red", "blue"]}, features)

    examples = load_image_examples(dataset)

    assert [(example.source, example.caption) for example in examples] == [("data[0]", "red"), ("data[1]", "blue")]
    assert examples[1].image.getpixel((8, 8)) == BLUE


def test_empty_dataset_is_an_error():
    datasets = pytest.importorskip("datasets")
    empty = datasets.Dataset.from_dict({"image": []}, datasets.Features({"image": datasets.Image()}))

    with pytest.raises(DataError, match="datasets.Dataset has no rows"):
        load_image_examples(empty)
