"""The model card (README.md) of a saved repo, built from its `config.json` files without loading any weights.

```python
from tinypipe.config.card import card_data_from_repo, render_model_card

card = render_model_card(card_data_from_repo("out"), "me/my-lora")
```

The model's class names its base model, method and tags (`card_data_from_config`); the trainer's saved train
config gives the prompts and the training arguments (credentials and local-only paths left out); `validation/`
gives the images. Reading a config here imports no code a repo names that is not imported already.
"""

import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional, Union

from ..errors import ConfigError, RepoError
from ..files import child_path, read_json
from .base import ConfigBase
from .coders import is_reserved_key, plain_value
from .card_usage import usage_section
from .modules import resolve_class

__all__ = ["base_model_license", "card_data_from_repo", "card_metadata", "public_training_arguments", "public_value",
           "is_local_path", "render_model_card",
           "write_repo_card", "is_generated_card", "GENERATED_CARD_MARKER"]

GENERATED_CARD_MARKER = ("<!-- Written by tinypipe from this repo's config files, and rewritten on each save. "
                         "Delete this line to keep a README of your own. -->")
# The run's record a trainer's folder keeps (training/tracking.py writes it).
_LOSS_CURVE = "trainer/loss.png"

# Card labels of the prompts a trainer may have been run with, in the order the card shows them.
_PROMPTS = (
    ("instance_prompt", "Instance prompt"),
    ("class_prompt", "Class prompt"),
    ("validation_prompt", "Validation prompt"),
    ("validation_prompts", "Validation prompts"),
    ("placeholder_token", "Placeholder token"),
    ("initializer_token", "Initializer token"),
)
# Words for the tokenizer, not credentials, although their names end in "token".
_VOCABULARY_TOKENS = frozenset({"placeholder_token", "initializer_token"})
_SECRET_WORDS = frozenset({"token", "key", "apikey", "password", "passwd", "secret", "credential", "credentials"})
# Paths on the machine that trained, meaningless on the hub.
_LOCAL_ONLY = frozenset({"output_dir", "logging_dir", "resume_from_checkpoint"})
_HUB_TOKEN = re.compile(r"^hf_[A-Za-z0-9]{16,}$")


def _is_secret(name: str, value: Any) -> bool:
    """A training argument that may hold a credential: named like token/key/password/secret, or a hub token value."""
    if isinstance(value, str) and _HUB_TOKEN.match(value):
        return True
    if name in _VOCABULARY_TOKENS:
        return False
    return any(word in _SECRET_WORDS for word in name.lower().split("_"))


def public_training_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The training arguments a model card shows: credentials, local paths and None values dropped.

    Args:
        arguments: Plain JSON arguments, e.g. a trainer's saved train config.

    Example:
    ```python
    public_training_arguments({"learning_rate": 1e-4, "hub_token": "hf_...", "seed": None})   # {"learning_rate": 0.0001}
    ```
    """
    return {name: value for name, value in arguments.items()
            if value is not None and name not in _LOCAL_ONLY and not _is_secret(name, value)}


# -- reading a repo's configs as plain JSON ----------------------------------------------------------


def _read_config(path: Path) -> Optional[dict[str, Any]]:
    """`path` read as JSON, or None when there is no such file."""
    if not path.is_file():
        return None
    config = read_json(path)
    if not isinstance(config, dict):
        raise RepoError(f"{path} holds {type(config).__name__}, not a config object; re-save the repo before publishing it.")
    return config


def _trainer_arguments(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The trainer's recorded arguments (`config`, read from `folder/config.json`), with each method config saved
    in a sub-folder (`train_config/`) merged in."""
    arguments: dict[str, Any] = {}
    for name, value in config.items():
        if isinstance(value, dict) and "__subfolder__" in value:
            arguments.update(plain_value(_read_config(child_path(folder, name, f"The sub-folder key in {folder / 'config.json'}") / "config.json") or {}))
        elif not is_reserved_key(name):
            arguments[name] = plain_value(value)
    return arguments


def _class_card_data(dotted: Any, config: dict[str, Any], source: Path) -> dict[str, Any]:
    """What the class named `dotted` says about `config` (`card_data_from_config`), without building anything.

    A class that is not part of tinypipe or already imported (the repo's own code) is not imported just to
    write a card: the card then names the class only.
    """
    try:
        cls = resolve_class(dotted, ConfigBase, trust_remote_code=False, source=str(source))
    except (ConfigError, RepoError):
        return {"method": str(dotted).rsplit(".", 1)[-1]}
    return cls.card_data_from_config(config)


def _validation_images(repo: Path) -> list[str]:
    """`validation/before_after.png`, then the images of the newest `validation/epoch-NNNN/`, relative to the repo."""
    folder = repo / "validation"
    images = ["validation/before_after.png"] if (folder / "before_after.png").is_file() else []
    epochs = [path for path in folder.glob("epoch-*") if path.is_dir() and path.name.removeprefix("epoch-").isdigit()]
    if epochs:
        newest = max(epochs, key=lambda path: int(path.name.removeprefix("epoch-")))
        images += [path.relative_to(repo).as_posix() for path in sorted(newest.glob("*.png"))]
    return images


