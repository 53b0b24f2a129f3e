"""A FLUX.1 or SD3 LoRA as ComfyUI reads it: diffusers' module paths with peft's `lora_A`/`lora_B`, and an `.alpha`
per module.

```python
from tinypipe.models.comfyui_export import comfyui_lora

tensors, settings = comfyui_lora(Path("out/model/pytorch_lora_weights.safetensors"), family="flux")
```

ComfyUI's LoRA loader (`comfy/lora.py`) maps, for a FLUX.1 or SD3 model, every `transformer.<diffusers module path>`
to its own weight, and for the CLIP text encoders every `text_encoder.text_model.encoder.layers.<i>.<module>` (and,
for SD3's second CLIP, `text_encoder_2.text_model...`); a module's LoRA is its `.lora_A.weight` / `.lora_B.weight`,
scaled by `<module>.alpha / rank` when the file holds an `.alpha` (at 1 when it does not). A diffusers file records
the alpha only in its metadata, which ComfyUI does not read, so the FLUX.1 file adds one `.alpha` tensor per module,
which diffusers' `FluxPipeline.load_lora_weights` also reads. diffusers' SD3 loader refuses `.alpha` keys, so the
SD3 file instead folds the scale into the weights (`lora_B * alpha / rank`, alpha then equal to the rank): ComfyUI
and `StableDiffusion3Pipeline.load_lora_weights` both apply it at the trained strength. kohya's own layouts of these models (`lora_unet_double_blocks_...`,
`lora_unet_joint_blocks_...`: the original models' names, with q/k/v fused into one `qkv` LoRA) are not written: a
fused LoRA of three rank-r LoRAs is not a rank-r LoRA.

`COMFYUI_LAYOUTS` names the families written this way; Stable Diffusion 1/2 and SDXL get the kohya file instead
(`tinypipe.models.kohya_export`), which ComfyUI reads as well.
"""

from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import ConfigError
from .kohya_export import lora_components, lora_settings, peft_keys, read_lora_file

__all__ = ["COMFYUI_LAYOUTS", "comfyui_lora"]

COMFYUI_LAYOUTS: dict[str, dict[str, Any]] = {
    "flux": {"module_roots": {"transformer": "", "text_encoder": "text_model."}, "alpha_tensors": True,
             "base_model_version": "flux1", "architecture": "flux-1/lora"},
    "sd3": {"module_roots": {"transformer": "", "text_encoder": "text_model.", "text_encoder_2": "text_model."},
            "alpha_tensors": False, "base_model_version": "sd3", "architecture": "stable-diffusion-3/lora"},
}
"""The families whose LoRA is written in ComfyUI's peft-keyed format: the module root of each component's paths as
ComfyUI names them, whether the alpha is an `.alpha` tensor per module (else folded into `lora_B`), kohya's
`ss_base_model_version` and the `modelspec.architecture`."""


def comfyui_lora(path: Path, family: str) -> tuple[dict[str, torch.Tensor], dict[str, int | float]]:
    """The LoRA of a diffusers LoRA file in the format ComfyUI reads for `family` (a key of `COMFYUI_LAYOUTS`).

    Args:
        path: A `pytorch_lora_weights.safetensors` with diffusers' keys and `lora_adapter_metadata`.
        family: The model family.

    Returns:
        The state dict (`transformer.<module>.lora_A.weight`, `.lora_B.weight`, `transformer.<module>.alpha`, ...)
        and the rank and alpha of the file (`{"rank": 4, "alpha": 8.0}`; with the alpha folded in, the rank).

    Raises:
        ConfigError: The family is not written this way, or the file holds a LoRA for a component ComfyUI does not
            read for it (named).
        RepoError: The file is missing, unreadable, or does not record its rank and alpha.
    """
    layout = COMFYUI_LAYOUTS.get(family)
    if layout is None:
        raise ConfigError(f"A {family} LoRA is not written in ComfyUI's peft-keyed format; that format is written for: "
                          f"{', '.join(sorted(COMFYUI_LAYOUTS))}.")
    tensors, metadata = read_lora_file(path)
    components = lora_components(tensors)
    roots: Mapping[str, str] = layout["module_roots"]
    unknown = [component for component in components if component not in roots]
    if unknown or not components:
        raise ConfigError(f"{path} holds a LoRA for {unknown or 'no component'}, which ComfyUI does not read for a "
                          f"{family} LoRA (it reads {sorted(roots)}); only the diffusers format is offered for it.")
    rank, alpha = lora_settings(path, tensors, metadata)
    state_dict: dict[str, torch.Tensor] = {}
    for component in components:
        for key, value in peft_keys(tensors, component, roots[component], path).items():
            if not layout["alpha_tensors"] and key.endswith(".lora_B.weight"):
                value = value * (alpha / rank)
            state_dict[key] = value.contiguous()
            if layout["alpha_tensors"] and key.endswith(".lora_A.weight"):
                state_dict[key.removesuffix(".lora_A.weight") + ".alpha"] = torch.tensor(float(alpha), dtype=value.dtype)
    return state_dict, {"rank": rank, "alpha": alpha if layout["alpha_tensors"] else float(rank)}
