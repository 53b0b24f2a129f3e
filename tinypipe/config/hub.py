"""The Hugging Face Hub side of repos: download into a cache folder (`resolve_repo`), and upload a saved repo with
its model card (`upload_repo`, `push_repo`).

All network access goes through huggingface_hub (`snapshot_download`, `HfApi`), so its offline mode
(`HF_HUB_OFFLINE=1`), tokens and endpoints behave as users expect.

Built-in names (tinypipe's tiny offline models) resolve like hub ids but are written, not downloaded: the package
that can build one registers its writer with `register_builtin_repo` (`tinypipe.models` does, for the names of
`tinypipe.builtin`).

What is uploaded is staged in a temporary folder, so the user's folder is never written to: a README.md they wrote
is published as it is (the generated card is used where there is none, or where the repo holds the card tinypipe
wrote), and absolute local paths in the published JSON files and card (a data folder, a local base model) become
their last part (`/home/me/photos` -> `photos`), with the filelists of the staged copy rewritten to match. The token goes to huggingface_hub only: never
into the card, a repo file or a log line. `checkpoints/` (optimizer state) is never uploaded.
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import RepoError
from ..files import atomic_folder, child_path, read_json, read_marker, write_marker
from .card import card_data_from_repo, is_generated_card, is_local_path, public_value, render_model_card
from .filelist import FILELIST, verify_filelist, write_filelist

__all__ = ["resolve_repo", "cache_folder", "register_builtin_repo", "builtin_repo_writer", "is_offline", "upload_repo", "push_repo",
           "public_value", "verify_root_files", "UPLOAD_IGNORE_PATTERNS", "DOWNLOAD_MARKER", "LORA_AT_ROOT"]

logger = logging.getLogger(__name__)

DOWNLOAD_MARKER = ".tinypipe-download.json"
"""The complete-folder marker of a repo in the cache folder: written once its download (or built-in write) is whole."""

LORA_AT_ROOT = "pytorch_lora_weights.safetensors"
"""The LoRA file `upload_repo(..., lora_at_root=True)` also publishes at the repo root (diffusers' default name)."""

ROOT_LORA_FILES = (LORA_AT_ROOT, FILELIST)
"""What `lora_at_root` adds at the hub repo's root; a push removes them there unless it uploads them again, so a root
LoRA from an earlier push never outlives the LoRA it copied."""

# Never uploaded: resumable training state, the hub download cache and marker, half-done or replaced saves.
UPLOAD_IGNORE_PATTERNS = ("checkpoints/**", "logs/**", "wandb/**", ".cache/**", DOWNLOAD_MARKER, ".*.tmp-*/**", ".*.old-*/**", "**/__pycache__/**")

BUILTIN_PREFIX = "tinypipe/"
"""The namespace of the built-in names: a repo id in it that is none of them is refused without asking the hub."""

# Built-in names -> the function that saves that repo into a folder, registered by the package that builds them.
_BUILTIN_REPOS: dict[str, Callable[[Path], None]] = {}


def register_builtin_repo(name: str, writer: Callable[[Path], None]) -> None:
    """Make the built-in name `name` usable wherever a hub id is: `writer(folder)` saves its repo into `folder`.

    Called by the package that can build the repo: `tinypipe.models` registers `tinypipe/tiny-sd` and
    `tinypipe/tiny-llama` when it is imported (and `tinypipe.AutoModelPipeline` registers writers that import it
    on first use, so the names load before any pipeline is imported).

    Args:
        name: The built-in name, e.g. `"tinypipe/tiny-sd"`.
        writer: Saves the repo into the (empty) folder it is given, e.g. `lambda folder: model.save_pretrained(folder)`.
    """
    _BUILTIN_REPOS[name] = writer


def builtin_repo_writer(name: str) -> Optional[Callable[[Path], None]]:
    """The writer registered for the built-in name `name`, or None when `name` is not one (so far)."""
    return _BUILTIN_REPOS.get(name)


def is_offline() -> bool:
    """huggingface_hub's offline mode, read at call time (`HF_HUB_OFFLINE=1`)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.upper() in ("1", "ON", "YES", "TRUE")


def _complete_copy(local: Path, revision: Optional[str]) -> bool:
    record = read_marker(local, DOWNLOAD_MARKER)
    return record is not None and (revision is None or record.get("revision") == revision)


def _placed_copy(local: Path) -> bool:
    """Whether `local` holds a repo placed there by hand or by another tool (no download stamp) that verifies.

    Raises:
        RepoError: The folder is there but does not verify; it is the user's, so it is neither used nor overwritten.
    """
    if not (local / "model" / "config.json").is_file() or (local / ".cache" / "huggingface").is_dir():
        return False  # nothing placed here, or a download of ours that was interrupted (snapshot_download resumes it)
    components = [folder for folder in sorted(local.iterdir()) if (folder / FILELIST).is_file()]
    if not any(folder.name == "model" for folder in components):
        raise RepoError(f"{local} holds a repo without model/{FILELIST}, so it cannot be verified; save it with "
                        "save_pretrained, or remove the folder to download the repo again.")
    try:
        for folder in components:
            verify_filelist(folder)
        verify_root_files(local)
    except RepoError as error:
        raise RepoError(f"{local} is in the cache folder but does not verify ({error}); it is left as it is. Replace it "
                        "with a complete copy, or remove it to download the repo again.") from error
    return True


def cache_folder(cache: Path, repo: str) -> Path:
    """The folder of hub repo `repo` under the cache folder `cache`, checked to stay inside it.

    Raises:
        RepoError: `repo` is not a valid hub id (huggingface_hub's own rules: `name` or `owner/name`, no `..`), a
            `tinypipe/` name that is no built-in one (the closest is suggested), or its folder leads outside `cache` (a link).
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if builtin_repo_writer(repo) is None:
        if repo.startswith(BUILTIN_PREFIX) and _BUILTIN_REPOS:  # the built-in names' namespace: a typo, never a hub id
            import difflib

            close = difflib.get_close_matches(repo, sorted(_BUILTIN_REPOS), n=1, cutoff=0.6)
            raise RepoError(f"{repo!r} is not a built-in model. " + (f"Did you mean {close[0]!r}? " if close else "")
                            + f"The built-in models are {', '.join(repr(name) for name in sorted(_BUILTIN_REPOS))}.")
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
    if _complete_copy(local, revision) or (not (local / DOWNLOAD_MARKER).exists() and _placed_copy(local)):
        return local
    write_builtin = builtin_repo_writer(repo)
    if write_builtin is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(local) as staging:
            write_builtin(staging)
            write_marker(staging, DOWNLOAD_MARKER, {"repo": repo, "revision": revision, "builtin": True})
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
    verify_root_files(local)
    write_marker(local, DOWNLOAD_MARKER, {"repo": repo, "revision": revision})
    return local


def verify_root_files(repo: Path) -> None:
    """Check the files a published repo holds at its root beside its component folders (the LoRA published there by
    `upload_repo(..., lora_at_root=True)`) against the root `filelist.txt`, when there is one.

    Raises:
        RepoError: A listed file is missing or changed.
    """
    if (repo / FILELIST).is_file():
        verify_filelist(repo, listed_only=True)




# -- uploading -----------------------------------------------------------------------------------------


def _login_hint(repo: Path) -> str:
    return (f"The local repo at {repo} is saved and intact. Log in with `hf auth login`, or set HF_TOKEN, "
            "or pass token=... (--token on the command line), and push again.")


def _stage(repo: Path, staging: Path, card: str, redact, lora_at_root: bool = False) -> None:
    """Copy what is published from `repo` into `staging`: ignored files left out, JSON files with local paths or
    secrets made public (and the filelists of their folders rewritten), the card as README.md unless the user wrote one,
    and with `lora_at_root` the LoRA file also at the root, listed in a root `filelist.txt`."""
    from huggingface_hub.utils import filter_repo_objects

    files = sorted(path.relative_to(repo).as_posix() for path in repo.rglob("*") if path.is_file())
    changed_folders = set()
    for relative in filter_repo_objects(files, ignore_patterns=list(UPLOAD_IGNORE_PATTERNS)):
        source, target = repo / relative, staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".json":
            try:
                original = read_json(source)
            except RepoError:
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
    readme = staging / "README.md"
    if readme.exists() and is_generated_card(readme.read_text(encoding="utf-8", errors="replace")):
        readme.unlink()  # the card tinypipe wrote locally (a link to the repo's file): replaced by the hub's card
    if not readme.exists():
        readme.write_text(card if card.endswith("\n") else card + "\n", encoding="utf-8")
    if lora_at_root:
        try:
            os.link(repo / "model" / LORA_AT_ROOT, staging / LORA_AT_ROOT)
        except OSError:
            shutil.copyfile(repo / "model" / LORA_AT_ROOT, staging / LORA_AT_ROOT)
        write_filelist(staging, [LORA_AT_ROOT])


def _check_lora_at_root(repo: Path) -> None:
    """Refuse `lora_at_root` for a repo without a LoRA file, or whose root already holds a file of that name."""
    if not (repo / "model" / LORA_AT_ROOT).is_file():
        raise RepoError(f"Publishing the LoRA at the repo root needs {repo / 'model' / LORA_AT_ROOT}, and {repo} holds "
                        "no LoRA; leave out lora_at_root (--lora-at-root).")
    for name in (LORA_AT_ROOT, FILELIST):
        if (repo / name).exists():
            raise RepoError(f"{repo / name} is the user's own file, which publishing the LoRA at the repo root would "
                            "replace on the hub; move it, or leave out lora_at_root (--lora-at-root).")


def upload_repo(repo: Path, repo_id: Optional[str], card_data: dict[str, Any], *, private: Optional[bool] = None,
                token: Optional[str] = None, commit_message: Optional[str] = None, lora_at_root: bool = False) -> str:
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
        lora_at_root: Also publish `model/pytorch_lora_weights.safetensors` at the repo root (listed in a root
            `filelist.txt`), so that diffusers' `load_lora_weights("user/repo")` needs no `subfolder`.

    Returns:
        The URL of the hub repo.

    Raises:
        RepoError: No `repo_id`, no token, `lora_at_root` for a repo without a LoRA (or whose root holds a file of
            that name), or a failed push; the message says the local repo is intact.
    """
    import huggingface_hub

    # 1. Check what is needed before anything is written or sent.
    if not repo_id:
        raise RepoError(f"Publishing {repo} needs repo_id='user/name' (the hub repo to create or update).")
    if lora_at_root:
        _check_lora_at_root(repo)
        card_data = {**card_data, "lora_at_root": True}
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
    local_base = isinstance(card_data.get("base_model"), str) and is_local_path(card_data["base_model"])
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
            _stage(repo, Path(staging), card, redact, lora_at_root)
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message or "Upload with tinypipe",
                              ignore_patterns=list(UPLOAD_IGNORE_PATTERNS), delete_patterns=list(ROOT_LORA_FILES))
        except Exception as error:
            raise RepoError(redact(f"Pushing {repo} to the hub as {repo_id!r} failed ({type(error).__name__}: {error}). "
                                   f"{_login_hint(repo)}")) from error
    return str(url)


def push_repo(obj: Any, repo: Path, *, repo_id: Optional[str], private: Optional[bool], token: Optional[str], commit_message: Optional[str]) -> str:
    """Publish the repo folder `obj` was just saved into, as `save_pretrained(push_to_hub=True)` does.

    The card is the one `tinypipe.publish.push_repo_folder` writes (so a repo that also holds `trainer/` and
    `validation/` gets prompts, training arguments and images), with `obj.model_card_data()` describing the model.

    Returns:
        The URL of the hub repo.
    """
    return upload_repo(repo, repo_id, card_data_from_repo(repo, obj), private=private, token=token, commit_message=commit_message)
