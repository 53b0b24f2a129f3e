"""The Hugging Face Hub side of repos: download into a cache folder, publish with a model card.

All network access goes through huggingface_hub (`snapshot_download`, `HfApi`), so its offline mode
(`HF_HUB_OFFLINE=1`), tokens and endpoints behave as users expect.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import RepoError
from ..files import child_path

__all__ = ["resolve_repo", "cache_folder", "push_repo", "register_builtin_repo", "render_model_card", "is_offline"]

_DOWNLOAD_STAMP = ".tinypipe-download.json"

# Built-in names (the tiny offline models) that write a repo instead of downloading one:
# name -> "module:function", imported only when the name is used.
_BUILTIN_REPOS: dict[str, str] = {
    "tinypipe/tiny-sd": "tinypipe.models.diffusion:write_builtin_repo",
    "tinypipe/tiny-llama": "tinypipe.models.causal_lm:write_builtin_repo",
}


def register_builtin_repo(name: str, writer: str) -> None:
    """Make `name` usable wherever a hub id is: `writer` ("module:function") saves the repo into a folder."""
    _BUILTIN_REPOS[name] = writer


def _write_builtin(name: str, folder: Path) -> None:
    import importlib

    module_name, function = _BUILTIN_REPOS[name].split(":")
    getattr(importlib.import_module(module_name), function)(folder)


def is_offline() -> bool:
    """huggingface_hub's offline mode, read at call time (`HF_HUB_OFFLINE=1`)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.upper() in ("1", "ON", "YES", "TRUE")


