"""`CausalLMPipeline`: a transformers causal language model with an optional PEFT LoRA adapter, as a config object.

```python
from tinypipe.models import CausalLMPipeline

pipeline = CausalLMPipeline("tinypipe/tiny-llama")           # or a hub id (+ revision) / a local transformers folder
pipeline.generate(instruction="What is the capital of France?")
pipeline.save_pretrained("out")   # out/model/config.json (+ adapter_config.json, adapter_model.safetensors with a LoRA)
```

The adapter files are PEFT's own format (written and read by `models.peft_adapter`), so plain peft reads them
unchanged: `peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "out/model")`. The base
model loads through `models.transformers_base`.
"""

import copy
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from ..config.hub import register_builtin_repo
from ..config import ConfigMixin, Ignore, save_config
from ..errors import ConfigError, RepoError
from ..builtin.tiny_llama import TINY_LLAMA, TINY_LLAMA_CHAT
from .base_models import same_base_model
from .chat import PROMPT_TEMPLATES, check_conversations, encode_conversations, instruction_conversations, require_chat_template
from .generation import encode_prompts, generate_new_tokens, stop_token_ids
from .lora_targets import ATTENTION_PROJECTIONS, check_target_modules, default_lora_targets
from .base_models import refuse_other_base_model
from .peft_adapter import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    adapter_mismatch,
    read_adapter_config,
    read_adapter_weights,
    write_adapter_files,
)
from .transformers_base import load_base_model

