"""Publish a saved repo folder to the Hugging Face Hub, with a complete model card, without loading weights.

```python
from tinypipe.publish import push_repo_folder

push_repo_folder("out", "me/my-lora", private=True)   # uploads out/ with a model card; out/ is only read
```

The command behind `tinypipe push`. The card comes from `tinypipe.config.card` (the repo's `config.json` files and
`validation/` images); the upload from `tinypipe.config.hub.upload_repo`, which stages what is published so that the
user's folder is never written to, and keeps tokens and local paths out of it.

This module imports nothing heavy at import time (the CLI imports it for `tinypipe push`).
"""

from pathlib import Path
from typing import Optional, Union

from .config.card import card_data_from_repo
from .config.filelist import FILELIST, verify_filelist
from .config.hub import upload_repo
from .errors import RepoError

__all__ = ["push_repo_folder"]


def push_repo_folder(repo: Union[str, Path], repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                     commit_message: Optional[str] = None, lora_at_root: bool = False) -> str:
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
        lora_at_root: Also publish the LoRA file at the repo root (listed in a root `filelist.txt`), so that
            diffusers' `load_lora_weights("user/repo")` finds it with no `subfolder`.

    Returns:
        The URL of the hub repo.

    Raises:
        RepoError: The folder is not a complete repo, no token is available, `lora_at_root` was asked of a repo
            without a LoRA, or the push failed. The local repo is left as it was.

    Example:
    ```python
    push_repo_folder("out", "me/sks-circle-lora", private=True)
    ```
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise RepoError(f"{repo} is not a folder; give the repo folder save_pretrained or train(output_dir=...) wrote.")
    for component in ("model", "trainer"):
        if (repo / component / FILELIST).is_file():
            verify_filelist(repo / component)
    return upload_repo(repo, repo_id, card_data_from_repo(repo), private=private, token=token, commit_message=commit_message,
                       lora_at_root=lora_at_root)
