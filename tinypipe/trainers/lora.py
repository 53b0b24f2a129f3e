"""`LoRATrainer`: fine-tune a diffusion pipeline (SD 1/2, SDXL, ...) with LoRA on the denoiser's attention projections,
optionally with prior preservation (DreamBooth-LoRA).

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

LoRATrainer is DreamBooth with a LoRA: both run the one denoising fine-tune of `training/denoising_loop.py`
(diffusers' `train_dreambooth_lora.py`, with its defaults: learning rate 5e-4, prior preservation when asked
for), and this recipe says only what is its own: a LoRA is what trains, always. With `with_prior_preservation=True`,
class images (the user's in `class_data_dir`, topped up with generated ones) train beside the instance images.
"""

import logging
from pathlib import Path
from typing import Any, Optional

from ..builtin.tiny_sd import TINY_SD
from ..config import BaseArgsFromConfig, FromConfig, Ignore, TrainerConfigMixin, copy_signature, save_config, set_from_config
from ..config.export_formats import check_export_formats
from ..families.base import method_of
from ..models.diffusion import DiffusionPipeline
from ..training import arguments as shared, diffusion_steps as steps, loop
from ..training.checkpoints import save_checkpoint
from ..training.denoising_loop import check_prior_preservation, train_denoiser

logger = logging.getLogger(__name__)

__all__ = ["LoRATrainer", "LoRATrainConfig"]


class LoRATrainer(TrainerConfigMixin):
    """Fine-tunes a `DiffusionPipeline` with a LoRA adapter (peft) on the UNet, optionally the text encoder.

    Its `train` is the denoising fine-tune of `training/denoising_loop.py` with a LoRA as what trains: the same as
    `DreamBoothTrainer(use_lora=True)`, recorded under its own name. Give each argument at call time, or in the
    `train_config` given to the constructor (`LoRATrainer(train_config=LoRATrainConfig(...))`); the call wins.

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
    @shared.document_shared_arguments
    def train(
        self,
        data: FromConfig = None,
        filter_fn: Ignore = None,
        base_model: shared.BaseModel = TINY_SD,
        instance_prompt: shared.InstancePrompt = None,
        with_prior_preservation: shared.WithPriorPreservation = False,
        class_prompt: shared.ClassPrompt = None,
        class_data_dir: shared.ClassDataDir = None,
        num_class_images: shared.NumClassImages = 100,
        prior_loss_weight: shared.PriorLossWeight = 1.0,
        sample_batch_size: shared.SampleBatchSize = 4,
        class_inference_steps: shared.ClassInferenceSteps = 50,
        class_guidance_scale: shared.ClassGuidanceScale = 7.5,
        validation_prompt: shared.ValidationPrompt = None,
        validation_prompts: shared.ValidationPrompts = None,
        num_validation_images: shared.NumValidationImages = 4,
        validation_epochs: shared.ValidationEpochs = 10,
        num_train_epochs: shared.NumTrainEpochs = 30,
        epoch: shared.Epoch = None,
        max_train_steps: shared.MaxTrainSteps = None,
        train_batch_size: shared.TrainBatchSize = 2,
        gradient_accumulation_steps: shared.GradientAccumulationSteps = 1,
        learning_rate: shared.LearningRate = 5e-4,
        scale_lr: shared.ScaleLr = False,
        lr_schedule: shared.LrSchedule = "constant",
        warmup_steps: shared.WarmupSteps = 0,
        lr_num_cycles: shared.LrNumCycles = 1,
        lr_power: shared.LrPower = 1.0,
        use_8bit_adam: shared.Use8bitAdam = False,
        adam_beta1: shared.AdamBeta1 = 0.9,
        adam_beta2: shared.AdamBeta2 = 0.999,
        adam_weight_decay: shared.AdamWeightDecay = 1e-2,
        adam_epsilon: shared.AdamEpsilon = 1e-8,
        max_grad_norm: shared.MaxGradNorm = 1.0,
        rank: shared.Rank = None,
        lora_alpha: shared.LoraAlpha = None,
        train_text_encoder: shared.TrainTextEncoder = False,
        mixed_precision: shared.MixedPrecision = "no",
        gradient_checkpointing: shared.GradientCheckpointing = False,
        snr_gamma: shared.SnrGamma = None,
        noise_offset: shared.NoiseOffset = 0.0,
        weighting_scheme: shared.WeightingScheme = "none",
        logit_mean: shared.LogitMean = 0.0,
        logit_std: shared.LogitStd = 1.0,
        mode_scale: shared.ModeScale = 1.29,
        guidance_scale: shared.GuidanceScale = None,
        resolution: shared.Resolution = None,
        center_crop: shared.CenterCrop = True,
        random_flip: shared.RandomFlip = False,
        seed: shared.Seed = 0,
        checkpointing_steps: shared.CheckpointingSteps = 500,
        checkpoints_total_limit: shared.CheckpointsTotalLimit = None,
        resume_from_checkpoint: shared.ResumeFromCheckpoint = None,
        output_dir: shared.OutputDir = None,
        report_to: shared.ReportTo = "none",
        validation_inference_steps: shared.ValidationInferenceSteps = 25,
        validation_guidance_scale: shared.ValidationGuidanceScale = 7.5,
        export_formats: shared.ExportFormats = None,
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
        # 1. Check every setting before any heavy work; what is recorded is what runs (the LoRA's rank and alpha).
        accelerator = loop.start_run(arguments, "LoRATrainer.train()", data_forms="a folder of images, a JSON file, a list "
                                     "of images, a datasets.Dataset, or 'tinypipe/shapes'")
        check_prior_preservation(arguments)
        pipeline = self.model if self.model is not None else self.init_model(base_model).model
        pipeline.family.check_method(method_of("lora", arguments))
        export_formats = arguments["export_formats"] = list(check_export_formats(export_formats or (), pipeline.family.name)) or None
        rank, lora_alpha = steps.resolve_lora_settings(pipeline, rank=rank, lora_alpha=lora_alpha,
                                                       train_text_encoder=train_text_encoder)
        loop.record_effective_arguments(arguments, base_model=pipeline.config["base_model"], rank=rank,
                                        lora_alpha=lora_alpha, class_data_dir=None if class_data_dir is None else str(class_data_dir),
                                        **steps.resolve_objective_settings(pipeline, arguments))

        # 2. The denoising fine-tune (training/denoising_loop.py) of a LoRA on the UNet (and the text encoder), added
        #    when the pipeline has none; each checkpoint holds the LoRA's weights.
        validation, before = train_denoiser(pipeline, arguments, data=data, filter_fn=filter_fn, accelerator=accelerator,
                                            use_lora=True, use_8bit_adam=use_8bit_adam, description="LoRA",
                                            resume_settings="rank, train_text_encoder and the LoRA of the pipeline given",
                                            save_checkpoint=save_checkpoint)

        # 3. The result: the trained pipeline, and the repo (the LoRA, this trainer with the effective configuration).
        self.set_method_config("train_config", LoRATrainConfig(**arguments))
        loop.save_run(self, pipeline, accelerator, None if output_dir is None else Path(output_dir),
                      also_write=lambda output: validation.save_before_after(pipeline, before, output, accelerator),
                      **({"export_formats": export_formats, "trained_with": arguments} if export_formats else {}))
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
