"""The training arguments the recipes share, each declared once: its type, the `FromConfig` marker and its doc line.

A recipe lists every argument explicitly in its `train` signature, with its own default, typed with the alias
below (`learning_rate: LearningRate = 5e-4`); its docstring's Args describe only what is its own, and
`@document_shared_arguments` adds the doc line of every shared argument it takes. The command line's help for
`--training-args` is written from the same table (`training_arguments_help`).

Example:
```python
class MyTrainer(TrainerConfigMixin):
    @set_from_config(aliases={"epoch": "num_train_epochs"})
    @document_shared_arguments
    def train(self, data: FromConfig = None, learning_rate: LearningRate = 1e-4, seed: Seed = 0):
        \"\"\"Train on `data`.

        Args:
            data: What to train on.
        \"\"\"
```
"""

import inspect
from typing import Any, Callable, Optional, TypeVar

from typing_extensions import Annotated, Doc, get_args, get_origin, get_type_hints

from ..config.annotations import FromConfig

__all__ = [
    "BaseModel", "NumTrainEpochs", "Epoch", "MaxTrainSteps", "TrainBatchSize", "GradientAccumulationSteps", "LearningRate",
    "ScaleLr", "LrSchedule", "WarmupSteps", "LrNumCycles", "LrPower", "Use8bitAdam", "AdamBeta1", "AdamBeta2",
    "AdamWeightDecay", "AdamEpsilon", "MaxGradNorm", "MixedPrecision", "GradientCheckpointing", "Seed", "CheckpointingSteps",
    "CheckpointsTotalLimit", "ResumeFromCheckpoint", "OutputDir", "ReportTo", "ValidationEpochs", "ValidationPrompt",
    "ValidationPrompts",
    "NumValidationImages", "ValidationInferenceSteps", "ValidationGuidanceScale", "Rank", "LoraAlpha", "TrainTextEncoder",
    "SnrGamma", "NoiseOffset", "Resolution", "CenterCrop", "RandomFlip", "InstancePrompt", "WithPriorPreservation",
    "ClassPrompt", "ClassDataDir", "NumClassImages", "PriorLossWeight", "SampleBatchSize", "ClassInferenceSteps",
    "ClassGuidanceScale", "ExportFormats", "TRAINING_ARGUMENTS", "DIFFUSION_ARGUMENTS", "argument_doc", "document_shared_arguments",
    "training_arguments_help",
]

# -- every recipe: model, steps, optimizer, schedule, precision, seed, checkpoints ----------------------------------------
BaseModel = Annotated[str, FromConfig, Doc("Base model used when `init_model` was not called (hub id, folder or built-in name).")]
NumTrainEpochs = Annotated[int, FromConfig, Doc("Passes over the data.")]
Epoch = Annotated[Optional[int], FromConfig, Doc(
    "The same as `num_train_epochs`: the one given at call time wins over a saved one, and the run records the count as "
    "`num_train_epochs`.")]
MaxTrainSteps = Annotated[Optional[int], FromConfig, Doc("Optimizer steps; overrides the epochs when given.")]
TrainBatchSize = Annotated[int, FromConfig, Doc("Examples per batch per process.")]
GradientAccumulationSteps = Annotated[int, FromConfig, Doc("Batches per optimizer step.")]
LearningRate = Annotated[float, FromConfig, Doc("Peak learning rate.")]
ScaleLr = Annotated[bool, FromConfig, Doc("Multiply the learning rate by batch size x accumulation x processes.")]
LrSchedule = Annotated[str, FromConfig, Doc(
    "linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup.")]
