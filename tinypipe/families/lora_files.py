"""A family's LoRA file, written and read with its own diffusers pipeline class.

diffusers' pipeline classes name the parts of a LoRA file by component: `FluxPipeline.save_lora_weights(folder,
transformer_lora_layers=..., text_encoder_lora_layers=...)`, `StableDiffusionXLPipeline.save_lora_weights(folder,
unet_lora_layers=..., text_encoder_lora_layers=..., text_encoder_2_lora_layers=...)`, each with a
`<component>_lora_adapter_metadata` (the peft `LoraConfig`, which `load_lora_weights` reads back). These helpers take
`{component: layers}` and pass them under those names, so one save path serves every family. They import nothing of
tinypipe's models.

```python
layers = peft_lora_layers(pipe, ["transformer", "text_encoder"])
save_lora_weights(family, folder, layers, {"transformer": config.to_dict(), "text_encoder": ...})
parts = read_lora_state_dict(family, folder / LORA_WEIGHTS_NAME)   # {"transformer": {...}, "text_encoder": {...}}
```
"""

import inspect
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..errors import ConfigError
from .base import ModelFamily

__all__ = ["LORA_WEIGHTS_NAME", "lora_components", "peft_lora_layers", "save_lora_weights", "read_lora_state_dict"]

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
"""The file name diffusers' `save_lora_weights` writes and `load_lora_weights` looks for."""


def lora_components(family: ModelFamily) -> tuple[str, ...]:
    """The components whose LoRA the family's pipeline class writes and reads (`("transformer", "text_encoder")`)."""
    parameters = inspect.signature(family.pipeline_class.save_lora_weights).parameters
    return tuple(name[: -len("_lora_layers")] for name in parameters if name.endswith("_lora_layers"))


def peft_lora_layers(pipe: Any, components: Sequence[str], adapter_name: str = "default") -> dict[str, dict[str, torch.Tensor]]:
    """The LoRA weights of each of `components` of a pipeline, in peft's key format, as diffusers' FLUX script saves them.

    Args:
        pipe: The diffusers pipeline whose components carry the adapter (added with peft / `add_adapter`).
        components: Component names, e.g. `["transformer", "text_encoder"]`.
        adapter_name: The adapter to take.

    Returns:
        `{component: {key: tensor}}`, keys relative to the component (`transformer_blocks.0.attn.to_q.lora_A.weight`).
    """
    from peft.utils import get_peft_model_state_dict

    return {name: get_peft_model_state_dict(getattr(pipe, name), adapter_name=adapter_name) for name in components}


def save_lora_weights(family: ModelFamily, folder: Path, layers: Mapping[str, Mapping[str, torch.Tensor]],
                      adapter_metadata: Optional[Mapping[str, Mapping[str, Any]]] = None,
                      weight_name: str = LORA_WEIGHTS_NAME) -> Path:
    """Write `folder/weight_name` with the family pipeline class's `save_lora_weights` (safetensors).

    Args:
        family: The model family (its `pipeline_class` writes the file).
        folder: Where the file goes (created if missing).
        layers: `{component: state dict}` of each component with a LoRA, e.g. from `peft_lora_layers`.
        adapter_metadata: `{component: LoraConfig.to_dict()}`; stored in the file so `load_lora_weights` rebuilds
            the same rank, alpha and targets (without `base_model_name_or_path`, which may be a local path).
        weight_name: The file name.

    Returns:
        The file written.

    Raises:
        ConfigError: A component the family's LoRA format has no place for (FLUX: `text_encoder_2`, the T5 encoder).
    """
    accepted = lora_components(family)
    unknown = sorted(set(layers) - set(accepted))
    if unknown:
        raise ConfigError(f"A {family.title} LoRA file has parts for {', '.join(accepted)} only, not {', '.join(unknown)} "
                          f"(diffusers' {family.pipeline_class_names[0]}.load_lora_weights would not read them). Train a "
                          f"LoRA on {' / '.join(accepted)} only.")
    metadata = adapter_metadata or {}
    arguments = {f"{name}_lora_layers": dict(state) for name, state in layers.items()}
    # peft fills in `base_model_name_or_path` from the model's folder: a local path, never published.
    arguments.update({f"{name}_lora_adapter_metadata": {**metadata[name], "base_model_name_or_path": None}
                      for name in layers if name in metadata})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    family.pipeline_class.save_lora_weights(folder, weight_name=weight_name, safe_serialization=True, **arguments)
    return folder / weight_name


def read_lora_state_dict(family: ModelFamily, weights: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A LoRA file as the family's pipeline class reads it (`lora_state_dict`, with its format conversions), per component.

    Args:
        family: The model family.
        weights: A safetensors LoRA file (diffusers', or another trainer's that diffusers converts).

    Returns:
        `{component: {key: tensor}}` with keys relative to the component.

    Raises:
        ConfigError: The file cannot be read as a LoRA of this family.
    """
    weights = Path(weights)
    try:
        state = family.pipeline_class.lora_state_dict(str(weights.parent), weight_name=weights.name)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{weights} cannot be read as a {family.title} LoRA: {reason}. Give a LoRA file saved by "
                          f"tinypipe or diffusers' training scripts for {family.title}.") from error
    if isinstance(state, tuple):  # some pipeline classes return (state, alphas)
        state = state[0]
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        parts.setdefault(component, {})[rest] = value
    return parts
