"""A diffusers pipeline folder: loading a base one (a built-in name, a local folder or a hub id), saving a fine-tuned one.

`load_base_pipeline` is what `DiffusionPipeline` builds on: it loads the pipeline class of the model's family
(`families.family_of` its `model_index.json`), and refuses a local folder whose `model_index.json`
names components from libraries other than diffusers and transformers (diffusers would import them, running
their code, and a base model folder gives no consent to that). `save_pipeline_folder` writes a folder that
the family's diffusers pipeline class (`StableDiffusionPipeline`, ...) reads, with transformers 4.x as well as 5.
"""

import json
from pathlib import Path
from typing import Optional

import torch

from ..files import read_json
from ..errors import ConfigError
from ..builtin.tiny_sd import is_builtin
from ..library_output import quiet_libraries
from ..families import ModelFamily, family_of
from .base_models import base_model_load_error, base_model_source

__all__ = ["base_model_family", "default_device", "load_base_pipeline", "quiet_loading", "save_pipeline_folder", "write_vocabulary_files"]


def default_device() -> str:
    """`cuda` when a GPU is visible, else `cpu`."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def quiet_loading():
    """Silence the loading progress bars and notices of diffusers/transformers (and diffusers' FutureWarnings) for
    one load; under `--log-level DEBUG` nothing is silenced (`library_output.quiet_libraries`)."""
    return quiet_libraries("diffusers", "transformers", future_warnings=True)


_COMPONENT_LIBRARIES = (None, "diffusers", "transformers")


def _check_component_libraries(model_index: Path) -> None:
    """Refuse a `model_index.json` whose components come from other libraries: diffusers would import them (running
    their code) to build the pipeline, and a base model folder gives no consent to that."""
    for name, value in read_json(model_index).items():
        if isinstance(value, list) and value and value[0] not in _COMPONENT_LIBRARIES:
            raise ConfigError(f"{model_index}: the component {name!r} comes from the library {value[0]!r}, which loading "
                              "would import; tinypipe builds base models from diffusers and transformers components only.")


def base_model_family(base_model: str, revision: Optional[str] = None, token: Optional[str] = None) -> ModelFamily:
    """The model family of a diffusion base model (a built-in name, a local diffusers folder or a hub id), from the
    `_class_name` of its `model_index.json`.

    Raises:
        ConfigError: The model cannot be had, or its pipeline class is of no supported family (the message lists them).
    """
    source = base_model_source(base_model, "diffusion")
    if isinstance(source, Path):
        return family_of(source / "model_index.json")
    from diffusers import DiffusionPipeline as AnyDiffusersPipeline

    try:
        with quiet_loading():
            model_index = AnyDiffusersPipeline.load_config(source, revision=revision, token=token)
    except OSError as error:
        raise base_model_load_error(base_model, revision, error, "diffusion") from error
    class_name = model_index.get("_class_name")
    if not isinstance(class_name, str):
        raise ConfigError(f"The model_index.json of {base_model!r} has no '_class_name': it is not a diffusers pipeline.")
    return family_of(class_name)


def load_base_pipeline(base_model: str, revision: Optional[str] = None, torch_dtype: torch.dtype = torch.float32, token: Optional[str] = None):
    """Load a diffusion base model in its family's diffusers pipeline class (`StableDiffusionPipeline`,
    `StableDiffusionXLPipeline`, ...): a built-in name, a local diffusers folder, or a hub id.

    Raises:
        ConfigError: A local folder that is not a diffusers pipeline, a hub id that cannot be had, or a pipeline class
            of no supported family.
    """
    source = base_model_source(base_model, "diffusion")
    if isinstance(source, Path) and not is_builtin(base_model):
        _check_component_libraries(source / "model_index.json")
    family = base_model_family(base_model, revision, token)
    try:
        with quiet_loading():
            return family.pipeline_class.from_pretrained(
                source, revision=revision if not isinstance(source, Path) else None, torch_dtype=torch_dtype, token=token,
                **family.pipeline_load_arguments(),
            )
    except OSError as error:
        raise base_model_load_error(base_model, revision, error, "diffusion") from error


def save_pipeline_folder(pipe, folder: Path) -> None:
    """Save a diffusers pipeline (safetensors) as a folder `StableDiffusionPipeline.from_pretrained` loads.

    Each tokenizer folder also gets the vocabulary files the slow tokenizer reads (`write_vocabulary_files`).
    """
    with quiet_loading():
        pipe.save_pretrained(folder, safe_serialization=True)
    for tokenizer_folder in sorted(folder.glob("tokenizer*/")):
        write_vocabulary_files(tokenizer_folder)


def write_vocabulary_files(tokenizer_folder: Path) -> None:
    """Write `vocab.json` and `merges.txt` beside a BPE `tokenizer.json` that lacks them.

    transformers 5 saves a CLIP tokenizer as `tokenizer.json` only; the slow `CLIPTokenizer` that
    `model_index.json` names (and transformers 4.x) reads these two files, so a saved pipeline folder
    carries them, as diffusers' own folders do.
    """
    tokenizer_json = tokenizer_folder / "tokenizer.json"
    if not tokenizer_json.is_file() or ((tokenizer_folder / "vocab.json").is_file() and (tokenizer_folder / "merges.txt").is_file()):
        return
    model = read_json(tokenizer_json).get("model", {})
    if model.get("type") != "BPE":
        return
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    (tokenizer_folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n", encoding="utf-8")
    (tokenizer_folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges), encoding="utf-8")