WarmupSteps = Annotated[int, FromConfig, Doc("Warm-up optimizer steps.")]
LrNumCycles = Annotated[int, FromConfig, Doc("Cycles of the cosine_with_restarts schedule.")]
LrPower = Annotated[float, FromConfig, Doc("Power of the polynomial schedule.")]
Use8bitAdam = Annotated[bool, FromConfig, Doc("bitsandbytes' 8-bit AdamW where it runs (CUDA); otherwise AdamW, said once.")]
AdamBeta1 = Annotated[float, FromConfig, Doc("AdamW's beta1.")]
AdamBeta2 = Annotated[float, FromConfig, Doc("AdamW's beta2.")]
AdamWeightDecay = Annotated[float, FromConfig, Doc("AdamW's weight decay.")]
AdamEpsilon = Annotated[float, FromConfig, Doc("AdamW's epsilon.")]
MaxGradNorm = Annotated[Optional[float], FromConfig, Doc("Gradient clipping norm (0 or None: no clipping).")]
MixedPrecision = Annotated[str, FromConfig, Doc('"no", "fp16" (GPU) or "bf16".')]
GradientCheckpointing = Annotated[bool, FromConfig, Doc("Trade compute for memory in the trained model.")]
Seed = Annotated[int, FromConfig, Doc("Seed of everything random in the run.")]
CheckpointingSteps = Annotated[Optional[int], FromConfig, Doc(
    "Write a checkpoint every this many optimizer steps (needs `output_dir`; 0 or None: none).")]
CheckpointsTotalLimit = Annotated[Optional[int], FromConfig, Doc("Keep at most this many checkpoints.")]
ResumeFromCheckpoint = Annotated[Optional[str], FromConfig, Doc(
    '"latest" or a checkpoint folder of this run (needs `output_dir`); a checkpoint of another run is refused.')]
OutputDir = Annotated[Optional[str], FromConfig, Doc("Where the repo and checkpoints go; None writes nothing.")]
ReportTo = Annotated[str, FromConfig, Doc(
    '"tensorboard" or "wandb": also send the loss, learning rate, grad norm, validation images and the resolved config '
    'to that tracker (through accelerate; its package must be installed); "none": only `<output_dir>/metrics.jsonl`, '
    "which every run writes.")]

# -- the diffusion recipes: validation images, LoRA, the denoising loss, image preprocessing, prior preservation ----------
ValidationEpochs = Annotated[int, FromConfig, Doc("Validate every this many epochs (and at the end).")]
ValidationPrompt = Annotated[Optional[str], FromConfig, Doc("Prompt of the validation images.")]
ValidationPrompts = Annotated[Optional[list], FromConfig, Doc(
    "Several prompts of the validation images (after `validation_prompt`, when both are given).")]
NumValidationImages = Annotated[int, FromConfig, Doc("Images per validation.")]
ValidationInferenceSteps = Annotated[int, FromConfig, Doc("Denoising steps of the validation images.")]
ValidationGuidanceScale = Annotated[float, FromConfig, Doc("Guidance scale of the validation images.")]
Rank = Annotated[Optional[int], FromConfig, Doc(
    "LoRA rank: 4 for a new LoRA; a pipeline that already has one trains it as it is, and a rank or alpha other than "
    "its own is refused.")]
LoraAlpha = Annotated[Optional[float], FromConfig, Doc("LoRA alpha (defaults to the rank).")]
TrainTextEncoder = Annotated[bool, FromConfig, Doc("Also train the text encoder (its LoRA, when a LoRA trains).")]
SnrGamma = Annotated[Optional[float], FromConfig, Doc("Min-SNR loss weighting gamma (e.g. 5.0); None for plain MSE.")]
NoiseOffset = Annotated[float, FromConfig, Doc("Offset noise strength (e.g. 0.05).")]
WeightingScheme = Annotated[str, FromConfig, Doc(
    "Flow-matching models (FLUX.1, SD3): timestep density and loss weighting, as diffusers names them: none, "
    "sigma_sqrt, logit_normal, mode, cosmap.")]
