"""Benchmark: seconds per step and peak RSS of DreamBooth (+prior, LoRA) and textual inversion, tinypipe vs diffusers-style loops.

Each variant runs in its own process on the same model, data, resolution and batch:
- `dreambooth-reference`: a loop written like diffusers' `train_dreambooth_lora.py --with_prior_preservation`:
  every step VAE-encodes the instance *and* class images and text-encodes both prompts, runs the UNet on the
  joint batch, splits the loss (instance + prior_loss_weight x class), AdamW on the LoRA weights.
- `dreambooth-tinypipe`: `DreamBoothTrainer.train(use_lora=True, with_prior_preservation=True)` with a folder of
  class images (no generation).
- `ti-reference`: a loop written like diffusers' `textual_inversion.py`: every step VAE-encodes the images, runs
  the text encoder with the whole token-embedding matrix trainable, UNet forward + backward, AdamW over the
  whole matrix, then copies the frozen rows back.
- `ti-tinypipe`: `TextualInversionTrainer.train`.

tinypipe is timed as (T(warm-up + n steps) - T(warm-up steps)) / n, so start-up and caching are excluded the
same way the reference loops' warm-up steps are. Targets (issue 4): DreamBooth(+prior) <= 0.75x its reference,
textual inversion <= 0.8x, peak RSS no higher.

Usage: python bench/bench_dreambooth_ti_step.py [--model tiny|sd128] [--method dreambooth|ti|both] [--steps 30] [--batch 2]
"""

import argparse
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lora_step import build_model  # noqa: E402  (the same tiny / sd128 models as the LoRA benchmark)

WARMUP = 3
INSTANCE_PROMPT, CLASS_PROMPT = "a photo of sks circle", "a photo of a square"
TOKEN, INITIALIZER = "<sks-shape>", "circle"


def resolution_of(model: str) -> int:
    return 64 if model == "tiny" else 128


def pixels_and_ids(pipe, resolution: int, prompts: list[str], shape: str = "circle"):
    from tinypipe.builtin.tiny_sd import shapes_dataset
    from tinypipe.data.images import image_to_tensor

    images = [image for image, _ in shapes_dataset(count=8, resolution=resolution, shape=shape)]
    pixels = torch.stack([image_to_tensor(image, resolution) for image in images])
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    return pixels, ids


def dreambooth_reference(folder: Path, steps: int, batch: int, resolution: int) -> dict:
    """Like train_dreambooth_lora.py with prior preservation (no pre-computed text embeddings)."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    instance_pixels, instance_ids = pixels_and_ids(pipe, resolution, [INSTANCE_PROMPT] * 8)
    class_pixels, class_ids = pixels_and_ids(pipe, resolution, [CLASS_PROMPT] * 8, shape="square")
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    parameters = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(0)
    times, losses = [], []
    for step in range(steps + WARMUP):
        start = time.perf_counter()
        index = torch.randint(0, 8, (batch,))
        pixels = torch.cat([instance_pixels[index], class_pixels[index]])
        ids = torch.cat([instance_ids[index], class_ids[index]])
        with torch.no_grad():
            latents = pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
            text = pipe.text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),))
        prediction = pipe.unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, text).sample
        prediction, prior_prediction = prediction.chunk(2)
        target, prior_target = noise.chunk(2)
        loss = F.mse_loss(prediction.float(), target.float()) + 1.0 * F.mse_loss(prior_prediction.float(), prior_target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
            losses.append(loss.item() / 2)  # the mean per-example loss, as tinypipe's recording below
    return {"seconds_per_step": sum(times) / len(times), "final_loss": sum(losses[-10:]) / len(losses[-10:])}


def ti_reference(folder: Path, steps: int, batch: int, resolution: int) -> dict:
    """Like textual_inversion.py: the whole embedding matrix trains, the other rows are copied back each step."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from tinypipe.trainers.textual_inversion import OBJECT_TEMPLATES

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    tokenizer.add_tokens([TOKEN])
    token_id = tokenizer.convert_tokens_to_ids(TOKEN)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[token_id] = text_encoder.get_input_embeddings().weight[
            tokenizer.encode(INITIALIZER, add_special_tokens=False)[0]]
    pixels, _ = pixels_and_ids(pipe, resolution, [INSTANCE_PROMPT])
    template_ids = tokenizer([template.format(TOKEN) for template in OBJECT_TEMPLATES], padding="max_length",
                             max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    pipe.unet.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    text_encoder.requires_grad_(False)  # all but the token embedding, as the script freezes encoder, norm and positions
    text_encoder.get_input_embeddings().requires_grad_(True)
    optimizer = torch.optim.AdamW(text_encoder.get_input_embeddings().parameters(), lr=5e-4, weight_decay=1e-2)
    original = text_encoder.get_input_embeddings().weight.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[token_id] = False
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(0)
    times, losses = [], []
    text_encoder.train()
    for step in range(steps + WARMUP):
        start = time.perf_counter()
        index = torch.randint(0, 8, (batch,))
        with torch.no_grad():
            latents = pipe.vae.encode(pixels[index]).latent_dist.sample() * pipe.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        text = text_encoder(template_ids[torch.randint(0, len(template_ids), (batch,))])[0]
        prediction = pipe.unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, text).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight[keep] = original[keep]
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
            losses.append(loss.item())
    return {"seconds_per_step": sum(times) / len(times), "final_loss": sum(losses[-10:]) / len(losses[-10:])}