def card_data_from_repo(repo: Union[str, Path], obj: Any = None) -> dict[str, Any]:
    """Everything the model card says about a saved repo, read from its `config.json` files and `validation/`.

    Args:
        repo: The repo folder (written by `save_pretrained` or a trainer's `train(output_dir=...)`).
        obj: The object just saved into it, if any; when it is the model, its own `model_card_data()`
            describes the model instead of `model/config.json`.

    Returns:
        The card data `render_model_card` takes: `base_model`, `method`, `tags`, `trainer`, `instance_prompt`,
        `prompts`, `training_arguments`, `images` (those that apply), `model_files` (the file names in `model/`)
        and `license` (the base model's, or None).

    Raises:
        RepoError: The repo holds no `model/config.json` (and no object was given), or a config is not valid JSON.
    """
    repo = Path(repo)
    # 1. The model: its class decides base model, method and tags from its config.
    model_config_path = repo / "model" / "config.json"
    model_config = _read_config(model_config_path)
    if obj is not None and (getattr(obj, "__prefix__", None) == "model" or model_config is None):
        data = dict(obj.model_card_data())
    elif model_config is not None:
        data = _class_card_data(model_config.get("__module__"), plain_value(model_config), model_config_path)
    else:
        raise RepoError(f"{model_config_path} is missing: {repo} holds no model saved by save_pretrained, so there is "
                        "nothing to publish. Give the folder a trainer's train(output_dir=...) or save_pretrained wrote.")
    data["tags"] = list(data.get("tags", []))

    # 2. The trainer: its tags, the prompts and the training arguments it was run with.
    trainer_config_path = repo / "trainer" / "config.json"
    trainer_config = _read_config(trainer_config_path)
    if trainer_config is not None:
        arguments = _trainer_arguments(repo / "trainer", trainer_config)
        trainer_data = _class_card_data(trainer_config.get("__module__"), arguments, trainer_config_path)
        data["tags"] += [tag for tag in trainer_data.get("tags", []) if tag not in data["tags"]]
        data.setdefault("trainer", str(trainer_config.get("__module__", "")).rsplit(".", 1)[-1] or None)
        if not data.get("base_model") and arguments.get("base_model"):
            data["base_model"] = arguments["base_model"]
        prompts = {label: arguments[name] for name, label in _PROMPTS if arguments.get(name)}
        data["prompts"] = {**prompts, **data.get("prompts", {})}
        if arguments.get("instance_prompt"):
            data.setdefault("instance_prompt", arguments["instance_prompt"])
        data.setdefault("training_arguments", public_training_arguments(arguments))

    # 3. The validation images and the loss curve, as paths that render on the hub.
    data.setdefault("images", _validation_images(repo))
    if (repo / _LOSS_CURVE).is_file():
        data.setdefault("loss_curve", _LOSS_CURVE)

    # 4. What the "How to use" code loads (the files of model/), and the license of the base model when known.
    data.setdefault("model_files", sorted(path.name for path in (repo / "model").glob("*") if path.is_file()))
    if data.get("license") is None:
        data["license"] = base_model_license(data.get("base_model"))
    return data


def base_model_license(base_model: Any) -> Optional[str]:
    """The `license` of a base model's own card, when it is at hand without the network; None otherwise.

    Read from the YAML front matter of `README.md` in a local base-model folder, or of the hub card huggingface_hub
    already cached for a hub id (`try_to_load_from_cache`: never a download).

    Example:
    ```python
    base_model_license("stable-diffusion-v1-5/stable-diffusion-v1-5")   # "creativeml-openrail-m" once its card is cached
    ```
    """
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.repocard import metadata_load

    if not isinstance(base_model, str) or not base_model:
        return None
    card: Any = Path(base_model).expanduser() / "README.md"
    if not card.is_file():
        try:
            card = try_to_load_from_cache(base_model, "README.md")
        except HFValidationError:  # a local path that is not a hub id, and has no card
            return None
    if not isinstance(card, (str, Path)) or not Path(card).is_file():
        return None
    try:
        found = (metadata_load(card) or {}).get("license")
    except Exception:  # noqa: BLE001  (unreadable, or front matter that is not a YAML mapping: pyyaml's own errors) - no license known
        return None
    return found if isinstance(found, str) else None


def is_local_path(value: str) -> bool:
    """An absolute path of this (or another) machine: `/home/me/x`, `~/x`, `C:\\x`."""
    return value.startswith(("/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", value)) or value.startswith("\\\\")


def public_value(value: Any) -> Any:
    """`value` with every absolute local path replaced by its last part (or "local data"), at any depth.

    Example:
    ```python
    public_value({"data": "/home/me/photos", "lr": 1e-4})   # {"data": "photos", "lr": 0.0001}
    ```
    """
    if isinstance(value, str) and is_local_path(value):
        path = PureWindowsPath(value) if "\\" in value else PurePosixPath(value)
        return path.name or "local data"
    if isinstance(value, list):
        return [public_value(item) for item in value]
    if isinstance(value, dict):
        return {key: public_value(item) for key, item in value.items()}
    return value


