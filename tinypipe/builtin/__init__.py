"""The built-in names: tiny models and data sets that ship with tinypipe and need no download.

The one table of them is `BUILTIN_NAMES` (name -> what it builds); every check of "is this a built-in name?"
and every list of them in a message reads it. Building is in the module of each: `tiny_sd` (the diffusion model
and the shapes images), `tiny_sdxl` (the SDXL-shaped one), `tiny_flux` (the FLUX.1 models), `tiny_sd3` (Stable
Diffusion 3), `tiny_llama` (the causal LMs, plain and chat, and the instruction records), `chat_data` (the chat
records). A built-in model name is accepted wherever a hub id is; `tinypipe.models` registers how to save each as a
tinypipe repo.

This module imports nothing heavy, so that names can be checked before torch is loaded.
"""

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Optional

from ..files import cached_folder

__all__ = ["TINY_SD", "TINY_SDXL", "TINY_FLUX", "TINY_FLUX_SCHNELL", "TINY_SD3", "TINY_LLAMA", "TINY_LLAMA_CHAT", "SHAPES_DATA",
           "TINY_INSTRUCTIONS", "TINY_CHATS", "BUILTIN_NAMES", "BUILTIN_FAMILIES", "builtin_names", "is_builtin", "cached_builtin_folder"]

TINY_SD = "tinypipe/tiny-sd"
"""The name of the built-in tiny Stable Diffusion model."""

TINY_SDXL = "tinypipe/tiny-sdxl"
"""The name of the built-in tiny Stable Diffusion XL model."""

TINY_FLUX = "tinypipe/tiny-flux"
"""The name of the built-in tiny FLUX.1-dev-style model (with the guidance embedding)."""

TINY_FLUX_SCHNELL = "tinypipe/tiny-flux-schnell"
"""The name of the built-in tiny FLUX.1-schnell-style model (no guidance embedding)."""

TINY_SD3 = "tinypipe/tiny-sd3"
"""The name of the built-in tiny Stable Diffusion 3 model."""

TINY_LLAMA = "tinypipe/tiny-llama"
"""The name of the built-in tiny Llama causal LM."""

TINY_LLAMA_CHAT = "tinypipe/tiny-llama-chat"
"""The name of the built-in tiny Llama chat model: its tokenizer has a chatml chat template and `<|im_end|>` as eos."""

SHAPES_DATA = "tinypipe/shapes"
"""The name of the built-in shapes image data set."""

TINY_INSTRUCTIONS = "tinypipe/tiny-instructions"
"""The name of the built-in tiny instruction data set (alpaca records)."""

TINY_CHATS = "tinypipe/tiny-chats"
"""The name of the built-in tiny chat data set (messages records, some multi-turn with a system turn)."""

BUILTIN_NAMES: Mapping[str, str] = {
    TINY_SD: "diffusion",  # a diffusers Stable Diffusion pipeline: tiny_sd.build_tiny_stable_diffusion
    TINY_SDXL: "diffusion",  # a diffusers Stable Diffusion XL pipeline: tiny_sdxl.build_tiny_sdxl
    TINY_FLUX: "diffusion",  # a diffusers FLUX.1 pipeline: tiny_flux.build_tiny_flux
    TINY_FLUX_SCHNELL: "diffusion",  # the same without guidance embedding: tiny_flux.build_tiny_flux
    TINY_SD3: "diffusion",  # a diffusers Stable Diffusion 3 pipeline: tiny_sd3.build_tiny_sd3
    TINY_LLAMA: "causal-lm",  # a transformers Llama and its tokenizer: tiny_llama.build_tiny_llama
    TINY_LLAMA_CHAT: "causal-lm",  # the same with a chatml tokenizer: tiny_llama.load_tiny_llama_chat_tokenizer
    SHAPES_DATA: "images",  # captioned images of coloured shapes: tiny_sd.shapes_dataset
    TINY_INSTRUCTIONS: "instructions",  # alpaca-style records: tiny_llama.tiny_instructions
    TINY_CHATS: "instructions",  # messages records (conversations): chat_data.tiny_chats
}
"""Every built-in name, with the kind of thing it builds: `"diffusion"`, `"causal-lm"`, `"images"`, `"instructions"` (causal-LM
training records of any format)."""

BUILTIN_FAMILIES: Mapping[str, str] = {TINY_SD: "sd", TINY_SDXL: "sdxl", TINY_FLUX: "flux", TINY_FLUX_SCHNELL: "flux",
                                       TINY_SD3: "sd3"}
"""The model family name (`"sd"`, `"flux"`, ...) of each built-in diffusion model, known without building it."""


def builtin_names(kind: str) -> list[str]:
    """The built-in names of one kind (`"diffusion"`, `"causal-lm"`, `"images"` or `"instructions"`), sorted."""
    return sorted(name for name, built in BUILTIN_NAMES.items() if built == kind)


def is_builtin(name: object, kind: Optional[str] = None) -> bool:
    """Whether `name` is a built-in name (of `kind`, when given) rather than a folder or a hub id."""
    return isinstance(name, str) and name in BUILTIN_NAMES and (kind is None or BUILTIN_NAMES[name] == kind)


def cached_builtin_folder(name: str, build: Callable[[Path], None], *, format_version: int, libraries: Sequence[str],
                          shipped: Mapping[str, Path]) -> Path:
    """Save a built-in model once as a regular folder of its library, rebuilt only when what it is made of changes.

    Args:
        name: The built-in name (the folder under `tinypipe_home() / "builtin"`).
        build: Writes the folder's files into the (empty) folder it is given.
        format_version: Bumped when the builder changes.
        libraries: The libraries whose version changes the files written (`"torch"`, `"transformers"`, ...).
        shipped: `{fingerprint key: shipped file}` whose sha256 changes the files (weights, a vocabulary).

    Returns:
        The folder (see `tinypipe.files.cached_folder`: atomic, built once across processes).
    """
    from ..config.filelist import sha256_file

    fingerprint = {
        "name": name,
        "format_version": format_version,
        **{library: importlib.import_module(library).__version__ for library in libraries},
        **{key: sha256_file(path) for key, path in shipped.items()},
    }
    return cached_folder(name, fingerprint, build)