def run_tinypipe(method: str, folder: Path, steps: int, batch: int, resolution: int, work: Path) -> dict:
    from tinypipe.builtin.tiny_sd import shapes_dataset, write_shapes_folder
    from tinypipe.trainers import (
        DreamBoothTrainer,
        TextualInversionTrainer,
        diffusion_steps,
    )

    logging.disable(logging.WARNING)
    losses: list[float] = []
    original = diffusion_steps.denoising_losses

    def recording(*args, **kwargs):
        value = original(*args, **kwargs)
        losses.append(value.mean().item())
        return value

    diffusion_steps.denoising_losses = recording
    data = shapes_dataset(count=8, resolution=resolution)
    common = dict(data=data, base_model=str(folder), train_batch_size=batch, resolution=resolution, num_validation_images=0,
                  use_8bit_adam=False)
    if method == "dreambooth":
        class_folder = write_shapes_folder(work / "class_images", count=8, resolution=resolution, shape="square")

        def train(count: int) -> None:
            DreamBoothTrainer().train(**common, instance_prompt=INSTANCE_PROMPT, use_lora=True, with_prior_preservation=True,
                                      class_prompt=CLASS_PROMPT, class_data_dir=str(class_folder), num_class_images=8,
                                      learning_rate=1e-4, max_train_steps=count)
    else:
        def train(count: int) -> None:
            TextualInversionTrainer().train(**common, placeholder_token=TOKEN, initializer_token=INITIALIZER,
                                            learning_rate=5e-4, max_train_steps=count)

    def timed(count: int) -> float:
        gc.collect()
        start = time.perf_counter()
        train(count)
        return time.perf_counter() - start

    timed(WARMUP)  # first call pays one-time costs (imports, kernel set-up) that would make the difference too small
    short = timed(WARMUP)
    losses.clear()
    full = timed(WARMUP + steps)
    return {"seconds_per_step": (full - short) / steps, "final_loss": sum(losses[-10:]) / len(losses[-10:])}


def child(arguments) -> None:
    folder, resolution = Path(arguments.folder), resolution_of(arguments.model)
    method, kind = arguments.variant.split(":")
    if kind == "tinypipe":
        with tempfile.TemporaryDirectory() as work:
            result = run_tinypipe(method, folder, arguments.steps, arguments.batch, resolution, Path(work))
    elif method == "dreambooth":
        result = dreambooth_reference(folder, arguments.steps, arguments.batch, resolution)
    else:
        result = ti_reference(folder, arguments.steps, arguments.batch, resolution)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("sd128", "tiny"), default="tiny")
    parser.add_argument("--method", choices=("dreambooth", "ti", "both"), default="both")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.variant:
        return child(arguments)

    targets = {"dreambooth": 0.75, "ti": 0.80}
    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("TINYPIPE_HOME", str(Path(work) / "home"))
        folder = build_model(arguments.model, Path(work) / "model")
        print(f"model {arguments.model}: {resolution_of(arguments.model)} px, batch {arguments.batch}, {arguments.steps} timed steps, "
              f"{torch.get_num_threads()} threads")
        for method in (("dreambooth", "ti") if arguments.method == "both" else (arguments.method,)):
            results = {}
            for kind in ("reference", "tinypipe"):
                output = subprocess.run([sys.executable, __file__, "--variant", f"{method}:{kind}", "--folder", str(folder),
                                         "--model", arguments.model, "--steps", str(arguments.steps), "--batch", str(arguments.batch)],
                                        capture_output=True, text=True, check=True).stdout
                results[kind] = result = json.loads(output.strip().splitlines()[-1])
                print(f"  {method:10s} {kind:9s} {result['seconds_per_step']:.4f} s/step  final loss {result['final_loss']:.4f}  "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB")
            ours, reference = results["tinypipe"], results["reference"]
            print(f"  {method}: tinypipe / reference = {ours['seconds_per_step'] / reference['seconds_per_step']:.2f}x "
                  f"(target <= {targets[method]:.2f}); peak RSS ratio {ours['peak_rss_mib'] / reference['peak_rss_mib']:.2f} (target <= 1)")


if __name__ == "__main__":
    main()
