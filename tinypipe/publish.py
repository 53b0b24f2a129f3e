"""Publish a saved repo folder to the Hugging Face Hub, with a complete model card, without loading weights.

```python
from tinypipe.publish import push_repo_folder

push_repo_folder("out", "me/my-lora", private=True)   # uploads out/ with a model card; out/ is only read
```

The card is built from the repo's `config.json` files only: the model's class names its base model,
method and tags (`card_data_from_config`); the trainer's saved train config gives the prompts and the
training arguments; `validation/` gives the images. `checkpoints/` (optimizer state) is never uploaded.
The token goes to huggingface_hub only: never into the card, a repo file or a log line.

What is uploaded is staged in a temporary folder, so the user's folder is never written to: a README.md
they wrote is published as it is (the generated card is used only where there is none), and absolute
local paths in the published JSON files and card (a data folder, a local base model) become their last
part (`/home/me/photos` -> `photos`), with the filelists of the staged copy rewritten to match.

This module imports nothing heavy at import time (the CLI imports it for `tinypipe push`).
"""

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional, Union

from .config.coders import is_reserved_key
from .config.hub import _DOWNLOAD_STAMP, render_model_card
from .files import child_path, read_json
from .errors import ConfigError, RepoError

__all__ = ["push_repo_folder", "card_data_from_repo", "upload_repo", "public_training_arguments", "public_value", "UPLOAD_IGNORE_PATTERNS"]

logger = logging.getLogger(__name__)

# Never uploaded: resumable training state, the hub download cache and stamp, half-done or replaced saves.
UPLOAD_IGNORE_PATTERNS = ("checkpoints/**", ".cache/**", _DOWNLOAD_STAMP, ".*.tmp-*/**", ".*.old-*/**", "**/__pycache__/**")

