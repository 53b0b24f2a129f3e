"""`tinypipe builtin-path NAME`: the plain diffusers / transformers folder of a built-in model, for other tools.

```
$ tinypipe builtin-path tinypipe/tiny-sd
/home/me/.cache/tinypipe/builtin/...
```

The folder loads unchanged with `diffusers.StableDiffusionPipeline.from_pretrained` (or, for a causal LM,
`transformers.AutoModelForCausalLM.from_pretrained`); it is built on first use and cached under the tinypipe home.
"""

import argparse

__all__ = ["add_builtin_commands", "builtin_path"]


def builtin_path(name: str) -> str:
    """The folder of the built-in model `name` in its library's own format, built if needed.

    Raises:
        ConfigError: `name` is not a built-in model (the built-in models are listed).
    """
    from .builtin import BUILTIN_NAMES, builtin_names
    from .errors import ConfigError

    kind = BUILTIN_NAMES.get(name)
    if kind in ("diffusion", "causal-lm"):
        from . import models  # noqa: F401  (its filter drops transformers' torchvision notice, which does not apply)
    if kind == "diffusion":
        from .builtin.diffusion_folders import builtin_diffusion_folder

        return str(builtin_diffusion_folder(name))
    if kind == "causal-lm":
        from .builtin.tiny_llama import builtin_lm_folder

        return str(builtin_lm_folder(name))
    models = builtin_names("diffusion") + builtin_names("causal-lm")
    raise ConfigError(f"{name!r} is not a built-in model; the built-in models are {', '.join(models)}.")


def _builtin_path(arguments: argparse.Namespace) -> int:
    print(builtin_path(arguments.name))
    return 0


def add_builtin_commands(commands) -> None:
    """Add `builtin-path` to the `tinypipe` sub-command parsers."""
    command = commands.add_parser("builtin-path", help="Print the plain diffusers / transformers folder of a built-in model.",
                                  description="Print the folder of a built-in model (tinypipe/tiny-sd, tinypipe/tiny-llama, ...) "
                                              "in diffusers' or transformers' own format, building it on first use, so "
                                              "that other tools can load it.")
    command.add_argument("name", metavar="NAME", help="A built-in model name, e.g. tinypipe/tiny-sd.")
    command.set_defaults(handler=_builtin_path)
