"""The pieces every recipe shares, as named functions (diffusers' `training_utils.py` style):

- `arguments`: the shared training arguments, each declared once (type and doc line).
- `settings`: the one settings check; `loop`: the step plan, the optimizer step, the loop with its checkpoint and
  end-of-epoch cadence; `resume`: where a run starts, and the one resume path; `checkpoints`, `run_fingerprint`.
- `optim`: accelerator, seeding, AdamW and schedules.
- `denoising_loop` (LoRA and DreamBooth), `diffusion_steps`, `class_images`: the diffusion recipes' pieces;
  `causal_lm_steps`: the causal-LM recipe's.
"""
