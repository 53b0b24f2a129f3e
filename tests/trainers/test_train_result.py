"""What `train()` returns and shows is what it saved: the returned pipeline, the validation images, the "after"
row of before_after.png, the repo reloaded with tinypipe and in plain diffusers / peft all give the same output for
the same seed - under bf16 mixed precision too, with no accelerate wrapper left on the returned pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image

from tinypipe import AutoModelPipeline
from tinypipe.builtin.tiny_sd import builtin_model_folder
from tinypipe.builtin.tiny_llama import TINY_INSTRUCTIONS, TINY_LLAMA, builtin_lm_folder
from tinypipe.trainers import CausalLMTrainer, DreamBoothTrainer, LoRATrainer, TextualInversionTrainer
from tinypipe.training.diffusion_steps import before_after_box

PROMPT = "a photo of sks circle"
TOKEN_PROMPT = "a photo of <sks>"
FAST = dict(data="tinypipe/shapes", max_train_steps=2, learning_rate=1e-3, use_8bit_adam=False, num_validation_images=1,
            validation_inference_steps=2, validation_epochs=100)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one precision per process; these tests train in bf16 between tests that train in fp32.

    (Until a second `train()` with other accelerate settings works in the same process - issue 12 - on its own.)
    """
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def accelerate_wrappers(*models: torch.nn.Module) -> list[str]:
    """Modules whose forward accelerate replaced (autocast), or that are a DDP wrapper."""
    return [type(module).__name__ for model in models for module in model.modules()
            if "_original_forward" in module.__dict__ or isinstance(module, torch.nn.parallel.DistributedDataParallel)]


def plain_diffusers(name: str, output) -> "object":
    """The saved repo loaded with diffusers alone, as a user of another tool would."""
    from diffusers import StableDiffusionPipeline

    if name == "dreambooth":
        plain = StableDiffusionPipeline.from_pretrained(output / "model", safety_checker=None)
    else:
        plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder("tinypipe/tiny-sd"), safety_checker=None)
        if name == "lora":
            plain.load_lora_weights(output / "model")
        else:
            plain.load_textual_inversion(output / "model" / "learned_embeds.safetensors")
    plain.set_progress_bar_config(disable=True)
    return plain


TRAINERS = {
    "lora": (LoRATrainer, dict(instance_prompt=PROMPT), PROMPT),
    "dreambooth": (DreamBoothTrainer, dict(instance_prompt=PROMPT), PROMPT),
    "textual_inversion": (TextualInversionTrainer, dict(placeholder_token="<sks>", initializer_token="circle",
                                                        validation_prompt=TOKEN_PROMPT), TOKEN_PROMPT),
}


@pytest.mark.parametrize("name", TRAINERS)
def test_returned_pipeline_validation_images_and_saved_repo_generate_the_same_under_bf16(name, tmp_path):
    trainer_class, settings, prompt = TRAINERS[name]
    pipeline = trainer_class().train(**FAST, **settings, mixed_precision="bf16", output_dir=str(tmp_path))
    assert accelerate_wrappers(pipeline.unet, pipeline.text_encoder, pipeline.vae) == []

    sampling = dict(num_inference_steps=2, guidance_scale=7.5)
    from_repo = as_array(AutoModelPipeline.from_pretrained(tmp_path).generate(prompt, seed=0, **sampling)[0])
    assert np.array_equal(as_array(pipeline.generate(prompt, seed=0, **sampling)[0]), from_repo)
    assert np.array_equal(as_array(Image.open(tmp_path / "validation/epoch-0001/image-00.png")), from_repo)
    before_after = Image.open(tmp_path / "validation/before_after.png").convert("RGB")
    after = before_after.crop(before_after_box(0, 1, 0, Image.open(tmp_path / "validation/epoch-0001/image-00.png").size))
    assert np.array_equal(as_array(after), from_repo)  # the "fine-tuned" row
    plain = plain_diffusers(name, tmp_path)(prompt, generator=torch.Generator("cpu").manual_seed(0), **sampling).images[0]
    assert np.array_equal(as_array(plain), from_repo)


def test_returned_causal_lm_and_saved_repo_generate_the_same_tokens_under_bf16(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    pipeline = CausalLMTrainer().train(data=TINY_INSTRUCTIONS, max_train_steps=3, train_batch_size=4, learning_rate=1e-2,
                                       mixed_precision="bf16", validation_split=0.1, output_dir=str(tmp_path))
    assert accelerate_wrappers(pipeline.model) == []

    prompts = ["What is the capital of France?", "Name a color."]
    sampling = dict(max_new_tokens=8, do_sample=True, temperature=2.0, seed=3)
    reloaded = AutoModelPipeline.from_pretrained(tmp_path)
    assert pipeline.generate_ids(prompts, **sampling) == reloaded.generate_ids(prompts, **sampling)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_lm_folder(TINY_LLAMA)), tmp_path / "model").eval()
    batch = pipeline.tokenizer(prompts[0], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(plain(**batch).logits, pipeline.model(**batch).logits)
