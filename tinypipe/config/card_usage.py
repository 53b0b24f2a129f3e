"""The "How to use" section of a model card: the exact code that loads the published repo in each tool.

```python
from tinypipe.config.card_usage import usage_section

lines = usage_section(card_data_from_repo("out"), "me/my-lora")   # Markdown lines, code in fenced blocks
```

One snippet per tool that reads the repo's files, chosen from what `model/` holds (`card_data["model_files"]`):
tinypipe itself; diffusers (`load_lora_weights(repo, subfolder="model")`, or no arguments when the LoRA is also
published at the repo root; `load_textual_inversion`; a DreamBooth pipeline folder); peft (`PeftModel.from_pretrained(
base, repo, subfolder="model")`); and the LoRA file for A1111 / Forge / ComfyUI (kohya's format for SD 1/2 and SDXL,
ComfyUI's for FLUX.1): the one saved in `model/` with `export_formats`, or else the `tinypipe export` command that
writes it.
The diffusers and peft snippets name the base model once (`base_model = ...`), so each reads as the code a user runs;
the tests run each one against a published copy.
"""

import json
from typing import Any, Optional

from .export_formats import REPO_EXPORT_NAMES

__all__ = ["usage_section"]

LORA_FILE = "pytorch_lora_weights.safetensors"
_UNKNOWN_BASE = "<the base model's hub id or folder>"
_FORMAT_WORDS = {"kohya": "kohya's key names, alpha and ss_* metadata",
                 "comfyui": "diffusers' module names with an alpha per module, as ComfyUI reads FLUX.1 LoRAs"}
STEPS = 30
"""The denoising steps the snippets generate with."""
_DEVICE = 'pipe = pipe.to("cuda" if torch.cuda.is_available() else "cpu")'


def _tool_format(tags: list[str]) -> Optional[str]:
    """The format A1111 / ComfyUI users need for this repo's LoRA, told by its family tag (the card reads no weights):
    `kohya` for Stable Diffusion 1/2 and SDXL, `comfyui` for FLUX.1, None where only diffusers' file is written (SD3);
    see `tinypipe.config.export_formats`."""
    if "flux" in tags:
        return "comfyui"
    if {"stable-diffusion", "stable-diffusion-xl"} & set(tags):
        return "kohya"
    return None


def _python(*lines: str) -> list[str]:
    return ["```python", *lines, "```", ""]


def _text_to_image_start(base: str) -> list[str]:
    return ["import torch", "from diffusers import AutoPipelineForText2Image", "", f"base_model = {base}",
            "pipe = AutoPipelineForText2Image.from_pretrained(base_model)", _DEVICE]


def _diffusion_snippets(card_data: dict[str, Any], repo_id: str, base: str, prompt: str) -> list[str]:
    files = set(card_data.get("model_files", []))
    repo = json.dumps(repo_id)
    lines: list[str] = []
    if "model_index.json" in files:  # a fully fine-tuned (DreamBooth) pipeline: model/ is a diffusers folder
        lines += ["### diffusers", "", "`model/` is a complete diffusers pipeline folder:", ""]
        lines += _python("import torch", "from diffusers import AutoPipelineForText2Image",
                         "from huggingface_hub import snapshot_download", "",
                         f'folder = snapshot_download({repo}, allow_patterns=["model/*"])',
                         'pipe = AutoPipelineForText2Image.from_pretrained(f"{folder}/model")', _DEVICE,
                         f"image = pipe({prompt}, num_inference_steps={STEPS}).images[0]")
        return lines
    steps = []
    if LORA_FILE in files:
        steps.append(f"pipe.load_lora_weights({repo})" if card_data.get("lora_at_root") else
                     f'pipe.load_lora_weights({repo}, subfolder="model", weight_name="{LORA_FILE}")')
    for name in sorted(files):
        if name.startswith("learned_embeds") and name.endswith(".safetensors"):
            steps.append(f'pipe.load_textual_inversion({repo}, subfolder="model", weight_name="{name}")')
    if steps:
        lines += ["### diffusers", ""]
        lines += _python(*_text_to_image_start(base), *steps, f"image = pipe({prompt}, num_inference_steps={STEPS}).images[0]")
    format = _tool_format(card_data.get("tags", [])) if LORA_FILE in files else None
    if format is not None:
        lines += _tool_snippets(repo_id, format, REPO_EXPORT_NAMES[format] in files, base, prompt)
    return lines


