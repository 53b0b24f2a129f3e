"""Benchmark: seconds per LoRA training step and peak RSS, tinypipe vs a diffusers-style reference loop.

Variants, each run in its own process on the same model, data, resolution and batch:
- `reference`: a loop written like diffusers' `train_dreambooth_lora.py`: every step encodes the images
  with the VAE and the captions with the text encoder, then UNet forward + backward + AdamW.
- `floor`: only the UNet forward + backward + optimizer step, on precomputed latents/embeddings: the
  least any LoRA step can cost with this UNet.
- `tinypipe`: `LoRATrainer.train`, timed as (T(n2 steps) - T(n1 steps)) / (n2 - n1) after one discarded
  warm-up call, so start-up and caching are excluded the same way the reference's warm-up is. Its peak
  memory is measured in a separate process that makes one training call, as the reference does.

Models: `tiny` (the built-in 64 px model, 4x VAE) and `sd128` (random init, 128 px, 8x VAE, a wider UNet
so the step dominates). Targets (issue 3): tinypipe <= 1.1x floor and <= 0.75x reference; final loss
within 10% of the reference at equal steps; peak RSS no higher.

Usage: python bench/bench_lora_step.py [--model sd128|tiny] [--steps 30] [--batch 2]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WARMUP = 3


def build_model(name: str, folder: Path) -> Path:
    """Write the benchmark's base model as a diffusers folder (random init for sd128)."""
    from tinypipe.builtin.tiny_sd import TINY_SD, builtin_model_folder

    if name == "tiny":
        return builtin_model_folder(TINY_SD)
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from tinypipe.builtin.tiny_sd import load_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = load_clip_tokenizer()
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(64, 128, 256), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, sample_size=128)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def resolution_of(model: str) -> int:
    return 64 if model == "tiny" else 128


def data_batch(pipe, batch: int, resolution: int):
    from tinypipe.builtin.tiny_sd import shapes_dataset
    from tinypipe.data.images import image_to_tensor

    examples = shapes_dataset(count=8, resolution=resolution)
    pixels = torch.stack([image_to_tensor(image, resolution) for image, _ in examples])
    ids = pipe.tokenizer([caption for _, caption in examples], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    return pixels, ids


def lora_unet(pipe, rank: int = 4):
    from peft import LoraConfig

    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    return [p for p in pipe.unet.parameters() if p.requires_grad]


def run_loop(folder: Path, variant: str, steps: int, batch: int, resolution: int) -> dict:
    """The reference loop (VAE + text encoder every step) or the UNet-only floor."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pixels, ids = data_batch(pipe, batch, resolution)
    parameters = lora_unet(pipe)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scale = pipe.vae.config.scaling_factor
    with torch.no_grad():
        fixed_latents = pipe.vae.encode(pixels).latent_dist.sample() * scale
        fixed_text = pipe.text_encoder(ids)[0]
    torch.manual_seed(0)
    times, losses = [], []
    for step in range(steps + WARMUP):
        start = time.perf_counter()
        index = torch.randint(0, len(pixels), (batch,))
        if variant == "reference":
            with torch.no_grad():
                latents = pipe.vae.encode(pixels[index]).latent_dist.sample() * scale
                text = pipe.text_encoder(ids[index])[0]
        else:
            latents, text = fixed_latents[index], fixed_text[index]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        prediction = pipe.unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, text).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
            losses.append(loss.item())
    return {"seconds_per_step": sum(times) / len(times), "final_loss": sum(losses[-10:]) / len(losses[-10:])}


def run_tinypipe(folder: Path, steps: int, batch: int, resolution: int, single: bool = False) -> dict:
    import logging

    from tinypipe.builtin.tiny_sd import shapes_dataset
    from tinypipe.trainers import LoRATrainer
    from tinypipe.trainers import lora as lora_module

    logging.disable(logging.WARNING)
    losses: list[float] = []
    original = lora_module.steps.denoising_losses

    def recording(*args, **kwargs):
        value = original(*args, **kwargs)
        losses.append(value.mean().item())
        return value

    lora_module.steps.denoising_losses = recording

    def timed(count: int) -> float:
        start = time.perf_counter()
        LoRATrainer().train(data=shapes_dataset(count=8, resolution=resolution), base_model=str(folder), instance_prompt="a photo of sks circle",
                            max_train_steps=count, train_batch_size=batch, resolution=resolution, learning_rate=1e-3,
                            num_validation_images=0, use_8bit_adam=False)
        return time.perf_counter() - start

    if single:  # peak memory of one training call in its own process, as a user runs it
        timed(WARMUP + steps)
        return {"seconds_per_step": float("nan"), "final_loss": float("nan")}
    timed(WARMUP)  # first call pays one-time costs (imports, kernel set-up) that would make the difference too small
    short = timed(WARMUP)
    losses.clear()
    full = timed(WARMUP + steps)
    return {"seconds_per_step": (full - short) / steps, "final_loss": sum(losses[-10:]) / len(losses[-10:])}


def child(arguments) -> None:
    folder = Path(arguments.folder)
    resolution = resolution_of(arguments.model)
    if arguments.variant.startswith("tinypipe"):
        result = run_tinypipe(folder, arguments.steps, arguments.batch, resolution, single=arguments.variant == "tinypipe-memory")
    else:
        result = run_loop(folder, arguments.variant, arguments.steps, arguments.batch, resolution)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("sd128", "tiny"), default="sd128")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.variant:
        return child(arguments)

    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("TINYPIPE_HOME", str(Path(work) / "home"))
        folder = build_model(arguments.model, Path(work) / "model")
        print(f"model {arguments.model}: {resolution_of(arguments.model)} px, batch {arguments.batch}, {arguments.steps} timed steps, "
              f"{torch.get_num_threads()} threads")
        results = {}
        for variant in ("reference", "floor", "tinypipe", "tinypipe-memory"):
            output = subprocess.run([sys.executable, __file__, "--variant", variant, "--folder", str(folder), "--model", arguments.model,
                                     "--steps", str(arguments.steps), "--batch", str(arguments.batch)],
                                    capture_output=True, text=True, check=True).stdout
            results[variant] = json.loads(output.strip().splitlines()[-1])
            r = results[variant]
            if variant == "tinypipe-memory":
                continue
            print(f"  {variant:9s} {r['seconds_per_step']:.4f} s/step  final loss {r['final_loss']:.4f}  peak RSS {r['peak_rss_mib']:.0f} MiB")
        ours, reference, floor = results["tinypipe"], results["reference"], results["floor"]
        print(f"tinypipe / floor     = {ours['seconds_per_step'] / floor['seconds_per_step']:.2f}x (target <= 1.10)")
        print(f"tinypipe / reference = {ours['seconds_per_step'] / reference['seconds_per_step']:.2f}x (target <= 0.75)")
        print(f"floor / reference    = {floor['seconds_per_step'] / reference['seconds_per_step']:.2f}x")
        print(f"final loss: tinypipe {ours['final_loss']:.4f} vs reference {reference['final_loss']:.4f} "
              f"({(ours['final_loss'] / reference['final_loss'] - 1) * 100:+.1f}%, target within 10%)")
        single = results["tinypipe-memory"]["peak_rss_mib"]
        print(f"peak RSS, one training call per process: tinypipe {single:.0f} MiB vs reference {reference['peak_rss_mib']:.0f} MiB "
              f"({single / reference['peak_rss_mib']:.2f}x, target <= 1); the timed tinypipe process, three calls: "
              f"{ours['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
