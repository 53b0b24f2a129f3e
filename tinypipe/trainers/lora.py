"""`LoRATrainer`: fine-tune a Stable-Diffusion pipeline with LoRA on the UNet attention projections, optionally with
prior preservation (DreamBooth-LoRA).

```python
from tinypipe.models import DiffusionPipeline
from tinypipe.trainers import LoRATrainer

trainer = LoRATrainer()
trainer.init_model(DiffusionPipeline("tinypipe/tiny-sd"))
pipeline = trainer.train(data="my_photos/", instance_prompt="a photo of sks dog", epoch=20, output_dir="out")
pipeline.generate("a photo of sks dog on the beach")
```

`out/` is then a repo: `model/` (the LoRA in diffusers' format), `trainer/` (this trainer with the
effective arguments of the run, so `AutoTrainerPipeline.from_pretrained("out").train()` re-runs it),
`validation/` (images) and `checkpoints/`.

The loop follows diffusers' `train_dreambooth_lora.py` (and its defaults: learning rate 5e-4-class, prior
preservation when asked for), with the VAE latents (and the text embeddings, when the text encoder is frozen)
computed once instead of every step. With `with_prior_preservation=True`, class images (the user's in
`class_data_dir`, topped up with generated ones) train beside the instance images, as in `DreamBoothTrainer`.
"""

import logging
from pathlib import Path
from typing import Any, Optional

from ..builtin.tiny_sd import TINY_SD
from ..config import (
    BaseArgsFromConfig,
    FromConfig,
    Ignore,
    TrainerConfigMixin,
    copy_signature,
    save_config,
    set_from_config,
)
from ..errors import ConfigError
from ..models.diffusion import DiffusionPipeline
from ..training import diffusion_steps as steps
from ..training.arguments import (
    AdamBeta1, AdamBeta2, AdamEpsilon, AdamWeightDecay, BaseModel, CenterCrop, CheckpointingSteps, CheckpointsTotalLimit,
    ClassDataDir, ClassGuidanceScale, ClassInferenceSteps, ClassPrompt, Epoch, GradientAccumulationSteps,
    GradientCheckpointing, InstancePrompt, LearningRate, LoraAlpha, LrNumCycles, LrPower, LrSchedule, MaxGradNorm,
    MaxTrainSteps, MixedPrecision, NoiseOffset, NumClassImages, NumTrainEpochs, NumValidationImages, OutputDir,
    PriorLossWeight, RandomFlip, Rank, Resolution, ResumeFromCheckpoint, SampleBatchSize, ScaleLr, Seed, SnrGamma,
    TrainBatchSize, TrainTextEncoder, Use8bitAdam, ValidationEpochs, ValidationGuidanceScale, ValidationInferenceSteps,
    ValidationPrompt, WarmupSteps, WithPriorPreservation, document_shared_arguments,
)
from ..training.checkpoints import save_checkpoint
from ..training.denoising_loop import check_prior_preservation, train_denoiser
from ..training.loop import record_effective_arguments, save_run
from ..training.optim import make_accelerator, seed_everything
from ..training.settings import check_training_settings

logger = logging.getLogger(__name__)

__all__ = ["LoRATrainer", "LoRATrainConfig"]