# -- rendering ------------------------------------------------------------------------------------------


# What each kind of repo is on the hub: the library that reads its files and the hub task it does.
_LIBRARIES = (("peft", "peft", "text-generation"), ("transformers", "transformers", "text-generation"),
              ("diffusers", "diffusers", "text-to-image"))


def card_metadata(card_data: dict[str, Any]) -> "Any":
    """The YAML metadata of the card (huggingface_hub `ModelCardData`): what the hub shows and searches by.

    `library_name` is the library that reads the repo's files (`diffusers` for a diffusion repo, `peft` for a
    causal-LM adapter), `pipeline_tag` the task, `tags` those of the model and trainer plus `tinypipe` (and
    `template:sd-lora`, the hub's LoRA page, for a diffusion LoRA), `license` the base model's when known, and
    `widget` the validation images with their prompt.

    Args:
        card_data: What `card_data_from_repo` returns.
    """
    from huggingface_hub import ModelCardData

    tags = set(["tinypipe", *card_data.get("tags", [])])
    library, task = next(((library, task) for tag, library, task in _LIBRARIES if tag in tags), ("tinypipe", None))
    if library == "diffusers" and "lora" in tags:
        tags |= {"template:sd-lora", "text-to-image"}
    prompt = card_data.get("prompts", {}).get("Validation prompt") or card_data.get("instance_prompt")
    widget = [{"text": prompt, "output": {"url": image}} for image in card_data.get("images", [])
              if prompt and not image.endswith("before_after.png")]
    return ModelCardData(library_name=library, pipeline_tag=task, tags=sorted(tags), base_model=card_data.get("base_model"),
                         license=card_data.get("license"), instance_prompt=card_data.get("instance_prompt"),
                         widget=widget or None)


def render_model_card(card_data: dict[str, Any], repo_id: str) -> "Any":
    """Build a huggingface_hub `ModelCard` (README.md) from card data (see `card_data_from_repo`).

    Args:
        card_data: `base_model`, `method`, `trainer`, `instance_prompt`, `prompts` (`{label: prompt or prompts}`),
            `tags`, `images` and `loss_curve` (paths relative to the repo), `training_arguments`, `model_files`, `license`,
            `lora_at_root`; all optional.
        repo_id: The hub repo the card describes.
    """
    from huggingface_hub import ModelCard

    metadata = card_metadata(card_data)
    trainer = f"'s `{card_data['trainer']}`" if card_data.get("trainer") else ""
    lines = [f"# {repo_id}", "", f"Trained with [tinypipe](https://pypi.org/project/tinypipe/){trainer}: {card_data.get('method', 'model')}."]
    if card_data.get("base_model"):
        lines += ["", f"Base model: `{card_data['base_model']}`."]
    for label, prompt in card_data.get("prompts", {}).items():
        shown = ", ".join(f"`{item}`" for item in prompt) if isinstance(prompt, (list, tuple)) else f"`{prompt}`"
        lines += ["", f"{label}: {shown}"]
    if card_data.get("training_arguments"):
        arguments = json.dumps(card_data["training_arguments"], indent=2, sort_keys=True, default=str)
        lines += ["", "## Training arguments", "", "```json", arguments, "```"]
    if card_data.get("images"):
        lines += ["", "## Validation images", ""] + [f"![]({image})" for image in card_data["images"]]
    if card_data.get("loss_curve"):
        lines += ["", "## Training loss", "", f"![Training loss per optimizer step]({card_data['loss_curve']})",
                  "", "The loss of every optimizer step is in `trainer/metrics.jsonl`."]
    lines += ["", *usage_section(card_data, repo_id), ""]
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines))


def is_generated_card(text: str) -> bool:
    """Whether a README.md is the card tinypipe wrote (and may rewrite), not one of the user's."""
    return GENERATED_CARD_MARKER in text


def write_repo_card(repo: Union[str, Path]) -> Optional[Path]:
    """Write the model card of a saved repo as its `README.md`: base model, prompts, training arguments, the
    validation images and the loss curve. A README.md of the user's (without tinypipe's marker line) is left as it is.

    Absolute local paths in the card become their last part, as on the hub.

    Args:
        repo: The repo folder.

    Returns:
        The README.md written, or None when the user's own was kept.
    """
    from ..files import write_atomic

    repo = Path(repo)
    readme = repo / "README.md"
    if readme.is_file() and not is_generated_card(readme.read_text(encoding="utf-8", errors="replace")):
        return None
    card = str(render_model_card(public_value(card_data_from_repo(repo)), repo.resolve().name))
    write_atomic(readme, card.rstrip("\n") + "\n\n" + GENERATED_CARD_MARKER + "\n")
    return readme
