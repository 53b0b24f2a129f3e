"""A causal LM's LoRA adapter in PEFT's folder format: `adapter_config.json` + `adapter_model.safetensors`.

These are the files `peft.PeftModel.save_pretrained` writes and `PeftModel.from_pretrained` reads, so an adapter
tinypipe saves loads in plain peft, and one peft saved loads here. Reading checks both files before anything
changes the model; `adapter_mismatch` says how a weights file does not fill the adapter it should.

```python
config_path, settings, lora = read_adapter_config(folder)     # the dict as saved, and peft's LoraConfig of it
state = read_adapter_weights(folder)
write_adapter_files(folder, settings, state)
```
"""

from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..errors import RepoError
from ..files import read_json

__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "adapter_mismatch", "read_adapter_config", "read_adapter_weights",
           "write_adapter_files"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def _check_present(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise RepoError(f"{path} is {'empty' if path.is_file() else 'missing'}; a PEFT adapter folder holds "
                        f"{ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}. Save the adapter again.")


def read_adapter_config(folder: Path) -> tuple[Path, dict[str, Any], Any]:
    """Read and check a PEFT adapter folder's `adapter_config.json` (the weights file must be there too).

    Returns:
        `(config_path, settings, lora_config)`: the file, its settings as saved, and peft's `LoraConfig` of them.

    Raises:
        RepoError: A file is missing or empty, or the config is not a valid LoRA config (another PEFT method
            included).
    """
    from peft import LoraConfig

    config_path = folder / ADAPTER_CONFIG_NAME
    for path in (config_path, folder / ADAPTER_WEIGHTS_NAME):
        _check_present(path)
    settings = read_json(config_path)
    if not isinstance(settings, dict):
        raise RepoError(f"{config_path} is not a valid LoRA adapter config: it holds a JSON {type(settings).__name__}, not an object.")
    try:
        lora = LoraConfig(**{key: value for key, value in settings.items() if key in LoraConfig.__dataclass_fields__})
    except (ValueError, TypeError) as error:
        raise RepoError(f"{config_path} is not a valid LoRA adapter config: {error}") from error
    if settings.get("peft_type", "LORA") != "LORA":
        raise RepoError(f"{config_path} describes a {settings['peft_type']} adapter; tinypipe loads LoRA adapters only.")
    return config_path, settings, lora


def read_adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a PEFT adapter folder's `adapter_model.safetensors`, by peft's keys.

    Raises:
        RepoError: The file is missing, empty, truncated or corrupt.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path = folder / ADAPTER_WEIGHTS_NAME
    _check_present(weights_path)
    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise RepoError(f"{weights_path} is not a valid safetensors file (truncated or corrupt: {error}). Save it again.") from error


def adapter_mismatch(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """How `state` fails to fill an adapter of the `expected` key shapes (missing, unexpected, wrong-shape keys), or None."""
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(key for key in expected.keys() & state.keys() if tuple(state[key].shape) != tuple(expected[key]))
    if not (missing or unexpected or mismatched):
        return None
    return "; ".join(f"{label}: {keys[:2]}{' ...' if len(keys) > 2 else ''} ({len(keys)})"
                     for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)) if keys)


def write_adapter_files(folder: Path, settings: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
    """Write `adapter_config.json` (sorted keys, sets as sorted lists) and `adapter_model.safetensors`, as peft does."""
    import json

    from safetensors.torch import save_file

    settings = {key: sorted(value) if isinstance(value, set) else value for key, value in settings.items()}
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in state.items()}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
