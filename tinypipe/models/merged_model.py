"""A merged causal LM as a plain transformers folder: written atomically, never over the user's files.

```python
save_merged_model(merged, tokenizer, "my-lm-merged")    # merged: a PreTrainedModel with the LoRA merged in
model = AutoModelForCausalLM.from_pretrained("my-lm-merged")      # no peft, no tinypipe needed
```

`CausalLMPipeline.merge` and `models.merge.merge_repo` write through here. The folder holds what transformers'
`save_pretrained` writes for the merged model (`config.json`, `generation_config.json`, `model.safetensors`) and for
the tokenizer (its files and the chat template), plus `MERGE_MARKER`, which records the merge and the files it wrote. The folder is written beside `output` and moved into
place when complete. An existing non-empty `output` is replaced only when it is an earlier merge's output whose files
are all still as that merge wrote them; anything else there is the user's and is never overwritten.
"""

from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..config.filelist import sha256_file
from ..errors import ConfigError
from ..files import atomic_folder, read_marker, write_marker
from ..library_output import quiet_libraries
from ..version import __version__

__all__ = ["MERGE_DTYPES", "MERGE_MARKER", "check_merge_output", "resolve_merge_dtype", "save_merged_model"]

MERGE_MARKER = "tinypipe_merge.json"
"""The file in a merged folder that records the merge (tinypipe version, dtype, adapter settings) and its files."""

MERGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a merged model can be written in, by name."""


def resolve_merge_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """The torch dtype of `"float32"`, `"bfloat16"`, `"float16"` (or one of those dtypes); None stays None.

    Raises:
        ConfigError: Any other value, naming the choices.
    """
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in MERGE_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in MERGE_DTYPES:
        return MERGE_DTYPES[dtype]
    raise ConfigError(f"dtype={dtype!r} is not a dtype a merged model is written in; use one of {list(MERGE_DTYPES)} "
                      "(or None to keep the model's own).")


def check_merge_output(output: Path, source: Optional[Path] = None) -> None:
    """Refuse an `output` that holds anything but an unchanged earlier merge output, or that lies inside `source`.

    Raises:
        ConfigError: Naming the folder, the files that are not the earlier merge's, and the fix.
    """
    if source is not None:
        resolved, repo = output.resolve(), source.resolve()
        if resolved == repo or repo in resolved.parents:
            raise ConfigError(f"OUT {output} lies inside the repo {source}; writing there would change the repo. "
                              "Choose a folder outside it.")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"OUT {output} is a file, not a folder; choose a new folder for the merged model.")
    if not output.is_dir() or not any(output.iterdir()):
        return
    record = read_marker(output, MERGE_MARKER)
    if record is None or not isinstance(record.get("files"), dict):
        raise ConfigError(f"OUT {output} already exists and holds files that tinypipe merge did not write (no {MERGE_MARKER}); "
                          "they are never overwritten. Choose a new or empty folder, or remove it yourself.")
    written = record["files"]
    found = sorted(path.relative_to(output).as_posix() for path in output.rglob("*") if path.is_file() or path.is_symlink())
    changed = [name for name in found if name != MERGE_MARKER and (
        name not in written or (output / name).is_symlink() or sha256_file(output / name) != written[name])]
    if changed:
        raise ConfigError(f"OUT {output} is an earlier merge's output, but {changed[:3]}{' ...' if len(changed) > 3 else ''} "
                          "were added or changed since; they are never overwritten. Move them away or choose another folder.")


def _stop_at_the_tokenizers_eos(model: torch.nn.Module, tokenizer: Any) -> None:
    """Make the generation config stop at the tokenizer's end-of-sequence token too (a chat template's end-of-turn
    token that training added), so `model.generate` in plain transformers ends a reply where tinypipe does."""
    generation_config, eos = getattr(model, "generation_config", None), getattr(tokenizer, "eos_token_id", None)
    if generation_config is None or eos is None:
        return
    configured = generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    if eos not in configured:
        generation_config.eos_token_id = configured + [eos] if configured else eos


def save_merged_model(model: torch.nn.Module, tokenizer: Any, output: Union[str, Path], *, record: Optional[dict] = None,
                      source: Optional[Path] = None) -> Path:
    """Write a merged (plain transformers) model and its tokenizer as a transformers folder, atomically.

    Args:
        model: The merged `transformers.PreTrainedModel`, in the dtype to write; its generation config gets the
            tokenizer's end-of-sequence token among its stop tokens.
        tokenizer: Its tokenizer (its files, special tokens and chat template are written).
        output: The folder to write: new, empty, or an unchanged earlier merge output.
        record: Facts about the merge for `MERGE_MARKER` (the adapter's settings); no local paths.
        source: The repo merged from, which `output` must not lie inside.

    Returns:
        The folder.

    Raises:
        ConfigError: An `output` that would overwrite files merge did not write (see `check_merge_output`).
    """
    output = Path(output)
    check_merge_output(output, source)
    _stop_at_the_tokenizers_eos(model, tokenizer)
    output.parent.mkdir(parents=True, exist_ok=True)
    with quiet_libraries("transformers", notices=False):  # --log-level DEBUG shows the writing bars
        with atomic_folder(output) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            files = {path.relative_to(staging).as_posix(): sha256_file(path) for path in sorted(staging.rglob("*")) if path.is_file()}
            write_marker(staging, MERGE_MARKER, {**(record or {}), "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                                                 "files": files, "tinypipe_version": __version__})
    return output
