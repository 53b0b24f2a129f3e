"""The CLIP tokenizer shipped with tinypipe, shared by the built-in diffusion models (`tiny_sd`, `tiny_flux`).

Its vocabulary is in `tinypipe/builtin/vocab/clip/` (see `scripts/make_clip_vocab.py`): common prompt words and the
identifier `sks` are one token each. The built-ins are built with the torch RNG seeded by `seeded`.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from ..library_output import quiet_libraries

__all__ = ["CLIP_VOCAB_FOLDER", "load_clip_tokenizer", "seeded"]

CLIP_VOCAB_FOLDER = Path(__file__).resolve().parent / "vocab" / "clip"
"""The shipped CLIP tokenizer files: `vocab.json`, `merges.txt`, `tokenizer_config.json`."""


def load_clip_tokenizer() -> CLIPTokenizer:
    """Load the CLIP tokenizer shipped with tinypipe (about 1k tokens, `model_max_length` 77).

    Returns:
        A `transformers.CLIPTokenizer` built from `CLIP_VOCAB_FOLDER`.

    Example:
        ```py
        >>> tokenizer = load_clip_tokenizer()
        >>> tokenizer.tokenize("a photo of sks dog")
        ['a</w>', 'photo</w>', 'of</w>', 'sks</w>', 'dog</w>']
        ```
    """
    return CLIPTokenizer.from_pretrained(CLIP_VOCAB_FOLDER)


def seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Run `build` with the torch RNG seeded to `seed`, leaving the caller's RNG state untouched; the module in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    return module.eval()


def save_tiny_pipeline(pipe, staging: Path, not_clip: Sequence[str] = ()) -> None:
    """Save a built-in tiny diffusers pipeline into `staging` as a diffusers folder.

    Quietly: transformers' "Writing model shards" bars show only under `--log-level DEBUG`. Each CLIP tokenizer folder
    (every `tokenizer*` component but those in `not_clip`) gets the vocabulary files beside its `tokenizer.json`, which
    is all transformers 5 writes, so that older readers of CLIP tokenizers (`vocab.json`, `merges.txt`) load it too.
    """
    with quiet_libraries("transformers", notices=False):
        pipe.save_pretrained(staging, safe_serialization=True)
    for name in pipe.components:
        if name.startswith("tokenizer") and name not in not_clip and (staging / name).is_dir():
            for file_name in ("vocab.json", "merges.txt"):
                (staging / name / file_name).write_bytes((CLIP_VOCAB_FOLDER / file_name).read_bytes())
