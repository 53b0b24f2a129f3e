"""`DiffusionPipeline`: a text-to-image model of any supported family (SD 1/2, SDXL, ...) with an optional LoRA, as a
config object.

```python
from tinypipe.models import DiffusionPipeline

pipeline = DiffusionPipeline("tinypipe/tiny-sd")                 # or a hub id / a local diffusers folder
images = pipeline.generate(["a photo of sks circle"], seed=0)    # PIL images
pipeline.save_pretrained("out")   # out/model/config.json (+ pytorch_lora_weights.safetensors with a LoRA)
```

The family (`tinypipe.families`) is detected from the base model's `model_index.json` and recorded in the config;
it names the diffusers pipeline class, the denoiser and the text encoders. The LoRA file is diffusers' own format
(written with the pipeline class's own `save_lora_weights`, read with `load_lora_weights`; `models.diffusers_lora`),
so plain diffusers reads it unchanged: `StableDiffusionXLPipeline.from_pretrained(base).load_lora_weights("out/model")`.

Two more kinds of fine-tuned weights, each in the format diffusers reads:
- fully fine-tuned components (DreamBooth): `model/` is then also a complete diffusers pipeline folder
  (`model_index.json`, `unet/`, `text_encoder/`, ...), so `StableDiffusionPipeline.from_pretrained("out/model")`
  loads it;
- textual-inversion tokens: `learned_embeds.safetensors` `{token: tensor[num_vectors, dim]}` (further tokens
  in `learned_embeds-2.safetensors`, ...), read by `pipe.load_textual_inversion("out/model")`; for SDXL
  `{"clip_l": ..., "clip_g": ...}` (see `models.diffusion_embeddings`).
"""

import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from PIL import Image
from safetensors.torch import save_file

from ..config.hub import register_builtin_repo
from ..config import ConfigMixin, Ignore, save_config
from ..errors import ConfigError, RepoError, TinypipeError
from ..builtin import TINY_SD, builtin_names
from ..families import ModelFamily, family_named, family_of
from .diffusers_base import default_device, load_base_pipeline, save_pipeline_folder
from .diffusion_embeddings import TextualInversionTokens
from .diffusers_lora import (
    ADAPTER_NAME,
    LORA_SETTINGS,
    LORA_WEIGHTS_NAME,
    TEXT_ENCODER_LORA_TARGETS,
    UNET_LORA_TARGETS,
    load_lora_file,
    loaded_lora_settings,
    lora_configs,
    lora_state_dicts,
    save_lora_file,
)
from .embedding_files import textual_inversion_file_name
from .lora_exports import write_repo_exports
from .lora_targets import check_target_modules

__all__ = ["DiffusionPipeline", "LORA_WEIGHTS_NAME", "UNET_LORA_TARGETS"]

FINE_TUNABLE_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