class LoRATrainer(TrainerConfigMixin):
    """Fine-tunes a `DiffusionPipeline` with a LoRA adapter (peft) on the UNet, optionally the text encoder.

    Every hyperparameter is a `FromConfig` argument of `train`: give it at call time, or in the
    `train_config` given to the constructor (`LoRATrainer(train_config=LoRATrainConfig(...))`).

    Example:
    ```python
    trainer = LoRATrainer(train_config=LoRATrainConfig(learning_rate=1e-4, num_train_epochs=10))
    trainer.init_model(DiffusionPipeline("tinypipe/tiny-sd"))
    pipeline = trainer.train(data="tinypipe/shapes", instance_prompt="a photo of sks circle", output_dir="out")
    ```
    """

    @save_config
    def __init__(self):
        self.model: Optional[DiffusionPipeline] = None

    def init_model(self, model: Any) -> "LoRATrainer":
        """Set the pipeline to fine-tune: a `DiffusionPipeline`, or a base model id / folder / built-in name."""
        self.model = model if isinstance(model, DiffusionPipeline) else DiffusionPipeline(str(model))
        return self

    @set_from_config(aliases={"epoch": "num_train_epochs"})
    @document_shared_arguments
    def train(
        self,
        data: FromConfig = None,
        filter_fn: Ignore = None,
        base_model: BaseModel = TINY_SD,
        instance_prompt: InstancePrompt = None,
        with_prior_preservation: WithPriorPreservation = False,
        class_prompt: ClassPrompt = None,
        class_data_dir: ClassDataDir = None,
        num_class_images: NumClassImages = 100,
        prior_loss_weight: PriorLossWeight = 1.0,
        sample_batch_size: SampleBatchSize = 4,
        class_inference_steps: ClassInferenceSteps = 50,
        class_guidance_scale: ClassGuidanceScale = 7.5,
        validation_prompt: ValidationPrompt = None,
        num_validation_images: NumValidationImages = 4,
        validation_epochs: ValidationEpochs = 10,
        num_train_epochs: NumTrainEpochs = 30,
        epoch: Epoch = None,
        max_train_steps: MaxTrainSteps = None,
        train_batch_size: TrainBatchSize = 2,
        gradient_accumulation_steps: GradientAccumulationSteps = 1,
        learning_rate: LearningRate = 5e-4,
        scale_lr: ScaleLr = False,
        lr_schedule: LrSchedule = "constant",
        warmup_steps: WarmupSteps = 0,
        lr_num_cycles: LrNumCycles = 1,
        lr_power: LrPower = 1.0,
        use_8bit_adam: Use8bitAdam = False,
        adam_beta1: AdamBeta1 = 0.9,
        adam_beta2: AdamBeta2 = 0.999,
        adam_weight_decay: AdamWeightDecay = 1e-2,
        adam_epsilon: AdamEpsilon = 1e-8,
        max_grad_norm: MaxGradNorm = 1.0,
        rank: Rank = None,
        lora_alpha: LoraAlpha = None,
        train_text_encoder: TrainTextEncoder = False,
        mixed_precision: MixedPrecision = "no",
        gradient_checkpointing: GradientCheckpointing = False,
        snr_gamma: SnrGamma = None,
        noise_offset: NoiseOffset = 0.0,
        resolution: Resolution = None,
        center_crop: CenterCrop = True,
        random_flip: RandomFlip = False,
        seed: Seed = 0,
        checkpointing_steps: CheckpointingSteps = 500,
        checkpoints_total_limit: CheckpointsTotalLimit = None,
        resume_from_checkpoint: ResumeFromCheckpoint = None,
        output_dir: OutputDir = None,
        validation_inference_steps: ValidationInferenceSteps = 25,
        validation_guidance_scale: ValidationGuidanceScale = 7.5,
    ) -> DiffusionPipeline:
        """Fine-tune the pipeline on `data` and return it (with its LoRA trained).

        Args:
            data: Training images: a folder (captions in `<name>.txt` or `metadata.jsonl`), a JSON file,
                a list of PIL images / paths / (image, caption) pairs, a `datasets.Dataset`, or the
                built-in `"tinypipe/shapes"`.
            filter_fn: Keeps the `ImageExample`s it returns True for (the preprocessing filter).

        Returns:
            The fine-tuned `DiffusionPipeline`.

        Raises:
            ConfigError: Settings that cannot work. DataError: Unusable data. TrainingError: The loss became NaN/inf.
        """
        arguments = {name: value for name, value in locals().items() if name in LoRATrainConfig._valid_argument_names()}
        # 1. Check the settings before any heavy work.
        check_training_settings(arguments, "LoRATrainer.train()")
        if data is None:
            raise ConfigError("LoRATrainer.train() needs data: a folder of images, a JSON file, a list of images, "
                              "a datasets.Dataset, or 'tinypipe/shapes'.")
        check_prior_preservation(arguments)
        accelerator = make_accelerator(mixed_precision)
        seed_everything(seed)
        if self.model is None:
            self.init_model(base_model)
        pipeline = self.model
        rank, lora_alpha = steps.resolve_lora_settings(pipeline, rank=rank, lora_alpha=lora_alpha, train_text_encoder=train_text_encoder)
        # What is recorded is what runs: the LoRA's settings (a new one's, or the pipeline's own).
        record_effective_arguments(arguments, "LoRA", base_model=pipeline.config["base_model"], rank=rank, lora_alpha=lora_alpha,
                                   class_data_dir=str(class_data_dir) if class_data_dir is not None else None)

        # 2. The denoising fine-tune of a LoRA (training/denoising_loop.py): what trains is the LoRA of the UNet
        #    (and of the text encoder), added when the pipeline has none; a checkpoint holds its weights.
        validation, before = train_denoiser(pipeline, arguments, data=data, filter_fn=filter_fn, accelerator=accelerator, use_lora=True,
                                use_8bit_adam=use_8bit_adam, resume_settings="rank, train_text_encoder and the LoRA of the "
                                "pipeline given", description="LoRA", save_checkpoint=save_checkpoint)

        # 3. The result: the trained pipeline, and the repo (the LoRA, this trainer with the effective configuration).
        self.set_method_config("train_config", LoRATrainConfig(**arguments))
        save_run(self, pipeline, accelerator, Path(output_dir) if output_dir is not None else None,
                 also_write=lambda output: validation.save_before_after(pipeline, before, output))
        return pipeline


class LoRATrainConfig(BaseArgsFromConfig):
    """The arguments of `LoRATrainer.train`, as a config object (`update_config` rejects unknown keys).

    Example:
    ```python
    config = LoRATrainConfig(num_train_epochs=5, learning_rate=1e-4)
    trainer = LoRATrainer(train_config=config)
    ```
    """

    @copy_signature(LoRATrainer.train)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
