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


def test_a_lora_of_a_family_without_a_kohya_layout_offers_no_kohya_file():
    flux = {**SD_LORA, "tags": ["diffusers", "flux", "lora"]}
    text = "\n".join(usage_section(flux, "me/flux"))
    assert "load_lora_weights" in text and "tinypipe export" not in text


def test_an_unknown_base_model_is_named_as_such_not_invented():
    text = "\n".join(usage_section({**SD_LORA, "base_model": None}, "me/dog"))
    assert "base_model = \"<the base model's hub id or folder>\"" in text
