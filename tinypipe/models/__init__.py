"""Model pipelines: config objects that wrap a diffusers / transformers model and its fine-tuned weights.

The names below are imported on first use (PEP 562): a diffusion job does not import the causal-LM stack
(transformers' Llama, the chat templates) and a causal-LM job does not import diffusers. Importing this package
registers, for every built-in model name, a writer that imports the pipeline which saves its repo
(`builtin_repos`), so `tinypipe/tiny-sd` and `tinypipe/tiny-llama` load from here as before.
"""

from . import quiet_transformers  # noqa: F401  (first: installs a logging filter before transformers loads)
from ..lazy_names import lazy_names
from .builtin_repos import register_builtin_writers

_MODULE_OF = {
    "CausalLMPipeline": ".causal_lm",
    "DiffusionPipeline": ".diffusion",
    "TINY_INSTRUCTIONS": "..builtin.tiny_llama",
    "TINY_LLAMA": "..builtin.tiny_llama",
    "build_tiny_llama": "..builtin.tiny_llama",
    "builtin_lm_folder": "..builtin.tiny_llama",
    "tiny_instructions": "..builtin.tiny_llama",
    "TINY_SD": "..builtin.tiny_sd",
    "build_tiny_stable_diffusion": "..builtin.tiny_sd",
    "builtin_model_folder": "..builtin.tiny_sd",
    "shapes_dataset": "..builtin.tiny_sd",
    "TINY_SDXL": "..builtin.tiny_sdxl",
    "build_tiny_sdxl": "..builtin.tiny_sdxl",
}

__all__ = sorted(_MODULE_OF)


__getattr__, __dir__ = lazy_names(__name__, _MODULE_OF)


register_builtin_writers()
