"""A diffusers LoRA file rewritten in kohya's format: the file A1111, ComfyUI, Forge, InvokeAI and kohya's sd-scripts read.

```python
from tinypipe.models.kohya_export import kohya_lora

tensors, metadata = kohya_lora(Path("out/model/pytorch_lora_weights.safetensors"), family="sd")
```

kohya's format names each LoRA after the module it wraps, as kohya's `networks.lora` does: the component's prefix
(`lora_unet`, `lora_te` for Stable Diffusion 1/2's one text encoder, `lora_te1`/`lora_te2` for two), then the
module's path in kohya's model with `.` written `_`, then `.lora_down.weight`, `.lora_up.weight` and `.alpha`
(the LoRA is scaled by `alpha / rank`, as peft's `lora_alpha / r`). The keys come from diffusers' and peft's own
conversions (`convert_all_state_dict_to_peft`, then `convert_state_dict_to_kohya`); what this module adds is what
those leave to the caller: the text encoder's module root in kohya's (transformers 4) CLIP model (`text_model.`),
the single-text-encoder prefix `lora_te`, the recorded alpha (diffusers writes the rank), and kohya's `ss_*` and
`modelspec.*` metadata.

A family is exported only where its kohya layout is known (`KOHYA_LAYOUTS`): Stable Diffusion 1/2 (kohya trains
them on diffusers' UNet, so the UNet's module paths are diffusers') and SDXL (prefixes `lora_te1` for CLIP ViT-L,
`lora_te2` for OpenCLIP ViT-bigG, and the UNet's modules named as in Stability's sgm UNet that kohya trains SDXL
on: `tinypipe.models.kohya_sdxl_names`, derived from the base UNet's config). Every LoRA tensor of the file reaches
the kohya file or the export is refused naming the module it cannot place. FLUX.1 is written for ComfyUI by
`tinypipe.models.comfyui_export`; other families (SD3) in the diffusers format only.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError, RepoError
from ..files import read_json
from ..version import __version__

__all__ = ["KOHYA_LAYOUTS", "KohyaLayout", "base_model_config", "kohya_lora", "kohya_metadata", "lora_components", "lora_settings",
           "native_resolution", "peft_keys", "read_lora_file"]

_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where diffusers' save_lora_weights records each LoraConfig


@dataclass(frozen=True)
class KohyaLayout:
    """How one model family's LoRA is named in kohya's format.

    Args:
        prefixes: The kohya key prefix of each LoRA'd component (`{"unet": "lora_unet", "text_encoder": "lora_te"}`).
        module_roots: The path, in kohya's model, of the module a component's diffusers module paths start from
            (kohya's CLIP text model is transformers 4's `CLIPTextModel`, whose layers live under `text_model.`).
        architecture: The `modelspec.architecture` of a LoRA of this family (SD 1/2: without the version suffix).
        base_model_version: kohya's `ss_base_model_version` (`"sdxl_base_v1-0"`); None for SD 1/2, whose version
            (`sd_v1` / `sd_v2`) is read off the LoRA's cross-attention width.
        sgm_unet: The UNet's modules are named as in Stability's sgm UNet (`input_blocks.4.1...`), as kohya's SDXL
            LoRAs name them, rather than by diffusers' module paths.
    """

    prefixes: Mapping[str, str]
    module_roots: Mapping[str, str]
    architecture: str
    base_model_version: Optional[str] = None
    sgm_unet: bool = False


KOHYA_LAYOUTS: dict[str, KohyaLayout] = {
    "sd": KohyaLayout(prefixes={"unet": "lora_unet", "text_encoder": "lora_te"},
                      module_roots={"text_encoder": "text_model."}, architecture="stable-diffusion"),
    "sdxl": KohyaLayout(prefixes={"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
                        module_roots={"text_encoder": "text_model.", "text_encoder_2": "text_model."},
                        architecture="stable-diffusion-xl-v1-base/lora", base_model_version="sdxl_base_v1-0",
                        sgm_unet=True),
}
"""The families whose LoRA can be written in kohya's format, by family name."""


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and safetensors metadata of a LoRA file (safetensors only: nothing is unpickled).

    Raises:
        RepoError: The file is missing or not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise RepoError(f"{path} is missing: the repo holds no LoRA file to export. Export a repo saved with a LoRA "
                        "(tinypipe train-diffuser --method lora, or DiffusionPipeline(..., lora_rank=R).save_pretrained).")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, dict(file.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise RepoError(f"{path} is not a readable safetensors file ({error}); re-save the repo.") from error


def lora_components(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The components a diffusers LoRA file holds a LoRA for (`unet`, `text_encoder`, `transformer`, ...), in order."""
    return sorted({key.split(".", 1)[0] for key in tensors})


def _adapter_settings(metadata: Mapping[str, str], component: str, path: Path) -> tuple[int, float]:
    """The rank and alpha diffusers recorded for `component` in the file's metadata."""
    try:
        settings = json.loads(metadata[_ADAPTER_METADATA_KEY])
        return int(settings[f"{component}.r"]), float(settings[f"{component}.lora_alpha"])
    except (KeyError, TypeError, ValueError) as error:
        raise RepoError(f"{path} does not record the rank and alpha of its {component} LoRA in its metadata "
                        f"({_ADAPTER_METADATA_KEY}); re-save the repo with this tinypipe version.") from error


_PEFT_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def peft_keys(tensors: Mapping[str, torch.Tensor], component: str, module_root: str, path: Path,
              rename: Optional[Callable[[str], str]] = None) -> dict[str, torch.Tensor]:
    """One component's part of a diffusers LoRA file in peft's key format (`<component>.<module>.lora_A.weight`).

    Args:
        tensors: The whole file's tensors (diffusers' keys, `<component>.` first).
        component: The component (`"unet"`, `"text_encoder"`, ...).
        module_root: Put before a module path that does not start with it (`"text_model."` for a CLIP text encoder
            saved by transformers 5, whose layers no longer live under `text_model.`).
        path: The file, for messages.
        rename: Maps a module path to its name in the target format (kohya's SDXL sgm names); None keeps it.

    Raises:
        RepoError: The part is not in diffusers' or peft's LoRA key format, or a key is not a LoRA weight.
    """
    from diffusers.utils import convert_all_state_dict_to_peft

    part = {key.removeprefix(f"{component}."): value for key, value in tensors.items() if key.startswith(f"{component}.")}
    try:
        peft = convert_all_state_dict_to_peft(part)  # diffusers' own map: `lora.down` / `lora_linear_layer.down` -> `lora_A`
    except ValueError as error:
        raise RepoError(f"{path}: its {component} LoRA is not in diffusers' key format ({error}); re-save the repo "
                        "with tinypipe, or export it with --format diffusers.") from error
    converted = {}
    for key, value in peft.items():
        suffix = next((suffix for suffix in _PEFT_SUFFIXES if key.endswith(suffix)), None)
        if suffix is None:
            raise RepoError(f"{path}: {component}.{key} is not a LoRA down/up weight, so it has no place in the exported "
                            "file; export the repo with --format diffusers.")
        module = key[: -len(suffix)]
        module = module if module.startswith(module_root) else module_root + module
        converted[f"{component}.{rename(module) if rename else module}{suffix}"] = value
    if len(converted) != len(part):
        raise RepoError(f"{path}: two of its {component} LoRA weights map to one name ({len(part)} weights, "
                        f"{len(converted)} names); export it with --format diffusers.")
    return converted


def lora_settings(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[int, float]:
    """The one rank and alpha of all of a diffusers LoRA file's components (kohya's and ComfyUI's files record one).

    Raises:
        ConfigError: The components have different ranks or alphas.
        RepoError: The file does not record them.
    """
    components = lora_components(tensors)
    settings = {component: _adapter_settings(metadata, component, path) for component in components}
    if len(set(settings.values())) > 1:
        raise ConfigError(f"{path} gives its components different ranks or alphas ({settings}); kohya's format records "
                          "one network dim and alpha. Only the diffusers format is offered for it.")
    return settings[components[0]]


def kohya_lora(path: Path, family: str, unet_config: Optional[Mapping[str, Any]] = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, int | float]]:
    """The LoRA of a diffusers LoRA file (as tinypipe and diffusers' scripts write it) in kohya's key format.

    Args:
        path: A `pytorch_lora_weights.safetensors` with diffusers' keys and `lora_adapter_metadata`.
        family: The model family (a key of `KOHYA_LAYOUTS`).
        unet_config: The base UNet's `config.json`; needed by a layout with `sgm_unet` (SDXL), whose block numbers
            it gives (see `base_model_config`).

    Returns:
        The kohya state dict (`lora_unet_..._to_q.lora_down.weight`, `.lora_up.weight`, `.alpha`, in the LoRA's
        dtype), and the rank and alpha (`{"rank": 4, "alpha": 4.0}`).

    Raises:
        ConfigError: The family has no kohya layout (only the diffusers file is offered), the file holds a LoRA
            for a component the layout does not name or on a UNet module kohya's model has no name for (named), or
            an SDXL export is given no `unet_config`.
        RepoError: The file is missing, unreadable, or does not record its rank and alpha.
    """
    from diffusers.utils import convert_state_dict_to_kohya

    from .kohya_sdxl_names import SgmNames

    layout = KOHYA_LAYOUTS.get(family)
    if layout is None:
        raise ConfigError(f"A {family} LoRA cannot be written in kohya's format yet; only the diffusers format is offered "
                          f"for it (--format diffusers). kohya's format is written for: {', '.join(sorted(KOHYA_LAYOUTS))}.")
    tensors, metadata = read_lora_file(path)
    components = lora_components(tensors)
    unknown = [component for component in components if component not in layout.prefixes]
    if unknown or not components:
        raise ConfigError(f"{path} holds a LoRA for {unknown or 'no component'}, which a {family} LoRA in kohya's format "
                          f"cannot name (it names {sorted(layout.prefixes)}); only the diffusers format is offered for it.")
    rank, alpha = lora_settings(path, tensors, metadata)
    if layout.sgm_unet and unet_config is None:
        raise ConfigError(f"Writing a {family} LoRA in kohya's format names its UNet blocks from the base UNet's "
                          "config.json, which is not at hand; download the base model (its unet/config.json) first.")
    sgm = SgmNames(unet_config) if layout.sgm_unet and unet_config is not None else None

    # 1. diffusers' keys -> peft's, with the module paths of kohya's model; 2. peft's -> kohya's, by diffusers.
    peft: dict[str, torch.Tensor] = {}
    for component in components:
        rename = sgm.of if sgm is not None and component == "unet" else None
        peft.update(peft_keys(tensors, component, layout.module_roots.get(component, ""), path, rename))
    converted = convert_state_dict_to_kohya(peft)
    # 3. diffusers names the components lora_te1/lora_te2 (SDXL's); a family with one text encoder uses lora_te.
    renamed = {"lora_unet": "lora_unet", "lora_te1": layout.prefixes.get("text_encoder", "lora_te1"),
               "lora_te2": layout.prefixes.get("text_encoder_2", "lora_te2")}
    state_dict = {}
    for key, value in converted.items():
        head, _, rest = key.partition("_")
        prefix, _, module = rest.partition("_")
        name = f"{renamed[f'{head}_{prefix}']}_{module}"
        # 4. diffusers writes the rank as alpha; kohya (and peft's scale lora_alpha / r) need the recorded alpha.
        state_dict[name] = (torch.tensor(alpha, dtype=next(iter(tensors.values())).dtype) if name.endswith(".alpha")
                            else value.contiguous())
    # 5. No silent drops: each LoRA weight of the file is one down/up weight of the kohya file.
    weights = [name for name in state_dict if not name.endswith(".alpha")]
    if len(weights) != len(peft) or len(state_dict) != len(weights) * 3 // 2:
        raise RepoError(f"{path}: {len(peft)} LoRA weights became {len(weights)} in kohya's format; export it with "
                        "--format diffusers.")
    return state_dict, {"rank": rank, "alpha": alpha}


def base_model_config(base_model: Optional[str], name: str) -> Optional[dict[str, Any]]:
    """A config file of a diffusers base model (`"unet/config.json"`) where it is at hand without the network: a
    built-in model, a local folder, or huggingface_hub's cache; None otherwise."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    from ..builtin import is_builtin
    from ..builtin.diffusion_folders import builtin_diffusion_folder

    if not base_model:
        return None
    if is_builtin(base_model, "diffusion"):
        path: Any = builtin_diffusion_folder(base_model) / name
    elif (Path(base_model).expanduser() / name).is_file():
        path = Path(base_model).expanduser() / name
    else:
        try:
            path = try_to_load_from_cache(base_model, name)
        except HFValidationError:
            return None
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    config = read_json(Path(path))
    return config if isinstance(config, dict) else None


def native_resolution(base_model: Optional[str]) -> Optional[int]:
    """The image size a Stable-Diffusion-style base model works at (UNet sample size x VAE downscale), read from its
    configs where they are at hand without the network (see `base_model_config`).

    This is the size a trainer given no `resolution` trains at; None when the configs are not at hand.
    """
    unet, vae = base_model_config(base_model, "unet/config.json"), base_model_config(base_model, "vae/config.json")
    try:
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def kohya_metadata(family: str, rank: int, alpha: float, state_dict: Mapping[str, torch.Tensor], *, base_model: Optional[str],
                   resolution: Optional[int], title: str, training_arguments: Mapping[str, Any],
                   layout: Optional[KohyaLayout] = None) -> dict[str, str]:
    """kohya's `ss_*` metadata (what A1111's and ComfyUI's LoRA panels show) and the `modelspec.*` keys of a LoRA.

    Args:
        family: The model family (a key of `KOHYA_LAYOUTS`).
        rank: The LoRA rank (`ss_network_dim`).
        alpha: The LoRA alpha (`ss_network_alpha`).
        state_dict: The kohya state dict (its cross-attention width tells SD 2 from SD 1).
        base_model: The base model's public name (a hub id), or None.
        resolution: The training resolution, or None when not recorded.
        title: The LoRA's name (`ss_output_name`, `modelspec.title`).
        training_arguments: The public training arguments (see `tinypipe.config.card.public_training_arguments`).
        layout: The layout whose version and architecture the metadata names; default `KOHYA_LAYOUTS[family]`.

    Returns:
        `{key: str}` (safetensors metadata holds strings only).
    """
    layout = layout or KOHYA_LAYOUTS[family]
    if layout.base_model_version is not None:
        base_model_version, v2, architecture = layout.base_model_version, False, layout.architecture
    else:
        # SD 2's text encoder (OpenCLIP ViT-H) is 1024 wide, SD 1's (CLIP ViT-L) 768: the UNet's cross-attention input.
        widths = {value.shape[1] for key, value in state_dict.items()
                  if key.endswith(("attn2_to_k.lora_down.weight", "attn2_to_v.lora_down.weight", "q_proj.lora_down.weight"))}
        version = "v2" if 1024 in widths else "v1"
        base_model_version, v2, architecture = f"sd_{version}", version == "v2", f"{layout.architecture}-{version}/lora"
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": _number(alpha),
        "ss_base_model_version": base_model_version,
        "ss_v2": str(v2),
        "ss_output_name": title,
        "ss_training_comment": f"Trained with tinypipe {__version__}; written in kohya's format by tinypipe.",
        "ss_tinypipe_version": __version__,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": title,
    }
    if base_model:
        metadata["ss_sd_model_name"] = base_model
    if resolution:
        metadata["ss_resolution"] = str((resolution, resolution))
        metadata["modelspec.resolution"] = f"{resolution}x{resolution}"
    for kohya_key, name in (("ss_learning_rate", "learning_rate"), ("ss_max_train_steps", "max_train_steps"),
                            ("ss_num_epochs", "num_train_epochs"), ("ss_lr_scheduler", "lr_schedule"), ("ss_seed", "seed"),
                            ("ss_gradient_accumulation_steps", "gradient_accumulation_steps"),
                            ("ss_mixed_precision", "mixed_precision"), ("ss_lr_warmup_steps", "warmup_steps")):
        if training_arguments.get(name) is not None:
            metadata[kohya_key] = str(training_arguments[name])
    return metadata
