"""The one function that writes a LoRA export: a diffusers LoRA file rewritten for another tool.

```python
from tinypipe.models.lora_exports import write_lora_export

write_lora_export(lora_file, Path("x.safetensors"), "comfyui", "flux", base_model="tinypipe/tiny-flux")
```

Which family is written in which format is `tinypipe.config.export_formats`; the kohya file is built by
`kohya_export`, FLUX.1's ComfyUI file by `comfyui_export`. Both `tinypipe export` and
`DiffusionPipeline.save_pretrained(..., export_formats=[...])` write through here.
"""

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from ..config.card import public_training_arguments, public_value
from ..config.export_formats import REPO_EXPORT_NAMES, check_export_formats
from ..errors import disk_full_as_error
from ..files import atomic_file

__all__ = ["write_lora_export", "write_repo_exports"]

def write_lora_export(source: Path, target: Path, format: str, family: str, *, base_model: Optional[str],
                      public_base_model: Optional[str] = None, resolution: Optional[int] = None,
                      title: Optional[str] = None, training_arguments: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the diffusers LoRA file `source` as `target` in `format`, atomically (safetensors only).

    Args:
        source: A `pytorch_lora_weights.safetensors` (diffusers' keys, `lora_adapter_metadata`).
        target: The file to write; replaced if it exists (the caller decides whether it may be).
        format: A member of `EXPORT_FORMATS` that `family` is written in.
        family: The LoRA's model family.
        base_model: The base model, as the repo records it (a built-in, a folder or a hub id): its configs are read
            where at hand (SDXL's UNet block numbers, the native resolution).
        public_base_model: The base model's public name for the metadata (`ss_sd_model_name`); None leaves it out.
        resolution: The training resolution; default the base model's native one where known.
        title: The LoRA's name in the metadata; default the target's stem.
        training_arguments: The public training arguments (learning rate, steps, ...) for kohya's `ss_*` metadata.

    Returns:
        `target`.

    Raises:
        ConfigError: The family is not written in that format (see `check_export_formats`), or a LoRA module has no
            name in it (named).
        RepoError: The source is missing, unreadable, or not in diffusers' LoRA format.
    """
    from safetensors.torch import save_file

    from .comfyui_export import COMFYUI_LAYOUTS, comfyui_lora
    from .kohya_export import KohyaLayout, base_model_config, kohya_lora, kohya_metadata, native_resolution

    check_export_formats([format], family)
    if format == "diffusers":
        with disk_full_as_error(target, f"Writing {target}"), atomic_file(target) as staging:
            shutil.copyfile(source, staging)
        return target
    layout = None
    if family in COMFYUI_LAYOUTS:
        state_dict, settings = comfyui_lora(source, family)
        spec = COMFYUI_LAYOUTS[family]
        layout = KohyaLayout(prefixes={}, module_roots=spec["module_roots"], architecture=spec["architecture"],
                             base_model_version=spec["base_model_version"])
    else:
        state_dict, settings = kohya_lora(source, family, base_model_config(base_model, "unet/config.json"))
    metadata = kohya_metadata(family, settings["rank"], settings["alpha"], state_dict, base_model=public_base_model,
                              resolution=resolution or native_resolution(base_model), title=title or target.stem,
                              training_arguments=training_arguments or {}, layout=layout)
    if layout is not None:  # not a kohya network file: no kohya network module to name
        metadata.pop("ss_network_module")
        metadata["ss_training_comment"] = metadata["ss_training_comment"].replace("kohya's format", "ComfyUI's format")
    with disk_full_as_error(target, f"Writing {target}"), atomic_file(target) as staging:
        save_file(state_dict, str(staging), metadata=metadata)
    return target


def write_repo_exports(folder: Path, formats: tuple[str, ...], family: str, base_model: str,
                       arguments: Mapping[str, Any], title: str) -> None:
    """The LoRA file of a repo's `model/` folder in each export format, beside it (`REPO_EXPORT_NAMES`).

    Args:
        folder: The `model/` folder being saved, holding `pytorch_lora_weights.safetensors`.
        formats: Checked export formats (`check_export_formats`); `"diffusers"` is the LoRA file itself.
        family: The model family.
        base_model: The base model as the config records it.
        arguments: The run's training arguments (empty outside a run); only their public part reaches the metadata.
        title: The repo's name (`ss_output_name`).
    """
    from ..families.lora_files import LORA_WEIGHTS_NAME

    public = public_training_arguments(public_value(dict(arguments)))
    for format in formats:
        if format in REPO_EXPORT_NAMES:
            write_lora_export(folder / LORA_WEIGHTS_NAME, folder / REPO_EXPORT_NAMES[format], format, family,
                              base_model=base_model, public_base_model=public_value(base_model),
                              resolution=arguments.get("resolution"), title=title or None, training_arguments=public)