LogitMean = Annotated[float, FromConfig, Doc("Mean of the logit_normal timestep density (flow matching).")]
LogitStd = Annotated[float, FromConfig, Doc("Standard deviation of the logit_normal timestep density (flow matching).")]
ModeScale = Annotated[float, FromConfig, Doc("Scale of the mode timestep density (flow matching).")]
GuidanceScale = Annotated[Optional[float], FromConfig, Doc(
    "Guidance value a guidance-distilled model (FLUX.1-dev) trains with; None: the family's (3.5 for FLUX.1-dev, "
    "else none), recorded as resolved.")]
Resolution = Annotated[Optional[int], FromConfig, Doc("Training resolution; defaults to the model's native one.")]
CenterCrop = Annotated[bool, FromConfig, Doc("Center crop (else a random crop, drawn once per image).")]
RandomFlip = Annotated[bool, FromConfig, Doc("Random horizontal flips.")]
InstancePrompt = Annotated[Optional[str], FromConfig, Doc(
    'Prompt with the rare identifier ("a photo of sks dog"): the caption of images that have none.')]
WithPriorPreservation = Annotated[bool, FromConfig, Doc(
    "Also train on class images with the class prompt, to keep the class itself; the loss is "
    "`instance loss + prior_loss_weight * class loss`.")]
ClassPrompt = Annotated[Optional[str], FromConfig, Doc('Prompt of the class images ("a photo of a dog"); needed with prior '
                                                       "preservation.")]
ClassDataDir = Annotated[Optional[str], FromConfig, Doc("A folder of class images of your own; missing ones are generated into it.")]
NumClassImages = Annotated[int, FromConfig, Doc("Class images to train with (yours first, the rest generated).")]
PriorLossWeight = Annotated[float, FromConfig, Doc("Weight of the class-image loss.")]
SampleBatchSize = Annotated[int, FromConfig, Doc("Images per generation batch for the class images.")]
ClassInferenceSteps = Annotated[int, FromConfig, Doc("Denoising steps of the generated class images.")]
ClassGuidanceScale = Annotated[float, FromConfig, Doc("Guidance scale of the generated class images.")]
ExportFormats = Annotated[Optional[list], FromConfig, Doc(
    "LoRA formats also saved in the repo's model/ for other tools: kohya (A1111, Forge; SD 1/2, SDXL), comfyui "
    "(ComfyUI; SD 1/2, SDXL, FLUX.1), diffusers (the LoRA file itself); one the model family's LoRA is not written in "
    "is refused before training.")]

# The tables the command line's help is written from: argument name -> its type.
TRAINING_ARGUMENTS = {
    "base_model": BaseModel, "num_train_epochs": NumTrainEpochs, "epoch": Epoch, "max_train_steps": MaxTrainSteps,
    "train_batch_size": TrainBatchSize, "gradient_accumulation_steps": GradientAccumulationSteps,
    "learning_rate": LearningRate, "scale_lr": ScaleLr, "lr_schedule": LrSchedule, "warmup_steps": WarmupSteps,
    "lr_num_cycles": LrNumCycles, "lr_power": LrPower, "use_8bit_adam": Use8bitAdam, "adam_beta1": AdamBeta1,
    "adam_beta2": AdamBeta2, "adam_weight_decay": AdamWeightDecay, "adam_epsilon": AdamEpsilon,
    "max_grad_norm": MaxGradNorm, "mixed_precision": MixedPrecision, "gradient_checkpointing": GradientCheckpointing,
    "seed": Seed, "checkpointing_steps": CheckpointingSteps, "checkpoints_total_limit": CheckpointsTotalLimit,
    "resume_from_checkpoint": ResumeFromCheckpoint, "output_dir": OutputDir, "report_to": ReportTo,
}
DIFFUSION_ARGUMENTS = {
    "validation_epochs": ValidationEpochs, "validation_prompt": ValidationPrompt, "validation_prompts": ValidationPrompts,
    "num_validation_images": NumValidationImages, "validation_inference_steps": ValidationInferenceSteps,
    "validation_guidance_scale": ValidationGuidanceScale, "rank": Rank, "lora_alpha": LoraAlpha,
    "train_text_encoder": TrainTextEncoder, "snr_gamma": SnrGamma, "noise_offset": NoiseOffset,
    "weighting_scheme": WeightingScheme, "logit_mean": LogitMean, "logit_std": LogitStd, "mode_scale": ModeScale,
    "guidance_scale": GuidanceScale, "resolution": Resolution,
    "center_crop": CenterCrop, "random_flip": RandomFlip, "instance_prompt": InstancePrompt,
    "with_prior_preservation": WithPriorPreservation, "class_prompt": ClassPrompt, "class_data_dir": ClassDataDir,
    "num_class_images": NumClassImages, "prior_loss_weight": PriorLossWeight, "sample_batch_size": SampleBatchSize,
    "class_inference_steps": ClassInferenceSteps, "class_guidance_scale": ClassGuidanceScale, "export_formats": ExportFormats,
}

