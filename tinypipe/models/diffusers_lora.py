"""The LoRA of a diffusion pipeline (SD 1/2, SDXL) in diffusers' file format: `pytorch_lora_weights.safetensors`.

The file is the one diffusers' training scripts write and `load_lora_weights` reads: the UNet's (and each text
encoder's) LoRA layers under diffusers' keys, with each adapter's `LoraConfig` in the safetensors metadata, so
plain diffusers loads it unchanged. tinypipe records one rank, one alpha and a list of target modules per LoRA;
`loaded_lora_settings` refuses a loaded file those cannot describe rather than save it partly.

```python
configs = lora_configs(pipeline.config, ("text_encoder", "text_encoder_2"))   # {"unet": ..., "text_encoder": ..., ...}
save_lora_file(pipeline.pipe, folder, configs)           # folder/pytorch_lora_weights.safetensors
load_lora_file(pipeline.pipe, folder / LORA_WEIGHTS_NAME, "tinypipe/tiny-sd")
```
"""

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..errors import ConfigError, RepoError
from ..families.lora_files import peft_lora_layers
from .diffusers_base import quiet_loading

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_NAME",
    "LORA_SETTINGS",
    "LORA_WEIGHTS_NAME",
    "TEXT_ENCODER_LORA_TARGETS",
    "UNET_LORA_TARGETS",
    "load_lora_file",
    "loaded_lora_settings",
    "lora_configs",
    "lora_state_dicts",
    "save_lora_file",
]

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "default"
UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
"""The default UNet LoRA targets: the attention projections."""
TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
"""The default text-encoder LoRA targets: the attention projections of CLIP's text model."""
LORA_SETTINGS = ("lora_rank", "lora_alpha", "lora_target_modules", "text_encoder_lora", "text_encoder_lora_target_modules")
"""The config keys of a `DiffusionPipeline` that describe its LoRA."""
# LoraConfig settings a tinypipe config does not record: a LoRA that uses one cannot be saved faithfully.
UNRECORDED_LORA_SETTINGS = ("use_dora", "use_rslora", "lora_bias", "layers_to_transform", "modules_to_save", "rank_pattern", "alpha_pattern")


def lora_configs(config: Mapping[str, Any], text_encoders: Sequence[str] = ("text_encoder",), denoiser: str = "unet") -> dict[str, Any]:
    """The peft `LoraConfig` of each model a pipeline config gives a LoRA: `{"unet": ..., "text_encoder": ...}`.

    Args:
        config: A `DiffusionPipeline` config (its `LORA_SETTINGS` keys are read).
        text_encoders: The pipeline's text encoders (its family's: SDXL has `text_encoder` and `text_encoder_2`).
        denoiser: The component the main LoRA goes on (the family's: `"unet"`, `"transformer"`).

    Returns:
        `{}` when `lora_rank` is None, else a config for the denoiser and, with `text_encoder_lora`, each text encoder.
    """
    from peft import LoraConfig

    if config["lora_rank"] is None:
        return {}
    rank, alpha = config["lora_rank"], config["lora_alpha"] or config["lora_rank"]
    configs = {denoiser: LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                  target_modules=list(config["lora_target_modules"]))}
    if config["text_encoder_lora"]:
        for name in text_encoders:
            configs[name] = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                       target_modules=list(config["text_encoder_lora_target_modules"]))
    return configs


