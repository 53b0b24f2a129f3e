"""A cache of tokenized training data, so that a second run on the same data starts training at once.

```python
tokenized, digest = cached_tokenization(data, tokenizer, template, max_length=512, train_on_inputs=False)
```

The tokens of a data set are kept under `tinypipe_home() / "tokenized"`, as NumPy `.npy` arrays (read with
`allow_pickle=False`, never unpickled), in a folder named by the sha256 of everything they depend on: the examples'
content (`TrainingData.digest`), the tokenizer (its serialised vocabulary, special tokens and chat template), the
template, `max_length` and `train_on_inputs`. Any change to one of them is another folder; a folder is written into
a temporary sibling and renamed into place (`tinypipe.files.cached_folder`), so a crash never leaves one half-written.
"""

import hashlib
import json
import logging
import tempfile
from itertools import chain
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ..config.filelist import sha256_file
from ..files import cached_folder
from .chat_formats import TrainingData
from .chat_templates import ChatTemplate
from .instructions import IGNORE_INDEX, TokenizedExample
from .tokenization import TokenizedData, tokenize_training_data

logger = logging.getLogger(__name__)

__all__ = ["CACHE_AREA", "TokenizedExamples", "cached_tokenization", "tokenizer_digest", "tokens_digest"]

CACHE_AREA = "tokenized"
"""The folder under the tinypipe home that holds the cached tokens."""

_FORMAT_VERSION = 3  # bumped when the arrays or what the tokens mean change
_ARRAYS = ("input_ids", "labels", "lengths", "prompt_lengths", "turns_cut", "flags")


def tokenizer_digest(tokenizer: Any) -> str:
    """The sha256 of a tokenizer's files as `save_pretrained` writes them (vocabulary, special tokens, chat template)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    with tempfile.TemporaryDirectory(prefix="tinypipe-tokenizer-") as folder:
        for path in sorted(tokenizer.save_pretrained(folder)):
            path = Path(path)
            if path.is_file():
                digest.update(f"{path.name} {sha256_file(path)}\n".encode())
    digest.update(json.dumps([tokenizer.padding_side, tokenizer.eos_token, tokenizer.bos_token]).encode())
    return digest.hexdigest()


def tokens_digest(examples: list[TokenizedExample]) -> str:
    """The sha256 of tokenized examples: their ids and labels, example by example (a run's data fingerprint)."""
    return _digest_arrays(_to_arrays(examples))


def _to_arrays(examples: list[TokenizedExample]) -> dict[str, np.ndarray]:
    total = sum(len(example.input_ids) for example in examples)
    return {
        "input_ids": np.fromiter(chain.from_iterable(example.input_ids for example in examples), dtype=np.int32, count=total),
        "labels": np.fromiter(chain.from_iterable(example.labels for example in examples), dtype=np.int32, count=total),
        "lengths": np.array([len(example.input_ids) for example in examples], dtype=np.int64),
        "prompt_lengths": np.array([example.prompt_length for example in examples], dtype=np.int64),
        "turns_cut": np.array([example.turns_cut for example in examples], dtype=np.int64),
        "flags": np.array([[example.truncated, example.cut_inside_turn] for example in examples], dtype=bool).reshape(-1, 2),
    }


def _digest_arrays(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in ("lengths", "input_ids", "labels"):
        digest.update(np.ascontiguousarray(arrays[name], dtype="<i4").tobytes())
    return digest.hexdigest()


class TokenizedExamples(Sequence):
    """Tokenized examples held as flat NumPy arrays; `examples[i]` is a `TokenizedExample` built when it is read.

    A 52k-example data set reads back from the cache in a fraction of a second, and the counts a run needs of all
    of them (`lengths`, `learned_counts`, `count_learning`) are computed on the arrays.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.starts = np.concatenate([[0], np.cumsum(arrays["lengths"])]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.arrays["lengths"])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        start, end = int(self.starts[index]), int(self.starts[index + 1])
        truncated, inside = self.arrays["flags"][index].tolist()
        return TokenizedExample(self.arrays["input_ids"][start:end].tolist(), self.arrays["labels"][start:end].tolist(),
                                int(self.arrays["prompt_lengths"][index]), truncated, int(self.arrays["turns_cut"][index]), inside)

    def lengths(self) -> list[int]:
        """The token count of every example."""
        return self.arrays["lengths"].tolist()

    def learned_counts(self) -> np.ndarray:
        """How many tokens of each example are learned (its first token never is: nothing predicts it)."""
        learned = self.arrays["labels"] != IGNORE_INDEX
        learned[self.starts[:-1][self.arrays["lengths"] > 0]] = False
        return np.add.reduceat(learned, self.starts[:-1]) * (self.arrays["lengths"] > 0) if len(self) else np.zeros(0, int)

    def count_learning(self, token_ids: set[int]) -> int:
        """How many examples learn at least one of `token_ids`."""
        hits = np.isin(self.arrays["labels"], list(token_ids))
        return int(np.count_nonzero(np.add.reduceat(hits, self.starts[:-1]) * (self.arrays["lengths"] > 0))) if len(self) else 0


def cached_tokenization(data: TrainingData, tokenizer: Any, template: Optional[ChatTemplate], max_length: int,
                        train_on_inputs: bool = False, show_progress: Optional[bool] = None) -> tuple[TokenizedData, str]:
    """`tokenize_training_data`, read from the cache when the same data was tokenized the same way before.

    Args:
        data, tokenizer, template, max_length, train_on_inputs, show_progress: As `tokenize_training_data` takes them.

    Returns:
        `(the tokenized data, the sha256 of its tokens)`.
    """
    fingerprint = {
        "version": _FORMAT_VERSION,
        "data": data.digest(),
        "format": data.format,
        "tokenizer": tokenizer_digest(tokenizer),
        "template": template.source if template is not None else None,
        "template_name": template.name if template is not None else None,
        "max_length": max_length,
        "train_on_inputs": bool(train_on_inputs),
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    built: list[TokenizedData] = []

    def build(folder: Path) -> None:
        tokenized = tokenize_training_data(data, tokenizer, template, max_length, train_on_inputs, show_progress)
        arrays = _to_arrays(tokenized.examples)
        for name in _ARRAYS:
            np.save(folder / f"{name}.npy", arrays[name], allow_pickle=False)
        np.save(folder / "sources.npy", np.array(tokenized.sources, dtype=str), allow_pickle=False)
        (folder / "tokens_sha256.txt").write_text(_digest_arrays(arrays) + "\n", encoding="ascii")
        built.append(tokenized)

    folder = cached_folder(key, fingerprint, build, area=CACHE_AREA)
    digest = (folder / "tokens_sha256.txt").read_text(encoding="ascii").strip()
    if not built:
        logger.info("Tokens of %s read from the cache (%s).", data.name, folder)
    arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
    truncated = arrays["flags"][:, 0]
    sources = np.load(folder / "sources.npy", allow_pickle=False).tolist()
    return TokenizedData(TokenizedExamples(arrays), sources, int(truncated.sum()), int(arrays["turns_cut"][truncated].sum()),
                         int(arrays["flags"][:, 1][truncated].sum()),
                         [sources[index] for index in np.flatnonzero(truncated)[:3].tolist()]), digest
