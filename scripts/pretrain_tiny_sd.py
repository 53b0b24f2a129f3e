"""Pretrain the shipped weights of `tinypipe/tiny-sd`, so that the built-in model draws crude coloured shapes.

```bash
python scripts/pretrain_tiny_sd.py --output tinypipe/builtin/weights/tiny_sd.safetensors
```

Starting from the seeded random initialisation of `build_tiny_stable_diffusion(weights=None)`, on one CPU
thread and with fixed seeds (about 50 minutes on a 2-core machine; 4000 VAE steps, 2000 UNet steps):

1. the VAE learns to reconstruct 64 px `shapes_dataset` images of all four shapes in many colours
   (L1 + MSE, with the shape's pixels weighted 5x so that small shapes keep their colour, plus a small KL
   term); its `scaling_factor` is then measured so that scaled latents have unit std. The shipped VAE
   reconstructs the mean colour of a shape image within about 2 units of 255;
2. the UNet and the text encoder learn, together, to predict the noise (epsilon, Stable Diffusion's DDPM
   schedule) in the VAE latents of captioned images such as "a photo of a red circle" or "a blue square".
   One caption in ten is dropped (empty prompt), which makes classifier-free guidance work.

All three models are written to one safetensors file in float16, keys prefixed `unet.`, `vae.` and
`text_encoder.`, with the VAE scaling factor in its metadata; `build_tiny_stable_diffusion` loads it.
"""

import argparse
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from tinypipe.builtin.tiny_sd import (
    SHAPES,
    TINY_SD_WEIGHTS,
    build_tiny_stable_diffusion,
    shapes_dataset,
)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 30),
    "purple": (130, 50, 170),
    "orange": (245, 140, 20),
    "black": (25, 25, 25),
    "pink": (240, 120, 180),
    "brown": (130, 80, 40),
    "gray": (120, 120, 120),
}
"""The colour words the UNet learns (each one token in the shipped vocabulary), with their RGB values."""

CAPTION_TEMPLATES = ("a photo of a {color} {shape}", "a {color} {shape}", "a picture of a {color} {shape}")
"""The caption forms of the UNet's training images."""


