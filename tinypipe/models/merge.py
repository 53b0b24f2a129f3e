"""Merging a causal-LM repo's LoRA into its base model: `merge_repo`, what `tinypipe merge REPO OUT` runs.

```python
from tinypipe.models.merge import merge_repo

merge_repo("my-lm", "my-lm-merged", dtype="bfloat16")
model = AutoModelForCausalLM.from_pretrained("my-lm-merged")      # no peft, no tinypipe needed
```

The output is written by `models.merged_model.save_merged_model`: the merged model's and the tokenizer's transformers
files and `MERGE_MARKER`, atomically; an existing non-empty output is replaced only when it is an earlier merge's
unchanged output.
"""

import logging
from pathlib import Path
from typing import Optional, Union

import torch

from ..config import ConfigMixin
from ..config.repo import load_repo
from ..errors import ConfigError
from .causal_lm import CausalLMPipeline
from .merged_model import MERGE_MARKER, check_merge_output, resolve_merge_dtype, save_merged_model

logger = logging.getLogger(__name__)

__all__ = ["MERGE_MARKER", "merge_repo"]


def merge_repo(repo: Union[str, Path, CausalLMPipeline], output: Union[str, Path], dtype: Union[str, torch.dtype, None] = None, *,
               token: Optional[str] = None, trust_remote_code: bool = False) -> Path:
    """Merge a causal-LM repo's LoRA into its base model and write a plain transformers folder.

    `AutoModelForCausalLM.from_pretrained(output)` then gives the fine-tuned model's logits (within `dtype`'s
    precision) and `AutoTokenizer.from_pretrained(output)` its tokenizer with the chat template; no peft needed.

    Args:
        repo: A causal-LM repo folder written by tinypipe, or a loaded `CausalLMPipeline`. Only read.
        output: The folder to write: new, empty, or the unchanged output of an earlier merge (which is replaced).
        dtype: `"float32"`, `"bfloat16"` or `"float16"`; None keeps the dtype the pipeline runs in.
        token: Hub token for a private base model (never written anywhere).
        trust_remote_code: Allow running code from `repo/model_code/`.

    Returns:
        The output folder.

    Raises:
        ConfigError: `repo` holds no causal LM, its base model is quantized, `dtype` is unknown, or `output` lies inside
            `repo` or holds files merge did not write (or changed since).
        RepoError: The repo is incomplete or altered.

    Example:
    ```python
    merge_repo("my-lm", "my-lm-merged", dtype="bfloat16")
    ```
    """
    # 1. Check the settings and the output before loading anything.
    output = Path(output)
    source = None if isinstance(repo, CausalLMPipeline) else Path(repo)
    resolve_merge_dtype(dtype)
    check_merge_output(output, source)

    # 2. Load the pipeline and merge its adapter into a copy of the base model.
    if source is None:
        pipeline = repo
    else:
        pipeline = load_repo(source, ConfigMixin, trust_remote_code=trust_remote_code,
                             overrides={"token": token} if token else {})
        if not isinstance(pipeline, CausalLMPipeline):
            raise ConfigError(f"{source} holds a {type(pipeline).__name__}; tinypipe merge merges the LoRA of a causal-LM repo "
                              "(one written by train-lm or CausalLMPipeline.save_pretrained).")
    if not pipeline.has_lora:
        logger.warning("%s has no LoRA adapter; the base model is written as it is.", source or "The pipeline")
    merged = pipeline.merge(dtype=dtype)

    # 3. Write it, with the tokenizer, beside `output`, and move it into place.
    config = pipeline.config
    record = {"base_model": config["base_model"] if not Path(config["base_model"]).exists() else Path(config["base_model"]).name,
              "lora": {key: config[key] for key in ("lora_rank", "lora_alpha", "lora_target_modules")} if pipeline.has_lora else None}
    save_merged_model(merged, pipeline.tokenizer, output, record=record, source=source)
    logger.info("Merged %s into %s.", source or "the pipeline's LoRA", output)
    return output
