"""`tinypipe.config.card_usage`: the card offers the code each tool needs, and only what works for the repo (the
snippets themselves run in tests/test_publish.py)."""

from tinypipe.config.card_usage import usage_section

SD_LORA = {"base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "tags": ["diffusers", "stable-diffusion", "lora"],
           "model_files": ["config.json", "filelist.txt", "pytorch_lora_weights.safetensors"], "instance_prompt": "a sks dog"}


def test_a_stable_diffusion_lora_card_offers_diffusers_and_the_kohya_file():
    text = "\n".join(usage_section(SD_LORA, "me/dog"))
    assert 'pipe.load_lora_weights("me/dog", subfolder="model", weight_name="pytorch_lora_weights.safetensors")' in text
    assert 'base_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"' in text
    assert "tinypipe export me/dog --format kohya --to dog.safetensors" in text and "<lora:dog:1>" in text


def test_each_familys_card_offers_the_file_its_tools_read_and_none_where_only_diffusers_is_written():
    sdxl = "\n".join(usage_section({**SD_LORA, "tags": ["diffusers", "stable-diffusion-xl", "lora"]}, "me/xl"))
    assert "tinypipe export me/xl --format kohya --to xl.safetensors" in sdxl and "<lora:xl:1>" in sdxl
    flux = "\n".join(usage_section({**SD_LORA, "tags": ["diffusers", "flux", "lora"]}, "me/flux"))
    assert "tinypipe export me/flux --format comfyui --to flux.safetensors" in flux
    assert "ComfyUI/models/loras/" in flux and "<lora:" not in flux  # A1111 does not read FLUX.1 LoRAs
    sd3 = "\n".join(usage_section({**SD_LORA, "tags": ["diffusers", "stable-diffusion-3", "lora"]}, "me/sd3"))
    assert "load_lora_weights" in sd3 and "tinypipe export" not in sd3


def test_a_card_names_the_lora_file_saved_with_export_formats_instead_of_the_export_command():
    saved = {**SD_LORA, "model_files": [*SD_LORA["model_files"], "kohya_lora.safetensors"]}
    text = "\n".join(usage_section(saved, "me/dog"))
    assert 'hf_hub_download("me/dog", "model/kohya_lora.safetensors")' in text
    assert 'pipe.load_lora_weights("me/dog", subfolder="model", weight_name="kohya_lora.safetensors")' in text
    assert "<lora:kohya_lora:1>" in text and "tinypipe export" not in text


def test_an_unknown_base_model_is_named_as_such_not_invented():
    text = "\n".join(usage_section({**SD_LORA, "base_model": None}, "me/dog"))
    assert "base_model = \"<the base model's hub id or folder>\"" in text