def _images_to_tensor(images: list) -> torch.Tensor:
    """PIL RGB images -> a float tensor `(N, 3, H, W)` in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def _jittered(color: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, channel + rng.randint(-amount, amount))) for channel in color)


def make_vae_images(count: int, seed: int) -> torch.Tensor:
    """`count` shapes images, half in the named `COLORS` (jittered) and half in uniformly random colours.

    Returns:
        A tensor `(count, 3, 64, 64)` in [-1, 1].
    """
    rng = random.Random(seed)
    images = []
    for index in range(count):
        if index % 2 == 0:
            color = _jittered(rng.choice(list(COLORS.values())), rng, 25)
        else:
            color = tuple(rng.randint(0, 255) for _ in range(3))
        layout_seed = rng.randrange(2**31)
        images.append(shapes_dataset(count=1, shape=rng.choice(SHAPES), color=color, seed=layout_seed)[0][0])
    return _images_to_tensor(images)


def make_captioned_images(layouts_per_pair: int, seed: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """`layouts_per_pair` images of every (colour, shape) pair of `COLORS` x `SHAPES`, colours jittered a little.

    Returns:
        A tensor `(N, 3, 64, 64)` in [-1, 1] and the `(color, shape)` words of each image.
    """
    rng = random.Random(seed)
    images, labels = [], []
    for color_name, color in COLORS.items():
        for shape in SHAPES:
            for _ in range(layouts_per_pair):
                layout_seed = rng.randrange(2**31)
                jittered = _jittered(color, rng, 15)
                images.append(shapes_dataset(count=1, shape=shape, color=jittered, seed=layout_seed)[0][0])
                labels.append((color_name, shape))
    return _images_to_tensor(images), labels


def _learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak`, then cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled index batches over `range(count)`."""
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def train_vae(
    pipeline: StableDiffusionPipeline,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    kl_weight: float = 1e-4,
    shape_weight: float = 4.0,
    seed: int = 0,
) -> None:
    """Train `pipeline.vae` to reconstruct `images`, in place: L1 + MSE with the shape's pixels weighted
    `1 + shape_weight` (background 1), plus `kl_weight` x per-element KL."""
    vae = pipeline.vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(len(images), batch_size, generator)
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, learning_rate, warmup=min(50, steps // 10 + 1))
        batch = images[next(batches)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.sample(generator=generator)
        reconstruction = vae.decode(latents).sample
        kl = posterior.kl().mean() / latents[0].numel()
        # The shape covers a small part of each image: weight its pixels up so that its colour is kept.
        background = batch.flatten(2).median(dim=2).values[:, :, None, None]
        weight = 1 + shape_weight * ((batch - background).abs().amax(dim=1, keepdim=True) > 0.3).float()
        error = reconstruction - batch
        loss = (weight * (error.abs() + error.pow(2))).mean() / weight.mean() + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            elapsed = time.time() - start
            print(f"vae step {step:5d}  loss {loss.item():.4f}  kl/element {kl.item():.3f}  {elapsed:6.0f} s")
    vae.eval()


@torch.no_grad()
def encode_latents(pipeline: StableDiffusionPipeline, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior mean and std of every image (unscaled), encoded 64 at a time."""
    means, stds = [], []
    for start in range(0, len(images), 64):
        posterior = pipeline.vae.encode(images[start : start + 64]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def measure_scaling_factor(means: torch.Tensor, stds: torch.Tensor) -> float:
    """`1 / std` of posterior samples, the factor that gives the diffusion model unit-std latents."""
    generator = torch.Generator().manual_seed(0)
    samples = means + stds * torch.randn(means.shape, generator=generator)
    return 1.0 / samples.std().item()


def train_unet(
    pipeline: StableDiffusionPipeline,
    means: torch.Tensor,
    stds: torch.Tensor,
    labels: list[tuple[str, str]],
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    caption_dropout: float = 0.1,
    seed: int = 0,
) -> None:
    """Train `pipeline.unet` and `pipeline.text_encoder` together to predict the noise in scaled latents, in place."""
    unet, text_encoder, scheduler = pipeline.unet.train(), pipeline.text_encoder.train(), pipeline.scheduler
    scaling_factor = pipeline.vae.config.scaling_factor
    # 1. Tokenize every caption once: row `template * len(labels) + index`, and a last row for the empty prompt.
    captions = [template.format(color=color, shape=shape) for template in CAPTION_TEMPLATES for color, shape in labels]
    tokenizer = pipeline.tokenizer
    token_ids = tokenizer(
        captions + [""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    empty_row = len(captions)

    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(len(labels), batch_size, generator)
    alphas_cumprod = scheduler.alphas_cumprod
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, learning_rate, warmup=min(100, steps // 10 + 1))
        # 2. Scaled latents sampled from each image's posterior, noised at a random timestep.
        index = next(batches)
        latents = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, len(alphas_cumprod), (batch_size,), generator=generator)
        noisy_latents = scheduler.add_noise(latents, noise, timesteps)

        # 3. A random caption form per image, or the empty prompt with probability `caption_dropout`.
        templates = torch.randint(0, len(CAPTION_TEMPLATES), (batch_size,), generator=generator)
        rows = templates * len(labels) + index
        rows[torch.rand(batch_size, generator=generator) < caption_dropout] = empty_row
        text_states = text_encoder(token_ids[rows])[0]

        prediction = unet(noisy_latents, timesteps, text_states).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"unet step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.0f} s")
    unet.eval()
    text_encoder.eval()


@torch.no_grad()
def evaluate(pipeline: StableDiffusionPipeline, samples_folder: Path | None = None) -> dict[str, float]:
    """Reconstruction error on unseen shapes images and the colour of generated red / blue circles.

    Returns:
        `reconstruction_mean_color_error` (per-channel |mean colour difference|, averaged, 0-255 units),
        `reconstruction_pixel_error` (mean |pixel difference|, 0-255), and for each prompt of
        "a photo of a red circle" / "a photo of a blue circle" the red minus blue channel mean of its image.
    """
    results = evaluate_reconstruction(pipeline, samples_folder)
    # Generations: the colour word must steer the colour.
    pipeline.set_progress_bar_config(disable=True)
    for color in ("red", "blue"):
        prompt = f"a photo of a {color} circle"
        generator = torch.Generator().manual_seed(0)
        generated = pipeline(
            prompt, num_inference_steps=20, guidance_scale=5.0, generator=generator, output_type="np"
        ).images[0]
        mean = generated.reshape(-1, 3).mean(axis=0) * 255
        results[f"{color}_circle_red_minus_blue"] = float(mean[0] - mean[2])
        if samples_folder is not None:
            samples_folder.mkdir(parents=True, exist_ok=True)
            grid = pipeline(
                [prompt.replace("circle", shape) for shape in SHAPES] * 2,
                num_inference_steps=20,
                guidance_scale=5.0,
                generator=torch.Generator().manual_seed(1),
            ).images
            _save_grid(grid, samples_folder / f"{color}.png")
    return results


@torch.no_grad()
def evaluate_reconstruction(pipeline: StableDiffusionPipeline, samples_folder: Path | None = None) -> dict[str, float]:
    """How well the VAE reconstructs shapes images whose layouts and colours it did not see in training."""
    images = make_vae_images(16, seed=12345)
    reconstructions = pipeline.vae.decode(pipeline.vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    originals, decoded = (images + 1) * 127.5, (reconstructions + 1) * 127.5
    if samples_folder is not None:
        samples_folder.mkdir(parents=True, exist_ok=True)
        pairs = [image for pair in zip(originals, decoded) for image in pair]
        _save_grid([_tensor_to_image(image) for image in pairs], samples_folder / "reconstructions.png")
    return {
        "reconstruction_mean_color_error": (originals.mean(dim=(2, 3)) - decoded.mean(dim=(2, 3))).abs().mean().item(),
        "reconstruction_pixel_error": (originals - decoded).abs().mean().item(),
    }


def _tensor_to_image(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray(image.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())


def _save_grid(images: list, path: Path, columns: int = 8) -> None:
    from PIL import Image

    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)


def save_weights(pipeline: StableDiffusionPipeline, path: Path) -> None:
    """Write the UNet, VAE and text encoder in float16 to one safetensors file, with the VAE scaling factor."""
    tensors = {}
    for name in ("unet", "vae", "text_encoder"):
        for key, tensor in getattr(pipeline, name).state_dict().items():
            tensors[f"{name}.{key}"] = tensor.detach().to(torch.float16).contiguous()
    metadata = {"format": "pt", "vae.scaling_factor": repr(pipeline.vae.config.scaling_factor)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=TINY_SD_WEIGHTS, help="Where to write the safetensors file.")
    parser.add_argument("--vae-steps", type=int, default=4000)
    parser.add_argument("--vae-images", type=int, default=4096)
    parser.add_argument("--unet-steps", type=int, default=2000)
    parser.add_argument("--layouts-per-pair", type=int, default=64, help="Training images per (colour, shape) pair.")
    parser.add_argument("--samples-folder", type=Path, default=None, help="Also write sample image grids here.")
    arguments = parser.parse_args(argv)
    print(f"settings: {vars(arguments)}")

    # 1. One thread and fixed seeds: the same run on the same versions gives the same file.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipeline = build_tiny_stable_diffusion(weights=None)

    # 2. The VAE, then the scaling factor of its latents.
    start = time.time()
    train_vae(pipeline, make_vae_images(arguments.vae_images, seed=0), steps=arguments.vae_steps)
    images, labels = make_captioned_images(arguments.layouts_per_pair, seed=1)
    means, stds = encode_latents(pipeline, images)
    pipeline.vae.register_to_config(scaling_factor=measure_scaling_factor(means, stds))
    print(f"vae trained in {time.time() - start:.0f} s; scaling_factor {pipeline.vae.config.scaling_factor:.5f}")
    print(f"vae: {evaluate_reconstruction(pipeline)}")

    # 3. The UNet and the text encoder, on those latents.
    start = time.time()
    train_unet(pipeline, means, stds, labels, steps=arguments.unet_steps)
    print(f"unet trained in {time.time() - start:.0f} s")

    # 4. Save in float16, and check the float32 pipeline loaded back from the file.
    save_weights(pipeline, arguments.output)
    print(f"wrote {arguments.output} ({arguments.output.stat().st_size / 2**20:.2f} MiB)")
    print(f"trained (float32): {evaluate(pipeline, arguments.samples_folder)}")
    print(f"shipped (float16 -> float32): {evaluate(build_tiny_stable_diffusion(weights=arguments.output))}")


if __name__ == "__main__":
    main()
