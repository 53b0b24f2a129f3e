"""Model pipelines: config objects that wrap a diffusers / transformers model and its fine-tuned weights."""

from . import quiet_transformers  # noqa: F401  (first: installs a logging filter before transformers loads)
from ..builtin.tiny_sd import TINY_SD, build_tiny_stable_diffusion, builtin_model_folder, shapes_dataset
from ..builtin.tiny_sdxl import TINY_SDXL, build_tiny_sdxl
from ..builtin.tiny_llama import TINY_INSTRUCTIONS, TINY_LLAMA, build_tiny_llama, builtin_lm_folder, tiny_instructions
from .causal_lm import CausalLMPipeline
from .diffusion import DiffusionPipeline

__all__ = [
    "CausalLMPipeline",
    "DiffusionPipeline",
    "TINY_INSTRUCTIONS",
    "TINY_LLAMA",
    "TINY_SD",
    "TINY_SDXL",
    "build_tiny_llama",
    "build_tiny_sdxl",
    "build_tiny_stable_diffusion",
    "builtin_lm_folder",
    "builtin_model_folder",
    "shapes_dataset",
    "tiny_instructions",
]
