"""`DiffusionPipeline`: a Stable-Diffusion text-to-image model with an optional LoRA, as a config object.

```python
from tinypipe.models import DiffusionPipeline

pipeline = DiffusionPipeline("tinypipe/tiny-sd")                 # or a hub id / a local diffusers folder
images = pipeline.generate(["a photo of sks circle"], seed=0)    # PIL images
pipeline.save_pretrained("out")   # out/model/config.json (+ pytorch_lora_weights.safetensors with a LoRA)
```

The LoRA file is diffusers' own format (written and read by `models.diffusers_lora`), so plain diffusers reads
it unchanged: `StableDiffusionPipeline.from_pretrained(base).load_lora_weights("out/model")`.

Two more kinds of fine-tuned weights, each in the format diffusers reads:
- fully fine-tuned components (DreamBooth): `model/` is then also a complete diffusers pipeline folder
  (`model_index.json`, `unet/`, `text_encoder/`, ...), so `StableDiffusionPipeline.from_pretrained("out/model")`
  loads it;
- textual-inversion tokens: `learned_embeds.safetensors` `{token: tensor[num_vectors, dim]}` (further tokens
  in `learned_embeds-2.safetensors`, ...), read by `pipe.load_textual_inversion("out/model")`.
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
from ..builtin.tiny_sd import TINY_SD
from .diffusers_base import default_device, load_base_pipeline, save_pipeline_folder
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
from .embedding_files import (
    check_new_token,
    read_textual_inversion,
    textual_inversion_file_name,
    vector_token_names,
)
from .lora_targets import check_target_modules

__all__ = ["DiffusionPipeline", "LORA_WEIGHTS_NAME", "UNET_LORA_TARGETS"]

FINE_TUNABLE_COMPONENTS = ("unet", "text_encoder")


class DiffusionPipeline(ConfigMixin):
    """A Stable-Diffusion text-to-image pipeline with an optional LoRA on the UNet (and text encoder).

    Args:
        base_model: A hub id (`"runwayml/stable-diffusion-v1-5"`), a local diffusers folder, or the
            built-in offline model `"tinypipe/tiny-sd"`.
        revision: Hub revision of `base_model`.
        lora_rank: Rank of the LoRA adapter; None for no LoRA.
        lora_alpha: LoRA scale numerator (the update is scaled by `lora_alpha / lora_rank`); defaults to the rank.
        lora_target_modules: UNet modules the LoRA wraps (the attention projections by default).
        text_encoder_lora: Also put a LoRA on the text encoder.
        text_encoder_lora_target_modules: Text-encoder modules that LoRA wraps (the attention projections by
            default; a kohya LoRA often also covers the MLP, `fc1` and `fc2`).
        torch_dtype: dtype the base model is loaded in.
        device: Where to run (not recorded); `cuda` when available, else `cpu`.
        token: Hub token for a private base model (not recorded).
        fine_tuned_components: Components whose weights were fully fine-tuned (`"unet"`, `"text_encoder"`);
            their weights live in the repo, so such a pipeline is rebuilt with `from_pretrained`, not `from_config`.
        textual_inversion_tokens: Tokens added by textual inversion, whose embeddings live in the repo
            (`learned_embeds.safetensors`); set by `load_textual_inversion` / `add_textual_inversion`.
        weights_folder: A diffusers pipeline folder to load the models from instead of `base_model` (not
            recorded; `from_pretrained` passes the repo's own folder for fine-tuned components).

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
    ):
        unknown = sorted(set(fine_tuned_components) - set(FINE_TUNABLE_COMPONENTS))
        if unknown:
            raise ConfigError(f"fine_tuned_components may hold {list(FINE_TUNABLE_COMPONENTS)}, got {unknown}.")
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
        if lora_rank is not None:
            self._add_lora(lora_rank, lora_alpha, lora_target_modules, text_encoder_lora, text_encoder_lora_target_modules)

    # -- components ---------------------------------------------------------------------------------

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def has_lora(self) -> bool:
        return self.config["lora_rank"] is not None

    def lora_configs(self) -> dict[str, Any]:
        """The peft `LoraConfig` of each model that has a LoRA: `{"unet": ..., "text_encoder": ...}`."""
        return lora_configs(self.config)

    def _add_lora(self, rank: int, alpha: Optional[float], targets: Sequence[str], text_encoder_lora: bool,
                  text_encoder_targets: Sequence[str] = TEXT_ENCODER_LORA_TARGETS) -> None:
        if rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, got {rank}.")
        base = repr(self.base_model)
        check_target_modules(self.unet, tuple(targets), setting="lora_target_modules", model_name=f"the UNet of {base}")
        if text_encoder_lora:
            check_target_modules(self.text_encoder, tuple(text_encoder_targets), setting="the text encoder's LoRA targets",
                                 model_name=f"the text encoder of {base}")
        self._record(lora_rank=rank, lora_alpha=alpha, lora_target_modules=tuple(targets), text_encoder_lora=text_encoder_lora,
                     text_encoder_lora_target_modules=tuple(text_encoder_targets))
        for name, config in self.lora_configs().items():
            getattr(self.pipe, name).add_adapter(config, adapter_name=ADAPTER_NAME)

    def add_lora(self, rank: int = 4, alpha: Optional[float] = None, target_modules: Sequence[str] = UNET_LORA_TARGETS,
                 text_encoder: bool = False) -> None:
        """Add a fresh LoRA adapter (no effect until trained); the config records it.

        Raises:
            ConfigError: The pipeline already has a LoRA.
        """
        if self.has_lora:
            raise ConfigError("This pipeline already has a LoRA; load a base pipeline to add a new one.")
        if self.config["fine_tuned_components"]:
            raise ConfigError("This pipeline's own weights were fine-tuned; save it, then train a LoRA on "
                              "DiffusionPipeline(base_model='<repo>/model'), which is a diffusers folder.")
        self._add_lora(rank, alpha, target_modules, text_encoder)

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
                self._record(**loaded_lora_settings(self.pipe, weights))
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
        """Record that `components` (`"unet"`, `"text_encoder"`) were fully fine-tuned, so saving writes their weights.

        Raises:
            ConfigError: An unknown component, or a pipeline with a LoRA (train one or the other).
        """
        unknown = sorted(set(components) - set(FINE_TUNABLE_COMPONENTS))
        if unknown:
            raise ConfigError(f"Only {list(FINE_TUNABLE_COMPONENTS)} can be fine-tuned, got {unknown}.")
        if self.has_lora:
            raise ConfigError("This pipeline has a LoRA; fine-tune a pipeline without one (or train the LoRA).")
        done = tuple(name for name in FINE_TUNABLE_COMPONENTS if name in set(components) | set(self.config["fine_tuned_components"]))
        self._record(fine_tuned_components=done)

    # -- textual inversion --------------------------------------------------------------------------

    def add_textual_inversion(self, token: str, vectors: torch.Tensor) -> list[int]:
        """Add `token` (and `<token>_1 ... <token>_{n-1}` for `n` vectors) with the given embedding rows.

        A prompt naming `token` then uses all `n` vectors, as diffusers' `load_textual_inversion` does.

        Args:
            token: The new token, e.g. `"<cat-toy>"`; it must not be known to the tokenizer.
            vectors: `[n, dim]` (or `[dim]`) embedding rows; cast to the text encoder's dtype.

        Returns:
            The token ids of the `n` new tokens, in order.

        Raises:
            ConfigError: A known token, or vectors of the wrong shape or with NaN/inf values.
        """
        vectors = self._check_embedding(token, vectors)
        embedding = self.text_encoder.get_input_embeddings()
        tokens = vector_token_names(token, vectors.shape[0])
        for name in tokens:
            check_new_token(self.tokenizer, name)
        self.tokenizer.add_tokens(tokens)
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        rows = max(len(self.tokenizer), embedding.weight.shape[0])  # never shrink a padded embedding matrix
        self.text_encoder.resize_token_embeddings(rows, mean_resizing=False)
        with torch.no_grad():
            weight = self.text_encoder.get_input_embeddings().weight
            weight[ids] = vectors.to(weight.device, weight.dtype)
        self._record(textual_inversion_tokens=tuple(self.config["textual_inversion_tokens"]) + (token,))
        return ids

    def _check_embedding(self, token: str, vectors: torch.Tensor) -> torch.Tensor:
        """`vectors` as `[num_vectors, dim]` rows for this text encoder; ConfigError for a wrong shape or non-finite values."""
        vectors = vectors.detach().reshape(1, -1) if vectors.dim() == 1 else vectors.detach()
        dim = self.text_encoder.get_input_embeddings().weight.shape[1]
        if vectors.dim() != 2 or vectors.shape[1] != dim or vectors.shape[0] < 1:
            raise ConfigError(f"The embedding for {token!r} has shape {list(vectors.shape)}; this text encoder needs "
                              f"[num_vectors, {dim}]. It was trained for another base model.")
        if not vectors.is_floating_point() or not torch.isfinite(vectors).all():
            raise ConfigError(f"The embedding for {token!r} is not finite floating-point values ({vectors.dtype}).")
        return vectors

    def load_textual_inversion(self, embedding: Union[str, Path, torch.Tensor, Mapping[str, Any]], token: Optional[str] = None) -> str:
        """Load a textual-inversion embedding: a file or an in-memory tensor / state dict.

        Accepted: diffusers' `{token: tensor}` (`.safetensors`, or a legacy `.bin` read with
        `torch.load(weights_only=True)`, so nothing in it can run), the A1111 `.pt` layout
        (`{"string_to_param": {"*": tensor}, "name": ...}`), and a bare tensor with an explicit `token`.

        Args:
            embedding: The file, tensor or dict.
            token: The token to add; overrides the name stored in the file (needed for a bare tensor).

        Returns:
            The token added.

        Example:
        ```python
        pipeline.load_textual_inversion("learned_embeds.safetensors")
        pipeline.load_textual_inversion(torch.randn(2, 768), token="<my-style>")
        ```
        """
        token, vectors = read_textual_inversion(embedding, token)
        self.add_textual_inversion(token, vectors)
        return token

    def replace_textual_inversion(self, embedding: Union[str, Path, torch.Tensor, Mapping[str, Any]], token: Optional[str] = None) -> str:
        """Replace the vectors of one of this pipeline's textual-inversion tokens, or add the token to a pipeline without any.

        The new embedding may have another number of vectors than the old one (diffusers'
        `unload_textual_inversion` removes the old rows first). The token keeps its place, so the
        saved files keep their names.

        Args:
            embedding: A file, tensor or dict, in any layout `load_textual_inversion` reads.
            token: The token to replace; overrides the name stored in the embedding.

        Returns:
            The token replaced (or added).

        Raises:
            ConfigError: The pipeline has other textual-inversion tokens but not this one, or the
                embedding does not fit this text encoder (nothing is changed then).
        """
        token, vectors = read_textual_inversion(embedding, token)
        tokens = tuple(self.config["textual_inversion_tokens"])
        if token not in tokens:
            if tokens:
                raise ConfigError(f"The embedding is for the token {token!r}, but this pipeline's textual-inversion tokens are "
                                  f"{list(tokens)}. To load it under the pipeline's token, pass token={tokens[0]!r} (placeholder_token= "
                                  "with derive_pipeline).")
            return self.load_textual_inversion(vectors, token)
        vectors = self._check_embedding(token, vectors)
        self.pipe.unload_textual_inversion(self._token_names(token))
        self._record(textual_inversion_tokens=tuple(name for name in tokens if name != token))
        self.add_textual_inversion(token, vectors)
        self._record(textual_inversion_tokens=tokens)
        return token

    def textual_inversion_embeddings(self) -> dict[str, torch.Tensor]:
        """The embedding rows of every textual-inversion token: `{token: tensor[num_vectors, dim]}`."""
        weight = self.text_encoder.get_input_embeddings().weight
        return {token: weight[self.tokenizer.convert_tokens_to_ids(self._token_names(token))].detach().cpu().clone()
                for token in self.config["textual_inversion_tokens"]}

    def _token_names(self, token: str) -> list[str]:
        """`token` and the `<token>_1, <token>_2, ...` the tokenizer holds for its further vectors."""
        vocab = self.tokenizer.get_vocab()
        names = [token]
        while f"{token}_{len(names)}" in vocab:
            names.append(f"{token}_{len(names)}")
        return names

    # -- generation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Union[str, Sequence[str]],
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
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
            guidance_scale: Classifier-free guidance scale (1 turns guidance off).
            seed: Seed of the CPU generator that draws the initial noise; None for a random one.
            negative_prompt: What to steer away from.
            num_images_per_prompt: Images for each prompt.
            height: Image height in pixels (the model's default when None); likewise `width`.

        Returns:
            `len(prompts) * num_images_per_prompt` PIL images.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
        was_training = self.unet.training
        self.unet.eval()
        try:
            result = self.pipe(prompt=prompts, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, generator=generator, num_images_per_prompt=num_images_per_prompt,
                               height=height, width=width, output_type="pil")
        finally:
            self.unet.train(was_training)
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

    def save_weights(self, folder: Path) -> None:
        """Write the fine-tuned weights in diffusers' formats.

        A LoRA goes to `pytorch_lora_weights.safetensors` (rank/alpha in its metadata); fully fine-tuned
        components make the folder a complete diffusers pipeline; textual-inversion tokens go to
        `learned_embeds.safetensors` (then `learned_embeds-2.safetensors`, ...).
        """
        if self.config["fine_tuned_components"]:
            save_pipeline_folder(self.pipe, folder)
        for index, (token, vectors) in enumerate(self.textual_inversion_embeddings().items()):
            save_file({token: vectors.contiguous()}, str(folder / textual_inversion_file_name(index)))
        if self.has_lora:
            save_lora_file(self.pipe, folder, self.lora_configs())

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
        """Base model, method and tags (diffusers, lora, dreambooth, textual_inversion) of a saved pipeline."""
        has_lora = config.get("lora_rank") is not None
        tags = ["diffusers", "stable-diffusion", "text-to-image"] + (["lora"] if has_lora else [])
        method = "LoRA" if has_lora else "diffusion pipeline"
        if config.get("fine_tuned_components"):
            tags, method = tags + ["dreambooth"], "DreamBooth (full fine-tune)"
        if config.get("textual_inversion_tokens"):
            tags, method = tags + ["textual_inversion"], "textual inversion" if method == "diffusion pipeline" else method
        return {"base_model": config.get("base_model"), "method": method, "tags": tags}


def write_builtin_repo(folder: Path) -> None:
    """Save the built-in tiny model as a tinypipe repo (what `from_pretrained(cache, "tinypipe/tiny-sd")` loads)."""
    DiffusionPipeline(TINY_SD).save_pretrained(folder)


register_builtin_repo(TINY_SD, write_builtin_repo)