class DiffusionPipeline(TextualInversionTokens, ConfigMixin):
    """A text-to-image pipeline of a supported family with an optional LoRA on the denoiser (and text encoders).

    Args:
        base_model: A hub id (`"runwayml/stable-diffusion-v1-5"`, `"stabilityai/stable-diffusion-xl-base-1.0"`), a
            local diffusers folder, or a built-in offline model (`"tinypipe/tiny-sd"`, `"tinypipe/tiny-sdxl"`).
        revision: Hub revision of `base_model`.
        lora_rank: Rank of the LoRA adapter; None for no LoRA.
        lora_alpha: LoRA scale numerator (the update is scaled by `lora_alpha / lora_rank`); defaults to the rank.
        lora_target_modules: UNet modules the LoRA wraps (the attention projections by default).
        text_encoder_lora: Also put a LoRA on the text encoder (on each text encoder of the family: SDXL's two).
        text_encoder_lora_target_modules: Text-encoder modules that LoRA wraps (the attention projections by
            default; a kohya LoRA often also covers the MLP, `fc1` and `fc2`).
        torch_dtype: dtype the base model is loaded in.
        device: Where to run (not recorded); `cuda` when available, else `cpu`.
        token: Hub token for a private base model (not recorded).
        fine_tuned_components: Components whose weights were fully fine-tuned (`"unet"`, `"text_encoder"`, ...);
            their weights live in the repo, so such a pipeline is rebuilt with `from_pretrained`, not `from_config`.
        textual_inversion_tokens: Tokens added by textual inversion, whose embeddings live in the repo
            (`learned_embeds.safetensors`); set by `load_textual_inversion` / `add_textual_inversion`.
        weights_folder: A diffusers pipeline folder to load the models from instead of `base_model` (not
            recorded; `from_pretrained` passes the repo's own folder for fine-tuned components).
        family: The model family (`"sd"`, `"sdxl"`, ...); detected from the base model's `model_index.json` and
            recorded. Given, it must match the model.

    Example:
    ```python
    pipeline = DiffusionPipeline("tinypipe/tiny-sd", lora_rank=4)
    images = pipeline.generate("a photo of sks circle", num_inference_steps=20, seed=1)
    ```
    """

    __weight__ = LORA_WEIGHTS_NAME

    @save_config
    def __init__(
        self,
        base_model: str = TINY_SD,
        revision: Optional[str] = None,
        lora_rank: Optional[int] = None,
        lora_alpha: Optional[float] = None,
        lora_target_modules: tuple = UNET_LORA_TARGETS,
        text_encoder_lora: bool = False,
        text_encoder_lora_target_modules: tuple = TEXT_ENCODER_LORA_TARGETS,
        torch_dtype: torch.dtype = torch.float32,
        device: Ignore = None,
        token: Ignore = None,
        fine_tuned_components: tuple = (),
        textual_inversion_tokens: tuple = (),
        weights_folder: Ignore = None,
        family: Optional[str] = None,
    ):
        unknown = sorted(set(fine_tuned_components) - set(FINE_TUNABLE_COMPONENTS))
        if unknown:
            raise ConfigError(f"fine_tuned_components may hold {list(FINE_TUNABLE_COMPONENTS)}, got {unknown}.")
        expected = family_named(family) if family is not None else None
        if (fine_tuned_components and weights_folder is None) or textual_inversion_tokens:
            raise ConfigError(
                f"This config records fine-tuned weights (components {list(fine_tuned_components)}, textual-inversion "
                f"tokens {list(textual_inversion_tokens)}) that only a saved repo holds; load it with "
                "DiffusionPipeline.from_pretrained(<repo>) rather than from_config."
            )
        self.base_model = base_model
        self.device = torch.device(device or default_device())
        source = str(weights_folder) if weights_folder is not None else base_model
        self.pipe = load_base_pipeline(source, revision if weights_folder is None else None, torch_dtype, token).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.family: ModelFamily = family_of(type(self.pipe).__name__)
        if expected is not None and expected is not self.family:
            raise ConfigError(f"This config records the model family {family!r}, but {source!r} is a {self.family.title} "
                              f"model ({self.family.name!r}); give the base model the config was saved with.")
        self._record(family=self.family.name)
        if lora_rank is not None:
            self._add_lora(lora_rank, lora_alpha, lora_target_modules, text_encoder_lora, text_encoder_lora_target_modules)

    # -- components ---------------------------------------------------------------------------------

    @property
    def denoiser(self) -> torch.nn.Module:
        """The model that denoises: the UNet (SD, SDXL) or the transformer (FLUX), as the family names it."""
        return getattr(self.pipe, self.family.denoiser)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def text_encoder(self):
        """The first text encoder (SD's only one, SDXL's CLIP ViT-L)."""
        return self.pipe.text_encoder

    @property
    def tokenizer(self):
        """The first tokenizer."""
        return self.pipe.tokenizer

    @property
    def text_encoders(self) -> dict[str, torch.nn.Module]:
        """Every text encoder of the family, by component name (`{"text_encoder": ..., "text_encoder_2": ...}`)."""
        return {name: getattr(self.pipe, name) for name in self.family.text_encoders}

    @property
    def tokenizers(self) -> dict[str, Any]:
        """Every tokenizer of the family, by component name."""
        return {name: getattr(self.pipe, name) for name in self.family.tokenizers}

    @property
    def has_lora(self) -> bool:
        return self.config["lora_rank"] is not None

    def lora_configs(self) -> dict[str, Any]:
        """The peft `LoraConfig` of each model that has a LoRA: `{"unet": ..., "text_encoder": ...}`."""
        return lora_configs(self.config, self.family.lora_text_encoders, self.family.denoiser)

    def _add_lora(self, rank: int, alpha: Optional[float], targets: Sequence[str], text_encoder_lora: bool,
                  text_encoder_targets: Sequence[str] = TEXT_ENCODER_LORA_TARGETS) -> None:
        if rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, got {rank}.")
        base = repr(self.base_model)
        check_target_modules(self.denoiser, tuple(targets), setting="lora_target_modules",
                             model_name=f"the {'UNet' if self.family.denoiser == 'unet' else self.family.denoiser} of {base}")
        if text_encoder_lora:
            for name in self.family.lora_text_encoders:
                encoder = self.text_encoders[name]
                check_target_modules(encoder, tuple(text_encoder_targets), setting="the text encoder's LoRA targets",
                                     model_name=f"the {name.replace('_', ' ')} of {base}")
        self._record(lora_rank=rank, lora_alpha=alpha, lora_target_modules=tuple(targets), text_encoder_lora=text_encoder_lora,
                     text_encoder_lora_target_modules=tuple(text_encoder_targets))
        for name, config in self.lora_configs().items():
            getattr(self.pipe, name).add_adapter(config, adapter_name=ADAPTER_NAME)

    def add_lora(self, rank: int = 4, alpha: Optional[float] = None, target_modules: Optional[Sequence[str]] = None,
                 text_encoder: bool = False) -> None:
        """Add a fresh LoRA adapter (no effect until trained); the config records it.

        `target_modules` defaults to the family's (`denoiser_lora_targets`); `text_encoder` puts one on each text encoder.

        Raises:
            ConfigError: The pipeline already has a LoRA.
        """
        if self.has_lora:
            raise ConfigError("This pipeline already has a LoRA; load a base pipeline to add a new one.")
        if self.config["fine_tuned_components"]:
            raise ConfigError("This pipeline's own weights were fine-tuned; save it, then train a LoRA on "
                              "DiffusionPipeline(base_model='<repo>/model'), which is a diffusers folder.")
        targets = self.family.denoiser_lora_targets if target_modules is None else target_modules
        self._add_lora(rank, alpha, targets, text_encoder, self.family.text_encoder_lora_targets)

    def replace_lora(self, weights: Union[str, Path]) -> None:
        """Replace this pipeline's LoRA (or add one) with the LoRA in a diffusers file (`pytorch_lora_weights.safetensors`).

        Rank, alpha and target modules come from the file (diffusers reads its metadata), so they may
        differ from the old LoRA's; the config records the new ones. If the file does not fit, the old
        LoRA is put back before the error is raised.

        Example:
        ```python
        pipeline = AutoModelPipeline.from_pretrained("lora-a")
        pipeline.replace_lora("lora-b/model/pytorch_lora_weights.safetensors")
        pipeline.save_pretrained("lora-a-with-b")
        ```

        Raises:
            ConfigError: The file is missing, the pipeline's own weights were fine-tuned, or the LoRA has
                per-layer ranks or alphas (tinypipe records one rank and alpha).
            RepoError: The LoRA does not fit the base model (the message names the file and the weights).
        """
        weights = Path(weights)
        if not weights.is_file():
            raise ConfigError(f"The LoRA file {weights} does not exist; give a diffusers {LORA_WEIGHTS_NAME}.")
        if self.config["fine_tuned_components"]:
            raise ConfigError("This pipeline's own weights were fine-tuned, so a LoRA cannot be put on it here; use "
                              "DiffusionPipeline(base_model='<repo>/model'), which is a diffusers folder.")
        with tempfile.TemporaryDirectory() as backup:
            previous = dict(self.config) if self.has_lora else None
            if previous is not None:
                save_lora_file(self.pipe, Path(backup), self.lora_configs())
                self.pipe.delete_adapters(ADAPTER_NAME)
                self._record(lora_rank=None)
            try:
                load_lora_file(self.pipe, weights, self.config["base_model"])
                self._record(**loaded_lora_settings(self.pipe, weights, self.family.lora_text_encoders, self.family.denoiser))
            except TinypipeError:
                self.pipe.delete_adapters(ADAPTER_NAME)  # what a half-done load left (a no-op when nothing)
                if previous is not None:
                    load_lora_file(self.pipe, Path(backup) / LORA_WEIGHTS_NAME, self.config["base_model"])
                    self._record(**{key: previous[key] for key in LORA_SETTINGS})
                raise

    def lora_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The LoRA weights in diffusers' key format: `{"unet": {...}, "text_encoder": {...}}` (see `diffusers_lora`)."""
        return lora_state_dicts(self.pipe, list(self.lora_configs()))

    def mark_fine_tuned(self, components: Sequence[str]) -> None:
        """Record that `components` (`"unet"`, `"text_encoder"`, `"text_encoder_2"`) were fully fine-tuned, so saving
        writes their weights.

        Raises:
            ConfigError: An unknown component, or a pipeline with a LoRA (train one or the other).
        """
        allowed = (self.family.denoiser, *self.family.text_encoders)
        unknown = sorted(set(components) - set(allowed))
        if unknown:
            raise ConfigError(f"Only {list(allowed)} can be fine-tuned in a {self.family.title} pipeline, got {unknown}.")
        if self.has_lora:
            raise ConfigError("This pipeline has a LoRA; fine-tune a pipeline without one (or train the LoRA).")
        done = tuple(name for name in allowed if name in set(components) | set(self.config["fine_tuned_components"]))
        self._record(fine_tuned_components=done)

    # -- generation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Union[str, Sequence[str]],
        num_inference_steps: int = 25,
        guidance_scale: Optional[float] = None,
        seed: Optional[int] = 0,
        negative_prompt: Union[str, Sequence[str], None] = None,
        num_images_per_prompt: int = 1,
        height: Optional[int] = None,
        width: Optional[int] = None,
    ) -> list[Image.Image]:
        """Generate images for one prompt or a list of prompts.

        Args:
            prompts: A prompt or a list of prompts.
            num_inference_steps: Denoising steps.
            guidance_scale: Guidance scale: classifier-free (1 turns it off), or FLUX.1-dev's embedded guidance; None
                for the family's default (`generation_guidance_scale`: SD 7.5, FLUX.1 3.5, SD3 7.0).
            seed: Seed of the CPU generator that draws the initial noise; None for a random one.
            negative_prompt: What to steer away from.
            num_images_per_prompt: Images for each prompt.
            height: Image height in pixels (the model's native size when None); likewise `width`.

        Returns:
            `len(prompts) * num_images_per_prompt` PIL images.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            native = self.family.native_resolution(self.pipe)
            if guidance_scale is None:
                guidance_scale = self.family.generation_guidance_scale
            result = self.pipe(prompt=prompts, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, generator=generator, num_images_per_prompt=num_images_per_prompt,
                               height=height or native, width=width or native, output_type="pil")
        finally:
            self.denoiser.train(was_training)
        return list(result.images)

    def __call__(self, *args: Any, **kwargs: Any) -> list[Image.Image]:
        """Generate, as diffusers' and transformers' pipelines do when called: the same as `generate(...)`.

        Example:
        ```python
        pipeline = AutoModelPipeline.from_pretrained("model_cache_path", "model_repo")
        images = pipeline("a photo of sks circle", seed=1)   # same as pipeline.generate(...)
        ```
        """
        return self.generate(*args, **kwargs)

    # -- saving and loading -------------------------------------------------------------------------

    def check_export_formats(self, export_formats: Sequence[str]) -> tuple[str, ...]:
        """Refuse (before a run) export formats this pipeline's LoRA cannot be saved in (see `save_pretrained`).

        Raises:
            ConfigError: An unknown format, one the family's LoRA is not written in (naming both), or export formats
                for a pipeline without a LoRA.
        """
        from ..config.export_formats import check_export_formats

        formats = check_export_formats(export_formats, self.family.name)
        if formats and not self.has_lora:
            raise ConfigError(f"export_formats {list(formats)} writes LoRA files, but this {self.family.title} pipeline has "
                              "no LoRA; leave export_formats out, or train a LoRA.")
        return formats

    def save_pretrained(self, path: Union[str, Path], *, export_formats: Sequence[str] = (),
                        trained_with: Optional[Mapping[str, Any]] = None, **hub: Any) -> Path:
        """Save this pipeline into the repo at `path` (its `model/` folder), atomically; optionally with the LoRA also
        written for other tools.

        Args:
            path: The repo folder.
            export_formats: Formats (`tinypipe.config.export_formats`: `"kohya"`, `"comfyui"`, `"diffusers"`) the
                LoRA is also saved in, as `model/kohya_lora.safetensors` / `model/comfyui_lora.safetensors`, listed in
                `model/filelist.txt` (`"diffusers"` is `pytorch_lora_weights.safetensors` itself).
            trained_with: The run's training arguments, for the exported files' `ss_*` metadata (resolution, steps,
                learning rate; local paths and credentials are left out).
            **hub: `push_to_hub`, `repo_id`, `private`, `token`, `commit_message`, as `ConfigMixin.save_pretrained`.

        Returns:
            The repo folder.

        Raises:
            ConfigError: An export format this pipeline's LoRA is not written in (see `check_export_formats`).
        """
        formats = self.check_export_formats(export_formats)
        self._exports = (formats, dict(trained_with or {}), Path(path).name)
        try:
            return super().save_pretrained(path, **hub)
        finally:
            self._exports = ((), {}, "")

    def save_weights(self, folder: Path) -> None:
        """Write the fine-tuned weights in diffusers' formats.

        A LoRA goes to `pytorch_lora_weights.safetensors` (rank/alpha in its metadata); fully fine-tuned
        components make the folder a complete diffusers pipeline; textual-inversion tokens go to
        `learned_embeds.safetensors` (then `learned_embeds-2.safetensors`, ...): `{token: vectors}`, or for a family
        with several text encoders `{"clip_l": ..., "clip_g": ...}` (the token is in the config).
        """
        if self.config["fine_tuned_components"]:
            save_pipeline_folder(self.pipe, folder)
        for index, (token, vectors) in enumerate(self.textual_inversion_embeddings().items()):
            tensors = ({key: rows.contiguous() for key, rows in vectors.items()} if isinstance(vectors, Mapping)
                       else {token: vectors.contiguous()})
            save_file(tensors, str(folder / textual_inversion_file_name(index)))
        if self.has_lora:
            save_lora_file(self.pipe, folder, self.lora_configs())
            formats, arguments, title = getattr(self, "_exports", ((), {}, ""))
            write_repo_exports(folder, formats, self.family.name, self.base_model, arguments, title)

    @classmethod
    def _build_from_folder(cls, folder: Path, arguments: Mapping[str, Any], overrides: Mapping[str, Any]) -> "DiffusionPipeline":
        """Build the base pipeline (or the saved fine-tuned one), add the saved textual-inversion tokens, then
        load the saved LoRA with diffusers' own `load_lora_weights`."""
        lora = {key: arguments[key] for key in LORA_SETTINGS if key in arguments}
        tokens = tuple(arguments.get("textual_inversion_tokens") or ())
        if arguments.get("fine_tuned_components"):
            if not (folder / "model_index.json").is_file():
                raise RepoError(f"{folder / 'model_index.json'} is missing: the config records fine-tuned "
                                f"{list(arguments['fine_tuned_components'])} weights, saved there as a diffusers pipeline.")
            overrides = {**overrides, "weights_folder": folder}
        pipeline = cls._from_arguments({**arguments, "lora_rank": None, "textual_inversion_tokens": ()}, overrides)
        for index, token in enumerate(tokens):
            path = folder / textual_inversion_file_name(index)
            if token in pipeline.tokenizer.get_vocab():  # already in the saved fine-tuned tokenizer and text encoder
                pipeline._record(textual_inversion_tokens=tuple(pipeline.config["textual_inversion_tokens"]) + (token,))
            elif not path.is_file():
                raise RepoError(f"{path} is missing: the config records the textual-inversion token {token!r}.")
            else:
                pipeline.load_textual_inversion(path, token)
        if lora.get("lora_rank") is None:
            return pipeline
        weights = folder / LORA_WEIGHTS_NAME
        if not weights.is_file():
            raise RepoError(f"{weights} is missing: the config records a LoRA of rank {lora['lora_rank']}.")
        load_lora_file(pipeline.pipe, weights, pipeline.config["base_model"])
        pipeline._record(**lora)
        return pipeline

    @classmethod
    def card_data_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Base model, method and tags (diffusers, the family, lora, dreambooth, textual_inversion) of a saved pipeline."""
        has_lora = config.get("lora_rank") is not None
        family_tag = {"sdxl": "stable-diffusion-xl", "flux": "flux", "sd3": "stable-diffusion-3"}.get(config.get("family") or "sd", "stable-diffusion")
        tags = ["diffusers", family_tag, "text-to-image"] + (["lora"] if has_lora else [])
        method = "LoRA" if has_lora else "diffusion pipeline"
        if config.get("fine_tuned_components"):
            tags, method = tags + ["dreambooth"], "DreamBooth (full fine-tune)"
        if config.get("textual_inversion_tokens"):
            tags, method = tags + ["textual_inversion"], "textual inversion" if method == "diffusion pipeline" else method
        return {"base_model": config.get("base_model"), "method": method, "tags": tags}


def write_builtin_repo(folder: Path, name: str = TINY_SD) -> None:
    """Save a built-in tiny model as a tinypipe repo (what `from_pretrained(cache, "tinypipe/tiny-sd")` loads)."""
    DiffusionPipeline(name).save_pretrained(folder)


def _builtin_repo_writer(name: str):
    def write(folder: Path) -> None:
        write_builtin_repo(folder, name)

    return write


for _name in builtin_names("diffusion"):
    register_builtin_repo(_name, _builtin_repo_writer(_name))
