"""Where training images come from: every form of `data` a diffusion trainer accepts, read into records.

`collect_records` dispatches on the form: a folder of images (captions from the Hugging Face imagefolder
`metadata.jsonl` or `<stem>.txt` files), a `.json` / `.jsonl` file of records, a Python list (of PIL images,
paths, `(image, caption)` pairs or records), a `datasets.Dataset`, or the name of a built-in data set. Each
record holds the image or its path and the caption given with it; `data.images` reads and checks the images.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..builtin import SHAPES_DATA
from ..errors import DataError
from .json_files import read_data_text, read_json_document, read_json_lines

logger = logging.getLogger(__name__)

__all__ = ["ACCEPTED_FORMS", "BUILTIN_DATASETS", "CAPTION_KEYS", "IMAGE_EXTENSIONS", "IMAGE_KEYS", "METADATA_FILE",
           "ImageRecord", "collect_records", "list_some"]

IMAGE_EXTENSIONS = frozenset(
    {".apng", ".avif", ".bmp", ".gif", ".jfif", ".jpe", ".jpeg", ".jpg", ".pbm", ".pgm", ".png",
     ".pnm", ".ppm", ".qoi", ".tga", ".tif", ".tiff", ".webp"}
)
IMAGE_KEYS = ("image", "file_name", "path")
CAPTION_KEYS = ("text", "caption", "prompt")
METADATA_FILE = "metadata.jsonl"


def _shapes() -> list:
    from ..builtin.tiny_sd import shapes_dataset

    return shapes_dataset()


# Built-in data sets, addressable by name wherever `data` is accepted; nothing is downloaded.
BUILTIN_DATASETS: dict[str, Callable[[], list]] = {SHAPES_DATA: _shapes}
ACCEPTED_FORMS = (
    "a folder of images, a .json/.jsonl file of records, a list of PIL images, paths, "
    "(image, caption) pairs or records, or a datasets.Dataset with an 'image' column"
)


@dataclass
class ImageRecord:
    """An item before its image is read: `caption` is `None` when none was given, `""` when empty."""

    image: Image.Image | Path
    caption: str | None
    source: str


def collect_records(data: Any) -> tuple[list[ImageRecord], str]:
    """The records of `data` in any accepted form (see `load_image_examples`) and a description of it for messages.

    Raises:
        DataError: `data` is missing, empty, of an unsupported type, or malformed (naming the file, line or item).
    """
    if isinstance(data, str) and data in BUILTIN_DATASETS:
        data = BUILTIN_DATASETS[data]()
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            return _records_from_folder(path), f"folder {path}"
        if path.is_file() and path.suffix.lower() in (".json", ".jsonl"):
            return _records_from_json_file(path), str(path)
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"Training data {path} is a single image; pass its folder, or [{str(path)!r}].")
        if path.is_file():
            raise DataError(f"Training data {path} is a file but not a .json/.jsonl file; pass {ACCEPTED_FORMS}.")
        raise DataError(
            f"Training data {path} does not exist. Pass {ACCEPTED_FORMS}; to use a Hub data set, load it with "
            "datasets.load_dataset(...) and pass the Dataset."
        )
    if _is_dataset(data):
        return _records_from_dataset(data), f"the datasets.Dataset of {len(data)} rows"
    if isinstance(data, dict):
        raise DataError(f"Training data is a dict with keys {sorted(map(str, data))}; pass one split: data['train'].")
    if isinstance(data, (list, tuple)):
        if not data:
            raise DataError(f"Training data is an empty {type(data).__name__}; pass {ACCEPTED_FORMS}.")
        records = [_record_from_item(item, f"data[{index}]", Path.cwd()) for index, item in enumerate(data)]
        return records, f"the list of {len(data)} items"
    raise DataError(f"Training data of type {type(data).__name__} is not supported; pass {ACCEPTED_FORMS}.")


def _records_from_folder(folder: Path) -> list[ImageRecord]:
    """The images directly in `folder`, sorted, with captions from `metadata.jsonl` or `<stem>.txt`."""
    entries = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    images = [entry for entry in entries if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        holding = [entry for entry in entries if entry.is_dir() and any(
            child.is_file() and child.suffix.lower() in IMAGE_EXTENSIONS for child in entry.iterdir())]
        if holding:
            names = ", ".join(repr(entry.name) for entry in holding[:5]) + (" ..." if len(holding) > 5 else "")
            raise DataError(f"Folder {folder} holds no images itself; they are in its sub-folder(s) {names} (kohya's "
                            "<repeats>_<name> layout?), and sub-folders are not searched. Pass the sub-folder as the data, "
                            f"e.g. {str(holding[0])!r}.")
        raise DataError(f"Folder {folder} contains no images; add image files ({extensions}) to it.")
    metadata_path = folder / METADATA_FILE
    captions = _read_metadata(metadata_path, {image.name for image in images}) if metadata_path.is_file() else {}
    used = set(images) | {metadata_path} | {image.with_suffix(".txt") for image in images}
    skipped = [entry.name + ("/" if entry.is_dir() else "") for entry in entries if entry not in used]
    if skipped:
        logger.warning(
            "Skipped %d entries of %s that are not images or their captions: %s. Subfolders are not searched; "
            "image extensions are %s.", len(skipped), folder, list_some(skipped), ", ".join(sorted(IMAGE_EXTENSIONS)),
        )
    records = []
    for image_path in images:
        caption = captions.get(image_path.name)
        caption_path = image_path.with_suffix(".txt")
        if caption is None and caption_path.is_file():
            caption = read_data_text(caption_path).strip()
        records.append(ImageRecord(image_path, caption, str(image_path)))
    return records


def _read_metadata(path: Path, image_names: set[str]) -> dict[str, str | None]:
    """Read `metadata.jsonl` into `{file name: caption}`, checking each line."""
    captions, line_of = {}, {}
    for line_number, entry in read_json_lines(path):
        where = f"{path} line {line_number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise DataError(f'{where} must be an object with a "file_name" string, like {{"file_name": "dog.png", '
                            '"text": "a dog"}.')
        name = entry["file_name"].removeprefix("./")
        if name not in image_names:
            raise DataError(f"{where} names {name!r}, which is not an image directly in {path.parent}; "
                            "fix the name or remove the line.")
        if name in line_of:
            raise DataError(f"{where} repeats {name!r} from line {line_of[name]}; keep one line per image.")
        line_of[name] = line_number
        captions[name] = _caption_from_mapping(entry, where)
    return captions


def _records_from_json_file(path: Path) -> list[ImageRecord]:
    """The records of a `.json` file (a list) or a `.jsonl` file (one per line); relative paths start at its folder."""
    if path.suffix.lower() == ".jsonl":
        items = [(f"{path} line {number}", item) for number, item in read_json_lines(path)]
    else:
        content = read_json_document(path)
        if not isinstance(content, list):
            raise DataError(f"{path} must hold a JSON list of image paths or records, not a {type(content).__name__}.")
        items = [(f"{path} item {index}", item) for index, item in enumerate(content)]
    if not items:
        raise DataError(f'{path} lists no images; add records like {{"image": "dog.png", "caption": "a dog"}}.')
    return [_record_from_item(item, where, path.parent) for where, item in items]


def _record_from_item(item: Any, where: str, base_dir: Path) -> ImageRecord:
    """One list or JSON item (at `where`): an image, a path, an `(image, caption)` pair or a record."""
    if isinstance(item, dict):
        image_key = next((key for key in IMAGE_KEYS if key in item), None)
        if image_key is None:
            raise DataError(f"{where} has no image: give it one of the keys {', '.join(IMAGE_KEYS)}.")
        image, caption = item[image_key], _caption_from_mapping(item, where)
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        image, caption = item[0], _check_caption(item[1], f"{where} caption")
    else:
        image, caption = item, None
    if isinstance(image, Image.Image):
        return ImageRecord(image, caption, where)
    if isinstance(image, (str, os.PathLike)):
        path = base_dir / image  # An absolute `image` replaces `base_dir`.
        if not path.is_file():
            raise DataError(f"{where} names {path}, which is not a file; fix the path (relative paths start at "
                            f"{base_dir}).")
        return ImageRecord(path, caption, str(path))
    raise DataError(f"{where} has type {type(image).__name__}; expected a PIL image, a path, an (image, caption) pair "
                    "or a record.")


def _records_from_dataset(dataset: Any) -> list[ImageRecord]:
    """The rows of a `datasets.Dataset`: its `image` column and its first caption column, if any."""
    import datasets  # Only reached with a `datasets.Dataset`, so the package is installed.

    if len(dataset) == 0:
        raise DataError("The datasets.Dataset has no rows; pass one with at least one image.")
    image_column = "image" if "image" in dataset.column_names else next(
        (name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)), None
    )
    if image_column is None:
        raise DataError(f"The datasets.Dataset has no image column (columns: {dataset.column_names}); name it 'image'.")
    caption_column = next((name for name in CAPTION_KEYS if name in dataset.column_names), None)
    records = []
    for index in range(len(dataset)):
        where = f"data[{index}]"
        try:
            row = dataset[index]  # Decodes the image.
        except Exception as error:
            raise DataError(f"{where} of the datasets.Dataset cannot be decoded ({error}); fix or drop it.") from error
        image = row[image_column]
        if isinstance(image, str):
            image = Path(image)
        elif not isinstance(image, Image.Image):
            raise DataError(
                f"{where} column {image_column!r} holds a {type(image).__name__}, not an image; cast the column "
                f"with dataset.cast_column({image_column!r}, datasets.Image())."
            )
        caption = _check_caption(row[caption_column], f"{where} column {caption_column!r}") if caption_column else None
        records.append(ImageRecord(image, caption, str(image) if isinstance(image, Path) else where))
    return records


def _caption_from_mapping(mapping: dict, where: str) -> str | None:
    """The caption of a JSON record under its first caption key; `None` if it has none."""
    key = next((key for key in CAPTION_KEYS if key in mapping), None)
    return None if key is None else _check_caption(mapping[key], f"{where} key {key!r}")


def _check_caption(value: Any, where: str) -> str | None:
    """A caption stripped of surrounding space; `None` stays `None`, anything but a string is an error."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f'{where} has type {type(value).__name__} ({value!r}); captions must be strings, like "a dog".')
    return value.strip()


def _is_dataset(data: Any) -> bool:
    datasets = sys.modules.get("datasets")  # Whoever built a `datasets.Dataset` has imported `datasets`.
    return datasets is not None and isinstance(data, datasets.Dataset)


def list_some(names: Sequence[str], limit: int = 5) -> str:
    """`"a, b, c"` or `"a, b, c and 7 more"`, for messages about many files."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
