"""The main job of the README's quick start: fine-tune the built-in tiny model with LoRA, offline.

1. Fine-tune the built-in tiny Stable Diffusion on the built-in shapes data set ("a photo of sks
   circle") with LoRA, with a progress bar, checkpoints and validation images.
2. Write the repo (`model/` with a diffusers LoRA file, `trainer/`, `validation/`).
3. Reload it with `AutoModelPipeline` and generate; check it matches the in-memory result.
"""

import logging
import time
from pathlib import Path

import numpy as np

from .config import AutoModelPipeline
from .models import DiffusionPipeline
from .builtin.tiny_sd import TINY_SD
from .trainers import LoRATrainConfig, LoRATrainer
from .training.diffusion_steps import image_grid

PROMPT = "a photo of sks circle"


def run_demo(output: Path, max_train_steps: int = 300) -> None:
    """Fine-tune, save, reload and generate; print what was written and how long it took."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    output = Path(output)

    # 1. Fine-tune.
    print(f"Fine-tuning {TINY_SD} with LoRA on the built-in shapes data set ({PROMPT!r}) ...")
    trainer = LoRATrainer(train_config=LoRATrainConfig(learning_rate=1e-3, train_batch_size=4, rank=8, validation_epochs=25,
                                                       num_validation_images=4, checkpointing_steps=100, checkpoints_total_limit=1))
    trainer.init_model(DiffusionPipeline(TINY_SD))
    pipeline = trainer.train(data="tinypipe/shapes", instance_prompt=PROMPT, max_train_steps=max_train_steps,
                             output_dir=str(output), use_8bit_adam=False)

    # 2. What the repo holds.
    print(f"\nWrote the repo {output}:")
    for path in sorted(output.rglob("*")):
        if path.is_file() and "checkpoints" not in path.parts and "epoch-" not in str(path):
            print(f"  {path.relative_to(output)}  ({path.stat().st_size:,} bytes)")
    print(f"  checkpoints/: {', '.join(sorted(p.name for p in (output / 'checkpoints').glob('checkpoint-*')))}")

    # 3. Reload and generate.
    reloaded = AutoModelPipeline.from_pretrained(output)
    settings = dict(num_inference_steps=25, seed=7, num_images_per_prompt=4)
    images = reloaded.generate(PROMPT, **settings)
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, pipeline.generate(PROMPT, **settings)))
    samples = output / "samples.png"
    image_grid([images]).save(samples)
    print(f"\nReloaded {type(reloaded).__name__} (LoRA rank {reloaded.config['lora_rank']}) and generated {samples}; "
          f"identical to the in-memory result: {same}.")
    print(f"Before/after grid: {output / 'validation' / 'before_after.png'}")
    print(f"Loss curve: {output / 'trainer' / 'loss.png'} (each step in {output / 'metrics.jsonl'}); model card: "
          f"{output / 'README.md'}")
    print(f"Load the LoRA in plain diffusers: pipe.load_lora_weights({str(output / 'model')!r})")
    print(f"Done in {time.perf_counter() - start:.0f} s.")
    if not same:
        raise SystemExit("The reloaded pipeline generated different images.")