def _complete_copy(local: Path, revision: Optional[str]) -> bool:
    try:
        stamp = json.loads((local / _DOWNLOAD_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return revision is None or stamp.get("revision") == revision


def _placed_copy(local: Path) -> bool:
    """Whether `local` holds a repo placed there by hand or by another tool (no download stamp) that verifies.

    Raises:
        RepoError: The folder is there but does not verify; it is the user's, so it is neither used nor overwritten.
    """
    if not (local / "model" / "config.json").is_file() or (local / ".cache" / "huggingface").is_dir():
        return False  # nothing placed here, or a download of ours that was interrupted (snapshot_download resumes it)
    from .filelist import FILELIST, verify_filelist

    components = [folder for folder in sorted(local.iterdir()) if (folder / FILELIST).is_file()]
    if not any(folder.name == "model" for folder in components):
        raise RepoError(f"{local} holds a repo without model/{FILELIST}, so it cannot be verified; save it with "
                        "save_pretrained, or remove the folder to download the repo again.")
    try:
        for folder in components:
            verify_filelist(folder)
    except RepoError as error:
        raise RepoError(f"{local} is in the cache folder but does not verify ({error}); it is left as it is. Replace it "
                        "with a complete copy, or remove it to download the repo again.") from error
    return True


def cache_folder(cache: Path, repo: str) -> Path:
    """The folder of hub repo `repo` under the cache folder `cache`, checked to stay inside it.

    Raises:
        RepoError: `repo` is not a valid hub id (huggingface_hub's own rules: `name` or `owner/name`, no `..`), or
            its folder leads outside `cache` (a link).
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo not in _BUILTIN_REPOS:
        try:
            validate_repo_id(repo)
        except HFValidationError as error:
            raise RepoError(f"The hub repo id {repo!r} is not valid ({str(error).splitlines()[0]}); give an id like "
                            "'owner/name', or a local folder.") from None
    folder = cache
    for part in repo.split("/"):
        folder = child_path(folder, part, f"The hub repo id {repo!r}")
    if not folder.resolve().is_relative_to(cache.resolve()):
        raise RepoError(f"The cache folder of {repo!r}, {folder}, leads outside the cache {cache}; remove that link.")
    return folder


def resolve_repo(path: Union[str, Path], repo: Optional[str] = None, *, revision: Optional[str] = None, token: Optional[str] = None) -> Path:
    """The local folder of a repo: `path` itself, or hub repo `repo` downloaded into `path/<repo>`.

    A complete earlier download of the same revision is reused without touching the network, and so is a
    repo placed in `path/<repo>` by hand or by another tool whose `filelist.txt`s verify (online or offline).

    Args:
        path: A repo folder, or (with `repo`) the cache folder.
        repo: A hub id like `"me/my-lora"`, or a tinypipe built-in name.
        revision: Branch, tag or commit; None means the default branch (and accepts any cached copy).
        token: Hub token for private repos.

    Raises:
        RepoError: Offline mode is on and no complete copy is cached, a copy placed there does not verify, or
            the download failed.
    """
    if repo is None:
        return Path(path)
    local = cache_folder(Path(path), repo)
    if _complete_copy(local, revision) or (not (local / _DOWNLOAD_STAMP).exists() and _placed_copy(local)):
        return local
    if repo in _BUILTIN_REPOS:
        staging = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        _write_builtin(repo, staging)
        (staging / _DOWNLOAD_STAMP).write_text(json.dumps({"repo": repo, "revision": revision, "builtin": True}))
        shutil.rmtree(local, ignore_errors=True)
        os.replace(staging, local)
        return local
    if is_offline():
        raise RepoError(
            f"{repo!r} is not in the cache folder {path} and huggingface_hub offline mode is on (HF_HUB_OFFLINE). "
            "Download it once while online, or unset HF_HUB_OFFLINE."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    (local / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)  # marks the folder as our (resumable) download
    try:
        snapshot_download(repo_id=repo, revision=revision, local_dir=local, token=token)
    except (HfHubHTTPError, HFValidationError, OSError) as error:
        raise RepoError(f"Downloading {repo!r} (revision {revision or 'default'}) into {local} failed: {error}") from error
    (local / _DOWNLOAD_STAMP).write_text(json.dumps({"repo": repo, "revision": revision}))
    return local


def render_model_card(card_data: dict[str, Any], repo_id: str) -> "Any":
    """Build a huggingface_hub `ModelCard` (README.md) from card data (see `tinypipe.publish.card_data_from_repo`).

    Args:
        card_data: `base_model`, `method`, `trainer`, `instance_prompt`, `prompts` (`{label: prompt}`),
            `tags`, `images` (paths relative to the repo), `training_arguments`; all optional.
        repo_id: The hub repo the card describes.
    """
    from huggingface_hub import ModelCard, ModelCardData

    tags = sorted(set(["tinypipe", *card_data.get("tags", [])]))
    metadata = ModelCardData(library_name="tinypipe", tags=tags, base_model=card_data.get("base_model"),
                             instance_prompt=card_data.get("instance_prompt"))
    trainer = f"'s `{card_data['trainer']}`" if card_data.get("trainer") else ""
    lines = [f"# {repo_id}", "", f"Trained with [tinypipe](https://pypi.org/project/tinypipe/){trainer}: {card_data.get('method', 'model')}."]
    if card_data.get("base_model"):
        lines += ["", f"Base model: `{card_data['base_model']}`."]
    for label, prompt in card_data.get("prompts", {}).items():
        lines += ["", f"{label}: `{prompt}`"]
    if card_data.get("training_arguments"):
        arguments = json.dumps(card_data["training_arguments"], indent=2, sort_keys=True, default=str)
        lines += ["", "## Training arguments", "", "```json", arguments, "```"]
    if card_data.get("images"):
        lines += ["", "## Validation images", ""] + [f"![]({image})" for image in card_data["images"]]
    lines += ["", "## Use it", "", "```python", "from tinypipe import AutoModelPipeline", "",
              f'pipeline = AutoModelPipeline.from_pretrained("cache", "{repo_id}")', "```", ""]
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines))


def push_repo(obj: Any, repo: Path, *, repo_id: Optional[str], private: Optional[bool], token: Optional[str], commit_message: Optional[str]) -> str:
    """Publish the repo folder `obj` was just saved into, as `save_pretrained(push_to_hub=True)` does.

    The card is the one `tinypipe.publish.push_repo_folder` writes (so a repo that also holds `trainer/` and
    `validation/` gets prompts, training arguments and images), with `obj.model_card_data()` describing the model.

    Returns:
        The URL of the hub repo.
    """
    from ..publish import card_data_from_repo, upload_repo

    return upload_repo(repo, repo_id, card_data_from_repo(repo, obj), private=private, token=token, commit_message=commit_message)