__all__ = ["CausalLMPipeline", "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "ATTENTION_PROJECTIONS", "load_base_model"]

LORA_SETTINGS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules")  # the config keys that describe the adapter


class CausalLMPipeline(ConfigMixin):
    """A causal language model with an optional PEFT LoRA adapter.

    Args:
        base_model: A hub id (`"meta-llama/Llama-3.2-1B"`), a local transformers folder, or the built-in
            offline model `"tinypipe/tiny-llama"`.
        revision: Hub revision of `base_model`.
        lora_rank: Rank `r` of the LoRA adapter; None for no adapter.
        lora_alpha: LoRA scale numerator (the update is scaled by `lora_alpha / lora_rank`); defaults to the rank.
        lora_dropout: Dropout on the LoRA input while training.
        lora_target_modules: Module names the LoRA wraps, or `"all-linear"` for every linear layer but the output
            head; None (the default) picks the attention projections of the model's architecture
            (`models.lora_targets.default_lora_targets`), and the config records the names picked.
        quantization: Load the base model in `"8bit"` or `"4bit"` through bitsandbytes (CUDA only), or None.
        torch_dtype: dtype the base model is loaded in.
        chat_template: The prompt template the tokenizer renders conversations with: a name (`"chatml"`, `"llama-3"`,
            `"alpaca"`, `"alpaca-lora"`) or a Jinja template; None keeps the tokenizer's own. Special tokens the
            template needs and the tokenizer lacks (chatml's `<|im_start|>`, `<|im_end|>`) are added, the embeddings
            grow to hold them, and a LoRA adapter then trains (and saves) their embedding rows. With a template, the
            saved `model/` also holds the tokenizer files (with `chat_template`), so transformers renders prompts
            from it as training did.
        device: Where to run (not recorded); `cuda` when available, else `cpu`.
        token: Hub token for a private base model (not recorded).

    Example:
    ```python
    pipeline = CausalLMPipeline("tinypipe/tiny-llama", lora_rank=8)
    pipeline.generate(instruction="Add the two numbers.", input="2 and 3", max_new_tokens=16)
    ```
    """

    __weight__ = ADAPTER_WEIGHTS_NAME

    @save_config
    def __init__(
        self,
        base_model: str = TINY_LLAMA,
        revision: Optional[str] = None,
        lora_rank: Optional[int] = None,
        lora_alpha: Optional[float] = None,
        lora_dropout: float = 0.0,
        lora_target_modules: Union[tuple, str, None] = None,
        quantization: Optional[str] = None,
        torch_dtype: torch.dtype = torch.float32,
        chat_template: Optional[str] = None,
        device: Ignore = None,
        token: Ignore = None,
    ):
        self.base_model, self.revision = base_model, revision
        self.model, self.tokenizer = load_base_model(base_model, revision, torch_dtype, quantization, token)
        self.added_token_ids: list[int] = []
        if chat_template is not None:
            self._use_chat_template(chat_template)
        if quantization is None:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model.to(self.device)
        else:
            self.device = self.model.device
        self.model.eval()
        if lora_rank is not None:
            self._add_lora(lora_rank, lora_alpha, lora_dropout, lora_target_modules)

    # -- the chat template ----------------------------------------------------------------------------

    def _use_chat_template(self, chat_template: str) -> None:
        from ..data.chat_templates import prepare_tokenizer, resolve_chat_template

        added = prepare_tokenizer(self.tokenizer, resolve_chat_template(chat_template, "messages", self.tokenizer))
        if added:
            with torch.random.fork_rng(devices=[]):  # the new rows start the same on every run (they are trained)
                torch.manual_seed(0)
                self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            self.added_token_ids = self.tokenizer.convert_tokens_to_ids(added)

    def set_chat_template(self, chat_template: str) -> None:
        """Render conversations with `chat_template` from now on, as the constructor's `chat_template` does; recorded.

        Raises:
            ConfigError: The pipeline already has another template, or it has an adapter and the template needs
                tokens the tokenizer lacks (the adapter could not train their embeddings).
        """
        current = self.config.get("chat_template")
        if current == chat_template:
            return
        if current is not None:
            raise ConfigError(f"This pipeline renders with chat_template={current!r} already; it cannot switch to "
                              f"{chat_template!r}. Train with its own template, or start from the base model.")
        if self.has_lora:
            from ..data.chat_templates import resolve_chat_template

            template = resolve_chat_template(chat_template, "messages", self.tokenizer)
            missing = [token for token in template.special_tokens if token not in self.tokenizer.get_vocab()]
            if missing:
                raise ConfigError(f"chat_template={chat_template!r} needs the tokens {missing}, which the tokenizer lacks, and "
                                  "this pipeline's adapter has no embedding rows for them; start from the base model, or "
                                  "use a template made of the tokenizer's own tokens.")
        self._use_chat_template(chat_template)
        self._record(chat_template=chat_template)

    def _trainable_token_indices(self) -> Optional[dict[str, list[int]]]:
        """peft's `trainable_token_indices` for the tokens the chat template added: their input and output embedding rows."""
        if not self.added_token_ids:
            return None
        names = {module: name.rsplit(".", 1)[-1] for name, module in self.model.named_modules()}
        inputs, outputs = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        indices = {names[inputs]: list(self.added_token_ids)}
        if outputs is not None and outputs.weight is not inputs.weight:  # untied: the output head's rows learn too
            indices[names[outputs]] = list(self.added_token_ids)
        return indices

    # -- the adapter --------------------------------------------------------------------------------

    @property
    def has_lora(self) -> bool:
        """Whether the model carries a LoRA adapter."""
        return self.config.get("lora_rank") is not None

    def _make_lora_config(self, rank: int, alpha: Optional[float], dropout: float, targets: Union[Sequence[str], str]):
        from peft import LoraConfig

        return LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=alpha or rank, lora_dropout=dropout,
                          target_modules=targets if isinstance(targets, str) else list(targets),
                          trainable_token_indices=self._trainable_token_indices(),
                          base_model_name_or_path=self.base_model, revision=self.revision)

    def default_lora_targets(self) -> tuple[str, ...]:
        """The LoRA target modules of this base model's architecture: its attention projections (see
        `models.lora_targets.default_lora_targets`).

        Raises:
            ConfigError: The architecture has no known attention projections (the message lists its linear layers).
        """
        from peft import PeftModel

        return default_lora_targets(self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model)

    def _add_lora(self, rank: int, alpha: Optional[float], dropout: float, targets: Union[Sequence[str], str, None]) -> None:
        from peft import get_peft_model

        if rank < 1:
            raise ConfigError(f"lora_rank (r) must be >= 1, got {rank}.")
        if not 0 <= dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {dropout}.")
        if targets is None:
            targets = self.default_lora_targets()
        targets = targets if isinstance(targets, str) else tuple(targets)
        check_target_modules(self.model, targets, setting="target_modules (lora_target_modules)", model_name=repr(self.base_model),
                             alternative="or 'all-linear'")
        previous = dict(self.config)
        self._record(lora_rank=rank, lora_alpha=alpha, lora_dropout=dropout, lora_target_modules=targets)
        try:
            with warnings.catch_warnings():  # peft probes transformers' deprecated alias; nothing for the user to do
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
                self.model = get_peft_model(self.model, self._make_lora_config(rank, alpha, dropout, targets))
        except ValueError as error:
            self._record(**{key: previous.get(key) for key in LORA_SETTINGS})
            modules = sorted({name.rsplit(".", 1)[-1] for name, module in self.model.named_modules() if isinstance(module, torch.nn.Linear)})
            raise ConfigError(f"target_modules={targets!r} do not fit {self.base_model!r} ({str(error).splitlines()[0]}). "
                              f"Its linear layers are {modules}; pick some of them, or 'all-linear'.") from error
        self.model.eval()

    def add_lora(self, rank: int = 8, alpha: Optional[float] = None, dropout: float = 0.0,
                 target_modules: Union[Sequence[str], str, None] = None) -> None:
        """Add a fresh LoRA adapter (it changes nothing until trained); the config records it.

        Args:
            rank: The LoRA rank `r`.
            alpha: The LoRA scale numerator; defaults to the rank.
            dropout: Dropout on the LoRA input while training.
            target_modules: Module names, or `"all-linear"`; None picks the architecture's attention projections.

        Raises:
            ConfigError: The pipeline already has an adapter, or `target_modules` match no layer.
        """
        if self.has_lora:
            raise ConfigError("This pipeline already has a LoRA adapter; build a pipeline without one to add a new one.")
        self._add_lora(rank, alpha, dropout, target_modules)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter weights with peft's keys, as in `adapter_model.safetensors`."""
        from peft.utils import get_peft_model_state_dict

        # The base embeddings are never trained here, so peft need not look the base model up to check them.
        return get_peft_model_state_dict(self.model, save_embedding_layers=False) if self.has_lora else {}

    def load_adapter(self, folder: Union[str, Path], allow_other_base: bool = False) -> None:
        """Load a PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`), e.g. one peft saved.

        Args:
            folder: The adapter folder.
            allow_other_base: Load an adapter whose `adapter_config.json` names another base model than this
                pipeline's (only a warning then). Its layer shapes must still fit.

        Raises:
            ConfigError: The pipeline already has an adapter.
            RepoError: A file is missing, empty or corrupt, the adapter was trained on another base model (and
                `allow_other_base` is False), or it does not fit the base model (the message names the file and
                the mismatched weights).
        """
        from peft.utils import set_peft_model_state_dict

        # 1. Read and check both files before changing the model.
        config_path, settings, lora = read_adapter_config(Path(folder))
        recorded = settings.get("base_model_name_or_path")
        if recorded and not same_base_model(recorded, self.base_model):
            refuse_other_base_model(f"{config_path} was trained on the base model {recorded!r} (its base_model_name_or_path), "
                                    f"but this pipeline's base model is {self.base_model!r}", recorded, allow_other_base)
        state = read_adapter_weights(Path(folder))

        # 2. Add an adapter of the same shape and check the file fills it exactly.
        if self.has_lora:
            raise ConfigError("This pipeline already has a LoRA adapter; load the adapter into a pipeline without one.")
        targets = lora.target_modules if isinstance(lora.target_modules, str) else tuple(sorted(lora.target_modules))
        try:
            self._add_lora(lora.r, lora.lora_alpha, lora.lora_dropout, targets)
        except ConfigError as error:
            raise RepoError(f"{config_path} does not fit the base model {self.base_model!r}: {error}") from error
        mismatch = adapter_mismatch({key: tensor.shape for key, tensor in self.adapter_state_dict().items()}, state)
        if mismatch is not None:
            self._remove_lora()
            raise RepoError(f"{Path(folder) / ADAPTER_WEIGHTS_NAME} does not match the base model {self.base_model!r} ({mismatch}). "
                            "It was trained on another base model or with other settings; load it on the model it was trained on.")
        set_peft_model_state_dict(self.model, state)
        self.model.eval()

    def replace_adapter(self, folder: Union[str, Path], allow_other_base: bool = False) -> None:
        """Replace this pipeline's LoRA adapter (or add one) with a PEFT adapter folder, as `load_adapter` reads it.

        The new adapter may have another rank, alpha or target modules; the config records them. If it
        does not fit, the old adapter is put back before the error is raised.

        Args:
            folder: The adapter folder.
            allow_other_base: Accept an adapter trained on another base model, as in `load_adapter`.

        Raises:
            RepoError: A file is missing or corrupt, the adapter was trained on another base model, or it does
                not fit the base model.
        """
        from peft.utils import set_peft_model_state_dict

        if not self.has_lora:
            self.load_adapter(folder, allow_other_base)
            return
        previous = {key: self.config[key] for key in LORA_SETTINGS}
        state = {key: tensor.detach().clone() for key, tensor in self.adapter_state_dict().items()}
        self._remove_lora()
        try:
            self.load_adapter(folder, allow_other_base)
        except (ConfigError, RepoError):
            self._add_lora(previous["lora_rank"], previous["lora_alpha"], previous["lora_dropout"], previous["lora_target_modules"])
            set_peft_model_state_dict(self.model, state)
            self.model.eval()
            raise

    def _remove_lora(self) -> None:
        """Take the adapter off again (one that turned out not to fit, or one being replaced)."""
        self.model = self.model.unload()
        self._record(lora_rank=None, lora_alpha=None, lora_dropout=0.0, lora_target_modules=None)

    def merge(self, save_directory: Union[str, Path, None] = None, dtype: Union[str, torch.dtype, None] = None):
        """A plain transformers model with the LoRA merged into its weights; this pipeline is left unchanged.

        Args:
            save_directory: Also save the merged model and the tokenizer there (transformers' format, safetensors,
                with the chat template and generation config), loadable with `AutoModelForCausalLM.from_pretrained`;
                written as `models.merged_model.save_merged_model` does (atomically, never over files it did not write).
            dtype: `"float32"`, `"bfloat16"` or `"float16"` for the merged model; None keeps the pipeline's.

        Returns:
            A `transformers.PreTrainedModel` (a copy; without an adapter, a copy of the base model).

        Raises:
            ConfigError: The base model is quantized (load it with quantization=None to merge), an unknown dtype, or a
                `save_directory` holding other files.
        """
        from .merged_model import check_merge_output, resolve_merge_dtype, save_merged_model

        if self.config["quantization"] is not None:
            raise ConfigError("Cannot merge a LoRA into a quantized base model; build the pipeline with quantization=None "
                              "and load the adapter to merge it.")
        torch_dtype = resolve_merge_dtype(dtype)
        if save_directory is not None:
            check_merge_output(Path(save_directory))
        model = copy.deepcopy(self.model)
        merged = model.merge_and_unload() if self.has_lora else model
        merged.eval()
        if torch_dtype is not None:
            merged.to(torch_dtype)
        if save_directory is not None:
            save_merged_model(merged, self.tokenizer, save_directory)
        return merged

    # -- generation ---------------------------------------------------------------------------------

    def _prompts(self, prompt: Union[str, Sequence[str], None], instruction: Union[str, Sequence[str], None],
                 input: Union[str, Sequence[str]]) -> tuple[list[str], bool]:
        from ..data.instructions import render_prompt

        if (prompt is None) == (instruction is None):
            raise ConfigError("generate() needs either a prompt or an instruction (with an optional input) or messages=[...]: "
                              "exactly one of them.")
        if prompt is not None:
            return ([prompt], True) if isinstance(prompt, str) else (list(prompt), False)
        single = isinstance(instruction, str)
        instructions = [instruction] if single else list(instruction)
        inputs = [input] * len(instructions) if isinstance(input, str) else list(input)
        if len(inputs) != len(instructions):
            raise ConfigError(f"generate() got {len(instructions)} instructions but {len(inputs)} inputs.")
        separator = "\n" if self.config.get("chat_template") == "alpaca-lora" else ""  # the template it was trained with
        return [render_prompt(text, context or "", separator) for text, context in zip(instructions, inputs)], single

    def generate_ids(self, prompts: Sequence[str], max_new_tokens: int = 64, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, seed: Optional[int] = 0) -> list[list[int]]:
        """The new token ids for each prompt, up to and including the stop token (`<eos>`) when the model produced one.

        Args:
            prompts: Texts to continue (the tokenizer adds its `<bos>`).
            max_new_tokens: Most tokens generated per prompt.
            do_sample: Sample instead of greedy decoding; `temperature` and `top_p` then apply.
            seed: Seed of the sampling (torch's RNG state is left as it was); None for an unseeded draw.
        """
        return self._generate(encode_prompts(self.tokenizer, prompts), max_new_tokens, do_sample, temperature, top_p, seed)

    def _generate(self, batch: Mapping[str, torch.Tensor], max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                  seed: Optional[int]) -> list[list[int]]:
        return generate_new_tokens(self.model, batch, stop_ids=stop_token_ids(self.model, self.tokenizer), device=self.device,
                                   pad_token_id=self.tokenizer.pad_token_id, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   temperature=temperature, top_p=top_p, seed=seed)

    def generate(
        self,
        prompt: Union[str, Sequence[str], None] = None,
        *,
        instruction: Union[str, Sequence[str], None] = None,
        input: Union[str, Sequence[str]] = "",
        messages: Optional[Sequence[Any]] = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: Optional[int] = 0,
    ) -> Union[str, list[str]]:
        """Continue a prompt, answer an instruction, or reply in a conversation; greedy by default.

        Args:
            prompt: A text or a list of texts to continue as they are.
            instruction: Instead of `prompt`: an instruction or a list of them, rendered as training rendered alpaca
                records: with the alpaca prompt (with `input` when it is non-empty), or, for a repo trained with a chat
                template (chatml, llama-3, the tokenizer's own, ...), as a user turn of that template.
            input: The input of the instruction (or one per instruction).
            messages: Instead: a conversation `[{"role": "system"|"user"|"assistant", "content": ...}, ...]` (or a
                list of them), rendered with the tokenizer's chat template (the one training saved) and its
                generation prompt, as `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` does.
            max_new_tokens: Most tokens generated; generation stops earlier at `<eos>`.
            do_sample: Sample instead of greedy decoding; `temperature` and `top_p` then apply.
            seed: Seed of the sampling.

        Returns:
            The generated text (without the prompt and special tokens): for `messages`, the assistant's reply. A
            string for a single prompt, instruction or conversation, else a list.

        Raises:
            ConfigError: Not exactly one of `prompt`, `instruction` and `messages`, a message that is not a
                `{"role", "content"}` dict, or `messages` for a tokenizer without a chat template.

        Example:
        ```python
        pipeline.generate(instruction="Translate the word into French.", input="cat")   # 'chat' once trained
        pipeline.generate(messages=[{"role": "user", "content": "What is the capital of France?"}])
        ```
        """
        sampling = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed)
        if instruction is not None and messages is None and self.config.get("chat_template") not in PROMPT_TEMPLATES:
            conversations = instruction_conversations(instruction, input)  # the repo's chat template, as training rendered them
            messages, instruction = (conversations[0] if isinstance(instruction, str) else conversations), None
        if messages is not None:
            if prompt is not None or instruction is not None:
                raise ConfigError("generate() takes messages, a prompt or an instruction: give only one of them.")
            conversations, single = check_conversations(messages)
            require_chat_template(self.tokenizer, repr(self.base_model))
            ids = self._generate(encode_conversations(self.tokenizer, conversations), **sampling)
        else:
            prompts, single = self._prompts(prompt, instruction, input)
            ids = self.generate_ids(prompts, **sampling)
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        return texts[0] if single else texts

    def __call__(self, *args: Any, **kwargs: Any) -> Union[str, list[str]]:
        """Generate, as diffusers' and transformers' pipelines do when called: the same as `generate(...)`.

        Example:
        ```python
        pipeline = AutoModelPipeline.from_pretrained("model_cache_path", "model_repo")
        text = pipeline("Once upon a time")   # same as pipeline.generate("Once upon a time")
        ```
        """
        return self.generate(*args, **kwargs)

    # -- saving and loading -------------------------------------------------------------------------

    def save_weights(self, folder: Path) -> None:
        """Write the adapter as PEFT does: `adapter_config.json` and `adapter_model.safetensors` (no adapter, no files)."""
        if not self.has_lora:
            return
        settings = self.model.peft_config["default"].to_dict()
        settings.update(base_model_name_or_path=self.base_model, revision=self.revision)
        write_adapter_files(folder, settings, self.adapter_state_dict())
        if self.config.get("chat_template") is not None:
            self.tokenizer.save_pretrained(folder)  # with its chat template: what transformers / peft users load

    @classmethod
    def _build_from_folder(cls, folder: Path, arguments: Mapping[str, Any], overrides: Mapping[str, Any]) -> "CausalLMPipeline":
        """Build the base model, then load the saved adapter (checked against the base model)."""
        lora = {key: arguments[key] for key in LORA_SETTINGS if key in arguments}
        pipeline = cls._from_arguments({**arguments, "lora_rank": None}, overrides)
        if lora.get("lora_rank") is None:
            return pipeline
        pipeline.load_adapter(folder, allow_other_base="base_model" in overrides)  # the caller chose the base model
        pipeline._record(**lora)
        return pipeline

    @classmethod
    def card_data_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Base model, method and tags (transformers, text-generation, peft, lora) of a saved pipeline."""
        has_lora = config.get("lora_rank") is not None
        tags = ["transformers", "text-generation"] + (["peft", "lora"] if has_lora else [])
        return {"base_model": config.get("base_model"), "method": "LoRA (PEFT)" if has_lora else "causal LM", "tags": tags}


def write_builtin_repo(folder: Path) -> None:
    """Save the built-in tiny Llama as a tinypipe repo (what `from_pretrained(cache, "tinypipe/tiny-llama")` loads)."""
    CausalLMPipeline(TINY_LLAMA).save_pretrained(folder)


def write_builtin_chat_repo(folder: Path) -> None:
    """Save the built-in tiny Llama chat model as a tinypipe repo (`from_pretrained(cache, "tinypipe/tiny-llama-chat")`)."""
    CausalLMPipeline(TINY_LLAMA_CHAT).save_pretrained(folder)


register_builtin_repo(TINY_LLAMA, write_builtin_repo)
register_builtin_repo(TINY_LLAMA_CHAT, write_builtin_chat_repo)
