"""The `tinypipe export` command: a repo's LoRA as one file for A1111 / ComfyUI / kohya (see `tinypipe.export`).

Registered from `tinypipe.cli.build_parser` with `add_export_commands(commands)`.
"""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from .export import EXPORT_FORMATS

__all__ = ["add_export_commands"]

EXPORT_EPILOG = """formats:
  kohya      kohya's key names (lora_unet_..., lora_te_...; SDXL: the sgm UNet's lora_unet_input_blocks_...,
             lora_te1_/lora_te2_), .alpha tensors and ss_* metadata: A1111, Forge, SD.Next, InvokeAI, ComfyUI,
             kohya's sd-scripts, and diffusers' load_lora_weights(FILE) read it. SD 1/2 and SDXL.
  comfyui    the file ComfyUI's LoRA loader reads (put it in ComfyUI/models/loras/): the kohya file for SD 1/2 and
             SDXL; for FLUX.1 and SD3 diffusers' module names (transformer.<path>.lora_A.weight) with the
             alpha as an .alpha per module (FLUX.1) or folded into lora_B (SD3), which diffusers reads too.
  diffusers  the repo's own model/pytorch_lora_weights.safetensors (diffusers' keys), unchanged (ComfyUI reads
             FLUX.1's and SD3's directly, but at the trained strength only when lora_alpha equals the rank).
A format the repo's family is not written in is refused, naming those it is. To save the files inside the repo at
training time: tinypipe train-diffuser ... --export-formats kohya,comfyui.
"""


def _export(arguments: argparse.Namespace) -> int:
    from .config.hub import resolve_repo
    from .export import default_export_name, export_lora
    from .files import tinypipe_home

    local = arguments.local_repo(arguments.repo)
    if local is None:  # a hub id (an invalid one is refused by resolve_repo, naming it)
        import tinypipe.models  # noqa: F401  (registers the built-in names a repo id may be)

        cache = Path(arguments.cache_dir) if arguments.cache_dir else tinypipe_home() / "hub"
        local = resolve_repo(cache, arguments.repo, revision=arguments.revision)
    to = arguments.to
    if to is None and not Path(arguments.repo).exists():  # a job (its repo folder is always `repo`) or a hub id
        to = default_export_name(arguments.repo, arguments.format)  # named as the user named it: my-job-kohya...
    target = export_lora(local, arguments.format, to, overwrite=arguments.force)
    print(f"Wrote {target} ({arguments.format} format) from {local}.")
    return 0


def add_export_commands(commands: "argparse._SubParsersAction", local_repo: Callable[[str], Optional[Path]]) -> None:
    """Add `tinypipe export` to the sub-commands of the `tinypipe` parser.

    Args:
        commands: The parser's sub-commands.
        local_repo: The CLI's reading of a REPO argument: the local repo folder it names (a folder, or a job by id,
            id prefix or unique name), or None for a hub id.
    """
    export = commands.add_parser(
        "export", help="Write a repo's LoRA as one file for A1111, ComfyUI or kohya.", epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write the LoRA of a diffusion repo (a folder, a job by id, id prefix or unique name, or a Hub id) "
                    "as one .safetensors file in the format another tool reads. The repo is only read; an existing file is not replaced without --force.")
    export.add_argument("repo", metavar="REPO", help="A repo folder, a job (id, id prefix or unique name), or a Hub id.")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="kohya", help="The file format (default: kohya).")
    export.add_argument("--to", metavar="FILE", help="The .safetensors file to write (default: "
                        "<repo folder, job or hub repo name>-<format>.safetensors here).")
    export.add_argument("--force", action="store_true", help="Replace FILE if it exists.")
    export.add_argument("--revision", help="Hub revision, for a Hub id.")
    export.add_argument("--cache-dir", metavar="DIR", help="Where Hub repos are downloaded (default: the tinypipe home's hub/).")
    export.set_defaults(handler=_export, local_repo=local_repo)
