"""Benchmark: a LoRA training step per model family, tinypipe vs a loop written like the diffusers example script.

For each built-in family model (`tinypipe/tiny-sd`, `tinypipe/tiny-sdxl`), on the CPU, same data, resolution, batch
and steps, each variant in its own process:
- `reference`: like diffusers' `train_dreambooth_lora.py` / `train_dreambooth_lora_sdxl.py` (with frozen text
  encoders): every step encodes the images with the VAE and the captions with the text encoder(s) (SDXL: both, the
  penultimate states concatenated, pooled from the second, plus `add_time_ids`), then UNet forward + backward + AdamW.
- `tinypipe`: `LoRATrainer.train`, timed as (T(n2 steps) - T(n1 steps)) / (n2 - n1) after a warm-up call, so start-up
  and caching are excluded; its peak RSS is measured in a separate process making one training call.

Targets (issue 16): tinypipe <= 0.9x the reference's seconds per step, peak RSS <= the reference's.

Usage: python bench/bench_families.py [--steps 20] [--batch 2]
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
MODELS = {"sd": ("tinypipe/tiny-sd", 64), "sdxl": ("tinypipe/tiny-sdxl", 32)}


def reference_loop(family: str, steps: int, batch: int) -> dict:
    """The diffusers-example-style loop: VAE and text encoders every step."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from tinypipe.builtin.tiny_sd import shapes_dataset
    from tinypipe.data.images import image_to_tensor
    from tinypipe.models.diffusers_base import load_base_pipeline

    name, resolution = MODELS[family]
    pipe = load_base_pipeline(name)
    examples = shapes_dataset(count=8, resolution=resolution)
    pixels = torch.stack([image_to_tensor(image, resolution) for image, _ in examples])
    captions = [caption for _, caption in examples]
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    ids = [tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids for tokenizer in tokenizers]
    for model in (pipe.unet, pipe.vae, *encoders):
        model.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    parameters = [parameter for parameter in pipe.unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scale = pipe.vae.config.scaling_factor
    torch.manual_seed(0)
    times = []
    for step in range(steps + WARMUP):
        start = time.perf_counter()
        index = torch.randint(0, len(pixels), (batch,))
        with torch.no_grad():
            latents = pipe.vae.encode(pixels[index]).latent_dist.sample() * scale
            if family == "sdxl":
                outputs = [encoder(token_ids[index], output_hidden_states=True) for encoder, token_ids in zip(encoders, ids)]
                text = torch.cat([output.hidden_states[-2] for output in outputs], dim=-1)
                time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch, dtype=torch.float32)
                extra = {"added_cond_kwargs": {"text_embeds": outputs[-1][0], "time_ids": time_ids}}
            else:
                text, extra = pipe.text_encoder(ids[0][index])[0], {}
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        prediction = pipe.unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, text, **extra).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
    return {"seconds_per_step": sum(times) / len(times)}


def tinypipe_loop(family: str, steps: int, batch: int, single: bool) -> dict:
    import logging

    from tinypipe.builtin.tiny_sd import shapes_dataset
    from tinypipe.trainers import LoRATrainer

    logging.disable(logging.WARNING)
    name, resolution = MODELS[family]

    def timed(count: int) -> float:
        start = time.perf_counter()
        LoRATrainer().train(data=shapes_dataset(count=8, resolution=resolution), base_model=name,
                            instance_prompt="a photo of sks circle", max_train_steps=count, train_batch_size=batch,
                            resolution=resolution, learning_rate=1e-3, num_validation_images=0, use_8bit_adam=False,
                            checkpointing_steps=0)
        return time.perf_counter() - start

    if single:
        timed(WARMUP + steps)
        return {"seconds_per_step": float("nan")}
    timed(WARMUP)
    short = timed(WARMUP)
    full = timed(WARMUP + steps)
    return {"seconds_per_step": (full - short) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--family", choices=tuple(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.variant:
        if arguments.variant == "reference":
            result = reference_loop(arguments.family, arguments.steps, arguments.batch)
        else:
            result = tinypipe_loop(arguments.family, arguments.steps, arguments.batch, arguments.variant == "tinypipe-memory")
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("TINYPIPE_HOME", str(Path(work) / "home"))
        print(f"batch {arguments.batch}, {arguments.steps} timed steps, {torch.get_num_threads()} threads")
        for family, (name, resolution) in MODELS.items():
            results = {}
            for variant in ("reference", "tinypipe", "tinypipe-memory"):
                output = subprocess.run([sys.executable, __file__, "--family", family, "--variant", variant,
                                         "--steps", str(arguments.steps), "--batch", str(arguments.batch)],
                                        capture_output=True, text=True, check=True).stdout
                results[variant] = json.loads(output.strip().splitlines()[-1])
            ours, peer = results["tinypipe"], results["reference"]
            memory = results["tinypipe-memory"]["peak_rss_mib"]
            print(f"{family:5s} {name} {resolution} px: tinypipe {ours['seconds_per_step']:.4f} s/step vs reference "
                  f"{peer['seconds_per_step']:.4f} ({ours['seconds_per_step'] / peer['seconds_per_step']:.2f}x, target <= 0.9); "
                  f"peak RSS {memory:.0f} vs {peer['peak_rss_mib']:.0f} MiB ({memory / peer['peak_rss_mib']:.2f}x, target <= 1)")


if __name__ == "__main__":
    main()
