"""Export a saved diffusion repo's LoRA as one file for another tool: `tinypipe export REPO --format kohya|comfyui|diffusers`.

```python
from tinypipe.export import export_lora

export_lora("out", "kohya", "my-lora.safetensors")   # for A1111 / Forge / kohya's sd-scripts
```

Formats (`EXPORT_FORMATS`; which family is written in which: `tinypipe.config.export_formats`):
- `kohya`: kohya's key names (`lora_unet_...`, `lora_te_...`; SDXL: `lora_te1_`/`lora_te2_` and the sgm UNet's
  `input_blocks_...` names), `.alpha` tensors and `ss_*` metadata (`tinypipe.models.kohya_export`): Stable
  Diffusion 1/2 and SDXL. A1111, Forge, SD.Next, InvokeAI, ComfyUI and diffusers' `load_lora_weights` read it.
- `comfyui`: the file ComfyUI's LoRA loader reads (put it in `ComfyUI/models/loras/`): the kohya file for SD 1/2
  and SDXL; for FLUX.1 and SD3 diffusers' module paths with peft's `lora_A`/`lora_B` and the alpha as an `.alpha`
  per module (FLUX.1) or folded into `lora_B` (SD3) (`tinypipe.models.comfyui_export`), which diffusers'
  `load_lora_weights` reads too.
- `diffusers`: the repo's own `model/pytorch_lora_weights.safetensors`, unchanged (diffusers' keys and metadata);
  every family (ComfyUI reads FLUX.1's and SD3's directly, at the trained strength only when alpha equals the rank).

The repo is only read (its `model/filelist.txt` checked first). The file is written atomically and never replaces an
existing file unless `overwrite=True` (`--force`); only safetensors files are written.
"""

from pathlib import Path
from typing import Any, Optional, Union

from .config.card import card_data_from_repo
from .config.export_formats import check_export_formats
from .config.filelist import FILELIST, verify_filelist
from .config.hub import public_value
from .errors import ConfigError, RepoError
from .files import read_json
from .config.export_formats import EXPORT_FORMATS

__all__ = ["EXPORT_FORMATS", "export_lora", "default_export_name"]

LORA_FILE = "pytorch_lora_weights.safetensors"


def default_export_name(repo: Union[str, Path], format: str) -> Path:
    """The file `tinypipe export` writes when `--to` is not given: `<repo folder name>-<format>.safetensors`, here."""
    return Path(f"{Path(repo).resolve().name}-{format}.safetensors")


def _family(model_config: dict[str, Any], components: list[str]) -> str:
    """The model family of a saved LoRA: the one its config records, else the one its components name."""
    if isinstance(model_config.get("family"), str):
        return model_config["family"]
    if "transformer" in components:  # a transformer denoiser: FLUX.1 (and later families)
        return "flux"
    return "sdxl" if "text_encoder_2" in components else "sd"


def export_lora(repo: Union[str, Path], format: str = "kohya", to: Optional[Union[str, Path]] = None, *,
                overwrite: bool = False) -> Path:
    """Write the LoRA of a saved diffusion repo as one safetensors file in the format another tool reads.

    Args:
        repo: The repo folder (`save_pretrained` / a trainer's `train(output_dir=...)`), holding
            `model/pytorch_lora_weights.safetensors`.
        format: `"kohya"` (A1111, Forge, kohya's sd-scripts, diffusers: SD 1/2, SDXL), `"comfyui"` (the file
            ComfyUI's LoRA loader reads: the kohya file, or FLUX.1's peft-keyed file with `.alpha` tensors) or
            `"diffusers"` (the repo's own file).
        to: The file to write (a `.safetensors` path); default `default_export_name(repo, format)`.
        overwrite: Replace `to` if it exists (otherwise an existing file is refused).

    Returns:
        The path written.

    Raises:
        ConfigError: An unknown format, a target that is not `.safetensors` or exists, a family whose LoRA is not
            written in that format (the message names the formats offered), or a LoRA module the format cannot name.
        RepoError: The repo has no LoRA, does not verify, or its LoRA file cannot be read.

    Example:
    ```python
    export_lora("out", "comfyui", "ComfyUI/models/loras/sks-circle.safetensors")
    ```
    """
    # 1. Check the request before anything is read or written.
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"Unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    repo = Path(repo)
    target = Path(to) if to is not None else default_export_name(repo, format)
    if target.suffix != ".safetensors":
        raise ConfigError(f"The export target {target} must be a .safetensors file (tinypipe writes safetensors only); "
                          "give a name ending in .safetensors.")
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists and is left as it is; choose another file (--to), or replace it "
                          "(--force; overwrite=True in Python).")

    # 2. The repo: verified, a diffusion pipeline with a LoRA.
    model = repo / "model"
    if not (model / FILELIST).is_file():
        raise RepoError(f"{model / FILELIST} is missing: {repo} is not a repo saved by tinypipe; give the folder "
                        "save_pretrained or train(output_dir=...) wrote.")
    verify_filelist(model)
    config = read_json(model / "config.json")
    if not isinstance(config, dict) or "lora_rank" not in config:
        raise RepoError(f"{repo} is not a diffusion repo (model/config.json names {config.get('__module__') if isinstance(config, dict) else None}); "
                        "export writes diffusion LoRAs. A causal-LM repo's model/ is already a PEFT adapter that peft loads.")
    if config["lora_rank"] is None:
        raise RepoError(f"{repo} holds no LoRA (its model/config.json records lora_rank null); export writes LoRA files. "
                        "A DreamBooth repo's model/ is already a diffusers pipeline folder.")
    source = model / LORA_FILE

    # 3. Write the file beside its target, then rename it into place.
    from .models.kohya_export import lora_components, read_lora_file
    from .models.lora_exports import write_lora_export

    family = _family(config, lora_components(read_lora_file(source)[0]))
    check_export_formats([format], family)
    data = card_data_from_repo(repo)
    arguments = data.get("training_arguments", {})
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_lora_export(source, target, format, family, base_model=config.get("base_model"),
                             public_base_model=public_value(data.get("base_model")),
                             resolution=arguments.get("resolution"), title=target.stem, training_arguments=arguments)