_F = TypeVar("_F", bound=Callable)


def _doc_of(annotation: Any) -> Optional[str]:
    """The `Doc` line an annotation carries (looking inside `Optional[...]`), or None."""
    if get_origin(annotation) is Annotated:
        for extra in get_args(annotation)[1:]:
            if isinstance(extra, Doc):
                return extra.documentation
    for inner in get_args(annotation):
        found = _doc_of(inner)
        if found is not None:
            return found
    return None


def argument_doc(name: str) -> str:
    """The one doc line of the shared training argument `name` (`"learning_rate"` -> `"Peak learning rate."`).

    Raises:
        KeyError: `name` is not a shared training argument.
    """
    return _doc_of({**TRAINING_ARGUMENTS, **DIFFUSION_ARGUMENTS}[name])


def _documented_names(args_section: str) -> set[str]:
    """The parameter names an Args section already describes (`name:` or `name, other:` at the start of an entry)."""
    names = set()
    for line in args_section.splitlines():
        head, colon, _ = line.strip().partition(":")
        if colon and head and all(part.strip().strip("`").isidentifier() for part in head.split(",")):
            names |= {part.strip().strip("`") for part in head.split(",")}
    return names


def document_shared_arguments(function: _F) -> _F:
    """Add to `function`'s docstring (at the end of its Args) the doc line of each shared argument it takes.

    An argument the docstring's Args already describe keeps the recipe's own words. Each added line ends with
    the default of this signature, since the recipes' defaults differ (`learning_rate`: 5e-4 for LoRA, 3e-4 for a
    causal LM).

    Raises:
        TypeError: The docstring has no `Args:` section followed by a `Returns:` section.
    """
    doc = inspect.cleandoc(function.__doc__ or "")
    start, end = doc.find("\nArgs:\n"), doc.find("\nReturns:")
    if start < 0 or end < start:
        raise TypeError(f"{function.__qualname__}: @document_shared_arguments needs a docstring with Args: and Returns:.")
    documented = _documented_names(doc[start:end])
    try:
        hints = get_type_hints(function, include_extras=True)
    except Exception:  # an unresolvable forward reference: the raw annotations
        hints = dict(function.__annotations__)
    added = []
    for name, parameter in inspect.signature(function).parameters.items():
        line = _doc_of(hints.get(name))
        if line is not None and name not in documented:
            added.append(f"    {name}: {line} Default: {parameter.default!r}.")
    function.__doc__ = doc[:end].rstrip("\n") + "\n" + "\n".join(added) + "\n" + doc[end:]
    return function


def training_arguments_help(*, diffusion: bool) -> str:
    """The `--training-args` keys the recipes share, one per line with its doc line, for the command line's help.

    Args:
        diffusion: Also list the diffusion recipes' shared arguments (validation images, LoRA, prior preservation).
    """
    table = {**TRAINING_ARGUMENTS, **(DIFFUSION_ARGUMENTS if diffusion else {})}
    width = max(len(name) for name in table)
    return "\n".join(f"  {name.ljust(width)}  {_doc_of(annotation)}" for name, annotation in table.items()
                     if name not in ("base_model", "output_dir"))  # given as MODEL and --output
