"""Which LoRA file formats each model family is exported in (`tinypipe export`, `save_pretrained(export_formats=...)`).

```python
from tinypipe.config.export_formats import check_export_formats

check_export_formats(["kohya"], "sdxl")    # before training: refuses a format the family's LoRA is not written in
```

Formats (`EXPORT_FORMATS`) by family (`FAMILY_FORMATS`):
- `kohya`: kohya's key names, `.alpha` tensors and `ss_*` metadata (`tinypipe.models.kohya_export`): Stable
  Diffusion 1/2 and SDXL. A1111, Forge, SD.Next, InvokeAI, ComfyUI and diffusers' `load_lora_weights` read it.
- `comfyui`: the file ComfyUI's LoRA loader reads: the kohya file for SD 1/2 and SDXL; for FLUX.1 and SD3 diffusers'
  module paths with the alpha applied (`tinypipe.models.comfyui_export`), which diffusers' `load_lora_weights` reads
  too.
- `diffusers`: the repo's own `pytorch_lora_weights.safetensors`: every family.

Inside a repo the exported files are `model/kohya_lora.safetensors` / `model/comfyui_lora.safetensors`
(`REPO_EXPORT_NAMES`). This module imports nothing heavy, so the CLI can check a format before loading anything.
"""

from collections.abc import Iterable

from ..errors import ConfigError

__all__ = ["EXPORT_FORMATS", "FAMILY_FORMATS", "REPO_EXPORT_NAMES", "check_export_formats", "formats_of"]

EXPORT_FORMATS = ("kohya", "comfyui", "diffusers")
"""The LoRA file formats tinypipe writes."""

FAMILY_FORMATS: dict[str, tuple[str, ...]] = {
    "sd": EXPORT_FORMATS,
    "sdxl": EXPORT_FORMATS,
    "flux": ("comfyui", "diffusers"),
    "sd3": ("comfyui", "diffusers"),
}
"""The formats each family's LoRA is written in; a family not named here is offered the diffusers format only."""

REPO_EXPORT_NAMES = {"kohya": "kohya_lora.safetensors", "comfyui": "comfyui_lora.safetensors"}
"""The file each format is saved as inside a repo's `model/` (`save_pretrained(..., export_formats=...)`); the
diffusers format is the repo's own `pytorch_lora_weights.safetensors`."""

_WHY_NOT = {
    (family, "kohya"): f"kohya's {name} layout names the original model's fused q/k/v projections, which a LoRA on "
                       "diffusers' separate q/k/v projections does not map onto; --format comfyui writes the file "
                       "ComfyUI reads (diffusers' names with .alpha tensors)"
    for family, name in (("flux", "FLUX.1"), ("sd3", "SD3"))
}


def formats_of(family: str) -> tuple[str, ...]:
    """The formats `family`'s LoRA is written in (`("comfyui", "diffusers")` for FLUX.1)."""
    return FAMILY_FORMATS.get(family, ("diffusers",))


def check_export_formats(formats: Iterable[str], family: str) -> tuple[str, ...]:
    """Refuse, before any work, a format that is unknown or that `family`'s LoRA is not written in.

    Args:
        formats: Format names, or one comma-separated string (`"kohya,comfyui"`, as the command line gives them).
        family: The model family (`"sd"`, `"sdxl"`, `"flux"`, `"sd3"`).

    Returns:
        The formats, as a tuple, each once.

    Raises:
        ConfigError: Naming the format, the family and the formats that are offered for it.
    """
    if isinstance(formats, str):
        formats = [name.strip() for name in formats.split(",") if name.strip()]
    formats = tuple(dict.fromkeys(formats))
    for format in formats:
        if format not in EXPORT_FORMATS:
            raise ConfigError(f"Unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
        if format not in formats_of(family):
            reason = _WHY_NOT.get((family, format), "its layout in that tool is not written by tinypipe")
            raise ConfigError(f"A {family} LoRA cannot be exported in the {format} format ({reason}); for {family} "
                              f"tinypipe writes: {', '.join(formats_of(family))}.")
    return formats
