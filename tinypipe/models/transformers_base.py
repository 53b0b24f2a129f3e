"""Loading a transformers causal language model and its tokenizer as a base model, optionally quantized.

```python
model, tokenizer = load_base_model("tinypipe/tiny-llama")    # or a hub id (+ revision) / a local transformers folder
```

A base model named by a built-in name loads from that model's folder; `quantization="8bit"` / `"4bit"` loads
it through bitsandbytes (CUDA only), refused with the fix where bitsandbytes cannot run.
"""

from pathlib import Path
from typing import Optional

import torch

from ..builtin.tiny_llama import is_builtin_lm
from ..errors import ConfigError
from ..library_output import quiet_libraries
from .base_models import base_model_load_error, base_model_source

__all__ = ["QUANTIZATIONS", "load_base_model"]

QUANTIZATIONS = (None, "8bit", "4bit")


def _quantization_config(quantization: Optional[str], torch_dtype: torch.dtype):
    """transformers' `BitsAndBytesConfig` for `"8bit"`/`"4bit"`, or None; a clear error where bitsandbytes cannot run."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization={quantization!r} is not supported; use None, '8bit' or '4bit'.")
    if quantization is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"quantization={quantization!r} loads the base model through bitsandbytes, which is not installed. "
                          "Run `pip install bitsandbytes` on a machine with a CUDA GPU, or set quantization=None.") from None
    if not torch.cuda.is_available():
        raise ConfigError(f"quantization={quantization!r} needs a CUDA GPU (bitsandbytes' 8/4-bit layers run on CUDA only) "
                          "and none is visible. Set quantization=None to train in full precision.")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype)


def load_base_model(base_model: str, revision: Optional[str] = None, torch_dtype: torch.dtype = torch.float32,
                    quantization: Optional[str] = None, token: Optional[str] = None):
    """Load a transformers causal LM and its tokenizer: a built-in name, a local transformers folder, or a hub id.

    A tokenizer without a pad token gets its end-of-sequence token as pad token (tinypipe finds
    padding from the sequence lengths, so `<eos>` is still learned).

    Returns:
        `(model, tokenizer)`.

    Raises:
        ConfigError: A local folder that is not a transformers model, a hub id that cannot be had, or a
            quantization bitsandbytes cannot do here.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantization_config = _quantization_config(quantization, torch_dtype)
    source = base_model_source(base_model, "causal-lm")
    hub_revision = revision if not isinstance(source, Path) else None
    try:
        with quiet_libraries("transformers"):  # --log-level DEBUG shows the loading bars
            tokenizer = AutoTokenizer.from_pretrained(source, revision=hub_revision, token=token)
            model = AutoModelForCausalLM.from_pretrained(
                source, revision=hub_revision, token=token, dtype=torch_dtype, quantization_config=quantization_config,
                **({"device_map": {"": 0}} if quantization_config is not None else {}),
            )
    except OSError as error:
        raise base_model_load_error(base_model, revision, error, "causal-lm") from error
    if is_builtin_lm(base_model):
        model.name_or_path = base_model  # what peft records as the adapter's base model
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"The tokenizer of {base_model!r} has no end-of-sequence token, so the model could never learn "
                          "where a response ends. Use a tokenizer with an eos_token.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
