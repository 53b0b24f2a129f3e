"""The CLIP tokenizer shipped with tinypipe, shared by the built-in diffusion models (`tiny_sd`, `tiny_flux`).

Its vocabulary is in `tinypipe/builtin/vocab/clip/` (see `scripts/make_clip_vocab.py`): common prompt words and the
identifier `sks` are one token each. The built-ins are built with the torch RNG seeded by `seeded`.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import CLIPTokenizer

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