def lora_state_dicts(pipe: Any, components: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The LoRA weights of `components` of a diffusers pipeline in diffusers' key format: `{"unet": {...}, ...}`.

    A transformer family's (FLUX.1, SD3) are peft's keys, which its pipeline class reads (converting them would drop
    SD3's attention LoRA). For a UNet family every text-encoder layer gets diffusers' `lora_linear_layer.down/up` keys, the MLP (`fc1`, `fc2`) too:
    diffusers converts only the attention projections, and reads a text-encoder part back only when it
    finds that form; and every UNet layer gets `lora.down/up` keys, its resnets and projections too (a part mixing
    `lora.down` and `lora_A` keys is read in the form of its first key, the rest dropped).
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    if "transformer" in components:  # FLUX.1 / SD3: peft's keys, as diffusers' transformer LoRA scripts save them
        return peft_lora_layers(pipe, components, ADAPTER_NAME)
    layers = {name: convert_state_dict_to_diffusers(get_peft_model_state_dict(getattr(pipe, name), adapter_name=ADAPTER_NAME))
              for name in components}
    for name in layers:
        # diffusers converts what is left in peft's form (`lora_A`), and reads a part in one form only, told by its first
        # key: a UNet LoRA on attention and other layers (conv1, proj_in, ...) must not mix `lora.down` and `lora_A`.
        down, up = ("lora_linear_layer.down", "lora_linear_layer.up") if name.startswith("text_encoder") else ("lora.down", "lora.up")
        layers[name] = {key.replace(".lora_A.", f".{down}.").replace(".lora_B.", f".{up}."): value
                        for key, value in layers[name].items()}
    return layers


def save_lora_file(pipe: Any, folder: Path, configs: Mapping[str, Any]) -> None:
    """Write `folder/pytorch_lora_weights.safetensors` with the pipeline class's own `save_lora_weights` (the configs in
    its metadata): `StableDiffusionPipeline.save_lora_weights(unet_lora_layers=, text_encoder_lora_layers=)`,
    `StableDiffusionXLPipeline.save_lora_weights(..., text_encoder_2_lora_layers=)`.

    Args:
        pipe: The diffusers pipeline whose components carry the adapter.
        folder: Where the file goes.
        configs: The `LoraConfig` of each component with a LoRA, as `lora_configs` gives them.
    """
    layers = lora_state_dicts(pipe, list(configs))
    parts = {}
    for name, config in configs.items():
        parts[f"{name}_lora_layers"] = layers[name]
        parts[f"{name}_lora_adapter_metadata"] = config.to_dict()
    type(pipe).save_lora_weights(folder, weight_name=LORA_WEIGHTS_NAME, safe_serialization=True, **parts)


def load_lora_file(pipe: Any, weights: Path, base_model: str) -> None:
    """Load a diffusers LoRA file as the adapter with diffusers' own `load_lora_weights` (it reads the metadata).

    Raises:
        RepoError: The file does not fit the base model (the message names the file and the reason).
    """
    try:
        with quiet_loading(), _one_key_form(weights) as readable:
            pipe.load_lora_weights(readable.parent, weight_name=readable.name, adapter_name=ADAPTER_NAME)
    except (ValueError, RuntimeError, KeyError) as error:
        reason = " ".join(line.strip() for line in str(error).splitlines()[:2])  # torch's first line only says "Error(s) in ..."
        raise RepoError(f"{weights} does not fit the base model {base_model!r}: {reason}") from error


@contextlib.contextmanager
def _one_key_form(weights: Path) -> Iterator[Path]:
    """`weights`, or a temporary copy of it whose UNet keys are all in diffusers' `lora.down/up` form.

    tinypipe saved a UNet LoRA on attention and other layers (until December 2026) with `lora.down` keys for the attention
    projections and peft's `lora_A` keys for the rest. diffusers reads a part in the form of its first key only, so
    such a file would load without its attention LoRA: the copy gives every layer one form (metadata kept).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
        unet = [key for key in keys if key.startswith("unet.")]
        if not (any(".lora.down." in key for key in unet) and any(".lora_A." in key for key in unet)):
            tensors = None
        else:
            tensors = {key.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up.") if key.startswith("unet.")
                       else key: handle.get_tensor(key) for key in keys}
    if tensors is None:
        yield weights
        return
    with tempfile.TemporaryDirectory(prefix="tinypipe-lora-") as folder:
        copy = Path(folder) / weights.name
        save_file(tensors, str(copy), metadata=metadata)
        yield copy


def loaded_lora_settings(pipe: Any, weights: Path, text_encoders: Sequence[str] = ("text_encoder",),
                         denoiser: str = "unet") -> dict[str, Any]:
    """The `LORA_SETTINGS` of the LoRA diffusers just loaded from `weights`; refuse one a config cannot describe.

    Whatever a config records is what a reload builds (`lora_configs`), so a LoRA whose layers the config
    could not name (per-layer ranks, DoRA, a target pattern, ...) is refused rather than saved partly. A
    text-encoder part none of whose entries matched a layer is taken off again. With several text encoders (SDXL), a
    config records one LoRA for all of them: a file with a LoRA on some but not all is refused.

    Raises:
        ConfigError: The LoRA has no UNet part, or uses settings a tinypipe config does not record.
    """
    loaded = {name: getattr(pipe, name).peft_config[ADAPTER_NAME] for name in (denoiser, *text_encoders)
              if ADAPTER_NAME in (getattr(getattr(pipe, name), "peft_config", None) or {})}
    text_encoder_configs = [loaded[name] for name in text_encoders if name in loaded]
    unet = loaded.get(denoiser)  # the denoiser's LoRA (named for SD's UNet)
    problem = None
    if unet is None:
        problem = "it holds no UNet LoRA"
    elif any(isinstance(config.target_modules, str) for config in loaded.values()):
        problem = "its target modules are a pattern, not a list of module names"
    elif any((config.r, config.lora_alpha) != (unet.r, unet.lora_alpha) for config in text_encoder_configs):
        problem = "its text-encoder LoRA has another rank or alpha than its UNet LoRA"
    elif text_encoder_configs and len(text_encoder_configs) != len(text_encoders):
        problem = f"it has a LoRA on some of the text encoders {list(text_encoders)} but not all"
    elif len({tuple(sorted(config.target_modules)) for config in text_encoder_configs}) > 1:
        problem = "its text encoders' LoRAs wrap different modules"
    else:
        unrecorded = sorted({f"{name}.{setting}" for name, config in loaded.items() for setting in UNRECORDED_LORA_SETTINGS
                             if getattr(config, setting, None) not in (None, False, {}, [], "none")})
        if unrecorded:
            problem = f"it uses settings a tinypipe config does not record ({', '.join(unrecorded)}; e.g. per-layer ranks or alphas)"
    if problem is not None:
        raise ConfigError(f"{weights} cannot be used as this pipeline's LoRA: {problem}. Use a LoRA saved by tinypipe "
                          "or by diffusers' training scripts.")
    targets = _wrapped_targets(pipe, denoiser, unet.target_modules, weights)
    text_encoder = text_encoder_configs[0] if text_encoder_configs else None
    text_encoder_targets = (set.union(*(_wrapped_targets(pipe, name, loaded[name].target_modules, weights) for name in text_encoders))
                            if text_encoder is not None else set(TEXT_ENCODER_LORA_TARGETS))
    if not targets:
        raise ConfigError(f"{weights} cannot be used as this pipeline's LoRA: none of its UNet entries matches a layer of "
                          "the UNet. Use a LoRA saved by tinypipe or by diffusers' training scripts.")
    if text_encoder is not None and not text_encoder_targets:  # nothing of it was applied: no text-encoder LoRA
        for name in text_encoders:
            getattr(pipe, name).delete_adapter(ADAPTER_NAME)
        text_encoder, text_encoder_targets = None, set(TEXT_ENCODER_LORA_TARGETS)
    return dict(lora_rank=unet.r, lora_alpha=unet.lora_alpha, text_encoder_lora=text_encoder is not None,
                lora_target_modules=UNET_LORA_TARGETS if targets == set(UNET_LORA_TARGETS) else tuple(sorted(targets)),
                text_encoder_lora_target_modules=(TEXT_ENCODER_LORA_TARGETS if text_encoder_targets == set(TEXT_ENCODER_LORA_TARGETS)
                                                  else tuple(sorted(text_encoder_targets))))


def _wrapped_targets(pipe: Any, component: str, targets: Sequence[str], weights: Path) -> set[str]:
    """The target names of a loaded LoRA that wrap a layer of `component`; the others are logged as not loaded.

    diffusers' conversion of some non-diffusers files (kohya) yields names that match no layer, so those
    weights are not applied; recording only the layers that carry the LoRA keeps the saved repo what ran.
    """
    wrapped = [name for name, module in getattr(pipe, component).named_modules()
               if ADAPTER_NAME in (getattr(module, "lora_A", None) or {})]
    kept = {target for target in targets if any(name == target or name.endswith(f".{target}") for name in wrapped)}
    dropped = sorted(set(targets) - kept)
    if dropped:
        logger.warning("diffusers did not apply the %s LoRA entries %s of %s (they match no layer); the pipeline and its "
                       "saved repo hold the LoRA without them, as plain diffusers' load_lora_weights does.",
                       component, dropped, weights)
    return kept
