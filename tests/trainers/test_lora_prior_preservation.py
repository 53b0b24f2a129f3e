"""LoRATrainer with prior preservation (DreamBooth-LoRA, as diffusers' train_dreambooth_lora.py): the LoRA's own
learning rate, class examples in every batch, and a config that records what ran."""

from tinypipe.builtin.tiny_sd import shapes_dataset
from tinypipe.trainers import LoRATrainer
from tinypipe.training import diffusion_steps

PRIOR = dict(with_prior_preservation=True, class_prompt="a photo of a square", num_class_images=2, sample_batch_size=2,
             class_inference_steps=2)
FAST = dict(data=shapes_dataset(count=3), instance_prompt="a photo of sks circle", max_train_steps=2, num_validation_images=0,
            use_8bit_adam=False, checkpointing_steps=0, train_batch_size=2)


def test_lora_with_prior_preservation_keeps_the_lora_learning_rate_and_trains_on_class_images(monkeypatch):
    recorded = []
    original = diffusion_steps.denoising_losses

    def recording(unet, text_encoder, noise_scheduler, cache, batch, *args, **kwargs):
        recorded.append(list(batch))
        return original(unet, text_encoder, noise_scheduler, cache, batch, *args, **kwargs)

    monkeypatch.setattr(diffusion_steps, "denoising_losses", recording)
    trainer = LoRATrainer()
    pipeline = trainer.train(**FAST, **PRIOR)
    # 3 instance examples (indices 0-2) then 2 class examples (3-4): each batch is 2 instance + 2 class.
    assert len(recorded) == 2
    assert all(len(batch) == 4 and all(i < 3 for i in batch[:2]) and all(3 <= i < 5 for i in batch[2:]) for batch in recorded)
    saved = trainer.train_config.config
    assert saved["learning_rate"] == 5e-4 and saved["with_prior_preservation"] and saved["class_prompt"] == "a photo of a square"
    assert pipeline.has_lora and any(tensor.abs().max() > 0 for name, tensor in pipeline.lora_state_dicts()["unet"].items()
                                     if "lora_B" in name or "lora.up" in name)


def test_lora_without_prior_preservation_trains_on_instance_images_only(monkeypatch):
    recorded = []
    original = diffusion_steps.denoising_losses

    def recording(unet, text_encoder, noise_scheduler, cache, batch, *args, **kwargs):
        recorded.append(list(batch))
        return original(unet, text_encoder, noise_scheduler, cache, batch, *args, **kwargs)

    monkeypatch.setattr(diffusion_steps, "denoising_losses", recording)
    trainer = LoRATrainer()
    trainer.train(**FAST)
    assert len(recorded) == 2 and all(len(batch) == 2 and all(i < 3 for i in batch) for batch in recorded)
    assert not trainer.train_config.with_prior_preservation