# Card labels of the prompts a trainer may have been run with, in the order the card shows them.
_PROMPTS = (
    ("instance_prompt", "Instance prompt"),
    ("class_prompt", "Class prompt"),
    ("validation_prompt", "Validation prompt"),
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


def _plain(value: Any) -> Any:
    """A `config.json` value as plain JSON: tuples, paths, dtypes and enums unwrapped, nothing imported."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return [_plain(item) for item in value["__tuple__"]]
    for tag in ("__path__", "__dtype__"):
        if tag in value:
            return value[tag]
    if "__enum__" in value:
        return _plain(value.get("value"))
    return {key: _plain(item) for key, item in value.items() if not is_reserved_key(key)}


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
            arguments.update(_plain(_read_config(child_path(folder, name, f"The sub-folder key in {folder / 'config.json'}") / "config.json") or {}))
        elif not is_reserved_key(name):
            arguments[name] = _plain(value)
    return arguments


def _class_card_data(dotted: Any, config: dict[str, Any], source: Path) -> dict[str, Any]:
    """What the class named `dotted` says about `config` (`card_data_from_config`), without building anything.

    A class that is not part of tinypipe or already imported (the repo's own code) is not imported just to
    write a card: the card then names the class only.
    """
    from .config.mixin import ConfigMixin
    from .config.modules import resolve_class

    try:
        cls = resolve_class(dotted, ConfigMixin, trust_remote_code=False, source=str(source))
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
        `prompts`, `training_arguments`, `images` (those that apply).

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
        data = _class_card_data(model_config.get("__module__"), _plain(model_config), model_config_path)
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

    # 3. The validation images, as paths that render on the hub.
    data.setdefault("images", _validation_images(repo))
    return data


# -- uploading ------------------------------------------------------------------------------------------


def _login_hint(repo: Path) -> str:
    return (f"The local repo at {repo} is saved and intact. Log in with `hf auth login`, or set HF_TOKEN, "
            "or pass token=... (--token on the command line), and push again.")


def _is_local_path(value: str) -> bool:
    """An absolute path of this (or another) machine: `/home/me/x`, `~/x`, `C:\\x`."""
    return value.startswith(("/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", value)) or value.startswith("\\\\")


def public_value(value: Any) -> Any:
    """`value` with every absolute local path replaced by its last part (or "local data"), at any depth.

    Example:
    ```python
    public_value({"data": "/home/me/photos", "lr": 1e-4})   # {"data": "photos", "lr": 0.0001}
    ```
    """
    if isinstance(value, str) and _is_local_path(value):
        path = PureWindowsPath(value) if "\\" in value else PurePosixPath(value)
        return path.name or "local data"
    if isinstance(value, list):
        return [public_value(item) for item in value]
    if isinstance(value, dict):
        return {key: public_value(item) for key, item in value.items()}
    return value


def _stage(repo: Path, staging: Path, card: str, redact) -> None:
    """Copy what is published from `repo` into `staging`: ignored files left out, JSON files with local paths or
    secrets made public (and the filelists of their folders rewritten), the card as README.md unless the user wrote one."""
    from huggingface_hub.utils import filter_repo_objects

    from .config.filelist import FILELIST, write_filelist

    files = sorted(path.relative_to(repo).as_posix() for path in repo.rglob("*") if path.is_file())
    changed_folders = set()
    for relative in filter_repo_objects(files, ignore_patterns=list(UPLOAD_IGNORE_PATTERNS)):
        source, target = repo / relative, staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".json":
            try:
                original = json.loads(source.read_text(encoding="utf-8"))
            except ValueError:
                original = None  # not JSON after all: published as it is
            public = redact(json.dumps(public_value(original), indent=2, sort_keys=True)) + "\n"
            if original is not None and json.loads(public) != original:
                target.write_text(public, encoding="utf-8")
                changed_folders.add(next((parent for parent in source.parents
                                          if parent.is_relative_to(repo) and (parent / FILELIST).is_file()), None))
                continue
        try:
            os.link(source, target)  # weights are not copied byte by byte where the file system allows
        except OSError:
            shutil.copyfile(source, target)
    for folder in changed_folders - {None}:
        staged = staging / folder.relative_to(repo)
        (staged / FILELIST).unlink()
        write_filelist(staged)
    if not (staging / "README.md").exists():
        (staging / "README.md").write_text(card if card.endswith("\n") else card + "\n", encoding="utf-8")


def upload_repo(repo: Path, repo_id: Optional[str], card_data: dict[str, Any], *, private: Optional[bool] = None,
                token: Optional[str] = None, commit_message: Optional[str] = None) -> str:
    """Create the hub repo `repo_id` and upload the folder `repo` with a model card; `repo` itself is only read.

    Nothing touches the network before a token is known to exist. The token is handed to huggingface_hub
    only, and removed from the card, the published files and error messages should anything echo it. A
    `README.md` the user wrote is published unchanged; otherwise the card is generated into the upload.
    Absolute local paths in the card and the published JSON files become their last part.

    Args:
        repo: The saved repo folder.
        repo_id: The hub repo, e.g. `"me/my-lora"`.
        card_data: What the card says (see `card_data_from_repo`).
        private: Create the hub repo as private (None: the hub's default).
        token: A hub token; None uses the one `hf auth login` stored or `HF_TOKEN`.
        commit_message: The hub commit message.

    Returns:
        The URL of the hub repo.

    Raises:
        RepoError: No `repo_id`, no token, or a failed push; the message says the local repo is intact.
    """
    import huggingface_hub

    # 1. Check what is needed before anything is written or sent.
    if not repo_id:
        raise RepoError(f"Publishing {repo} needs repo_id='user/name' (the hub repo to create or update).")
    stored_token = huggingface_hub.get_token()
    if token is None and stored_token is None:
        raise RepoError(f"Pushing {repo} to the hub as {repo_id!r} needs a Hugging Face token, and none was found; "
                        f"nothing was sent. {_login_hint(repo)}")
    secrets = [secret for secret in (token, stored_token) if secret]

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    # 2. The model card, with no local paths (a local base model is not a hub id the card can link).
    local_base = isinstance(card_data.get("base_model"), str) and _is_local_path(card_data["base_model"])
    card_data = {**public_value(card_data), **({"base_model": None} if local_base else {})}
    card = redact(str(render_model_card(card_data, repo_id)))

    # 3. Stage what is published next to nothing of the user's, create the hub repo and upload it.
    logger.info("Pushing %s to the hub as %s", repo, repo_id)
    api = huggingface_hub.HfApi(token=token)
    try:  # beside the repo, so that its weights are hard links rather than copies
        staging_folder = tempfile.TemporaryDirectory(prefix=f".{repo.resolve().name}.upload-", dir=repo.resolve().parent)
    except OSError:
        staging_folder = tempfile.TemporaryDirectory(prefix=".tinypipe-upload-")
    with staging_folder as staging:
        try:
            _stage(repo, Path(staging), card, redact)
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message or "Upload with tinypipe",
                              ignore_patterns=list(UPLOAD_IGNORE_PATTERNS))
        except Exception as error:
            raise RepoError(redact(f"Pushing {repo} to the hub as {repo_id!r} failed ({type(error).__name__}: {error}). "
                                   f"{_login_hint(repo)}")) from error
    return str(url)


def push_repo_folder(repo: Union[str, Path], repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                     commit_message: Optional[str] = None) -> str:
    """Publish an already saved repo folder to the hub as `repo_id`, with a complete model card.

    No weights are loaded: the card is built from the repo's `config.json` files and `validation/` images,
    and the saved folders are checked against their `filelist.txt` first, so what is published loads.
    `checkpoints/` is not uploaded. Works for LoRA, DreamBooth, textual-inversion and causal-LM repos.

    Args:
        repo: The repo folder (from `save_pretrained` or a trainer's `train(output_dir=...)`).
        repo_id: The hub repo, e.g. `"me/my-lora"`; created if missing.
        private: Create the hub repo as private (None: the hub's default).
        token: A hub token; None uses the one `hf auth login` stored or `HF_TOKEN`. Never written anywhere.
        commit_message: The hub commit message.

    Returns:
        The URL of the hub repo.

    Raises:
        RepoError: The folder is not a complete repo, no token is available, or the push failed. The
            local repo is left as it was.

    Example:
    ```python
    push_repo_folder("out", "me/sks-circle-lora", private=True)
    ```
    """
    from .config.filelist import FILELIST, verify_filelist

    repo = Path(repo)
    if not repo.is_dir():
        raise RepoError(f"{repo} is not a folder; give the repo folder save_pretrained or train(output_dir=...) wrote.")
    for component in ("model", "trainer"):
        if (repo / component / FILELIST).is_file():
            verify_filelist(repo / component)
    return upload_repo(repo, repo_id, card_data_from_repo(repo), private=private, token=token, commit_message=commit_message)