def _tool_snippets(repo_id: str, format: str, in_repo: bool, base: str, prompt: str) -> list[str]:
    """The LoRA file for A1111 / Forge / ComfyUI: the one saved in `model/` (`export_formats`), or else the
    `tinypipe export` command that writes it; and diffusers reading the same file."""
    repo = json.dumps(repo_id)
    tools = "A1111, Forge, ComfyUI, kohya" if format == "kohya" else "ComfyUI"
    if in_repo:
        name = REPO_EXPORT_NAMES[format]
        lines = [f"### {tools} (`model/{name}`)", "",
                 f"`model/{name}` is the LoRA in {format}'s format ({_FORMAT_WORDS[format]}). Download it:", ""]
        lines += _python("from huggingface_hub import hf_hub_download", "",
                         f'path = hf_hub_download({repo}, "model/{name}")')
        load = f'pipe.load_lora_weights({repo}, subfolder="model", weight_name="{name}")'
    else:
        name = f"{repo_id.rsplit('/', 1)[-1]}.safetensors"
        lines = [f"### {tools} (one {format}-format file)", "",
                 f"Write the LoRA in {format}'s format ({_FORMAT_WORDS[format]}; `pip install tinypipe`):", "",
                 "```bash", f"tinypipe export {repo_id} --format {format} --to {name}", "```", ""]
        load = f"pipe.load_lora_weights({json.dumps(name)})"
    a1111 = (f"A1111 / Forge: copy `{name}` into `models/Lora/` and add `<lora:{name.removesuffix('.safetensors')}:1>` "
             "to the prompt. " if format == "kohya" else "")
    lines += [f"{a1111}ComfyUI: copy `{name}` into `ComfyUI/models/loras/` and pick it in a *Load LoRA* node. "
              "diffusers reads the same file:", ""]
    return lines + _python(*_text_to_image_start(base), load, f"image = pipe({prompt}, num_inference_steps={STEPS}).images[0]")


def _peft_snippet(card_data: dict[str, Any], repo_id: str, base: str) -> list[str]:
    if "adapter_config.json" not in card_data.get("model_files", []):
        return []
    return ["### peft", ""] + _python(
        "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f"base_model = {base}", "tokenizer = AutoTokenizer.from_pretrained(base_model)",
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), {json.dumps(repo_id)}, subfolder="model")',
        'inputs = tokenizer("Hello", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))")


def usage_section(card_data: dict[str, Any], repo_id: str) -> list[str]:
    """The "How to use" section of the card, as Markdown lines.

    Args:
        card_data: What `card_data_from_repo` returns (`model_files`, `base_model`, `tags`, prompts, and
            `lora_at_root` when the LoRA is also published at the repo root).
        repo_id: The hub repo the card describes.

    Returns:
        The lines, starting with the `## How to use` heading; each snippet in a fenced `python` / `bash` block.
    """
    base_model: Optional[str] = card_data.get("base_model")
    base = json.dumps(base_model) if base_model else f'"{_UNKNOWN_BASE}"'
    text = card_data.get("instance_prompt") or card_data.get("prompts", {}).get("Validation prompt") or "a photo"
    causal_lm = "text-generation" in card_data.get("tags", [])
    lines = ["## How to use", "", "### tinypipe", ""]
    lines += _python("from tinypipe import AutoModelPipeline", "",
                     f'pipeline = AutoModelPipeline.from_pretrained("tinypipe-cache", {json.dumps(repo_id)})  '
                     "# downloaded into ./tinypipe-cache/",
                     'print(pipeline.generate(prompt="Hello", max_new_tokens=32))' if causal_lm else
                     f'pipeline.generate({json.dumps(text)}, num_inference_steps={STEPS}, seed=0)[0].save("sample.png")')
    if causal_lm:
        return lines + _peft_snippet(card_data, repo_id, base)
    return lines + _diffusion_snippets(card_data, repo_id, base, json.dumps(text))
