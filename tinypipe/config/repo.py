"""The one module that reads and writes repos on disk.

```
<repo>/
  model/        config.json, filelist.txt, weights          (ConfigBase.__prefix__ = "model")
  model_code/   *.py, filelist.txt                           (user code defining the classes above)
  trainer/      config.json, filelist.txt, train_config/...  (TrainerConfigBase.__prefix__)
```

Saving writes everything into a temporary sibling folder first (`.<repo>.tmp-<pid>-*`), then moves it
into place, so an interrupted save never leaves a half-written folder that loads. The folder it replaces
is first moved aside as `.<name>.old-<generation>`: if a kill lands between the two renames, loading
reads the highest generation, which is always the newest complete save. The next save or load removes
what interrupted saves left. Loading verifies `filelist.txt` before reading anything else, and names
read from a config (sub-folder keys) must stay inside the repo.
"""

import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import RepoError, disk_full_as_error
from ..files import apply_umask, child_path, read_json
from ..version import __version__, check_version
from .base import ConfigBase
from .coders import decode_value, encode_value
from .filelist import FILELIST, verify_filelist, write_filelist
from .modules import class_path, module_source_file, resolve_class

__all__ = ["save_repo", "load_repo", "component_folder", "remove_interrupted_saves", "CONFIG_NAME", "CODE_FOLDER"]

CONFIG_NAME = "config.json"
CODE_FOLDER = "model_code"
_OLD_MARK = ".old-"


def _dump_json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"


# -- saving -------------------------------------------------------------------------------------------


def _write_object(obj: ConfigBase, folder: Path, code_files: dict[str, Path]) -> None:
    """Write one object's config.json and weights into `folder`; sub-folder objects recursively."""
    folder.mkdir(parents=True, exist_ok=True)
    owner = type(obj).__qualname__
    config: dict[str, Any] = {"__module__": class_path(type(obj)), "__version__": __version__}
    subfolders = type(obj)._subfolder_names()
    for name, value in obj.config.items():
        if name in subfolders and isinstance(value, ConfigBase):
            _write_object(value, child_path(folder, name, f"{owner} sub-folder argument"), code_files)
            config[name] = subfolder_reference(value)
        else:
            config[name] = encode_value(value, f"{owner} argument {name!r}")
        _collect_code(value, code_files)
    _collect_code(obj, code_files)
    (folder / CONFIG_NAME).write_text(_dump_json(config), encoding="utf-8")
    obj.save_weights(folder)


def subfolder_reference(value: ConfigBase) -> dict:
    """How a parent `config.json` refers to an object saved in its own sub-folder."""
    return {"__module__": class_path(type(value)), "__subfolder__": None}


def _collect_code(value: Any, code_files: dict[str, Path]) -> None:
    """Find the user modules that define the classes of `value` (and of what it holds)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            _collect_code(item, code_files)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_code(item, code_files)
    else:
        cls = type(value)
        source = module_source_file(cls)
        if source is not None:
            module_path = class_path(cls).rsplit(".", len(cls.__qualname__.split(".")))[0]
            code_files[module_path.replace(".", "/") + ".py"] = source
        if isinstance(value, ConfigBase):
            for item in value.config.values():
                _collect_code(item, code_files)


def _write_code(staging: Path, repo: Path, code_files: dict[str, Path]) -> None:
    """Write `model_code/`: the repo's existing code files plus the ones this save needs."""
    existing = repo / CODE_FOLDER
    target = staging / CODE_FOLDER
    if existing.is_dir():
        shutil.copytree(existing, target, ignore=shutil.ignore_patterns(FILELIST, "__pycache__"))
    for relative, source in sorted(code_files.items()):
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    write_filelist(target)


def _old_folders(repo: Path, name: str) -> list[Path]:
    """The `.<name>.old-<generation>` folders an interrupted save left in `repo`, oldest first.

    The generation is a number taken when the folder was moved aside, larger than any before it; the folder moved
    aside is always the complete save that was in place, so the highest generation is the newest complete save.
    """
    def generation(path: Path) -> tuple[int, float]:
        suffix = path.name[len(f".{name}{_OLD_MARK}"):]
        return (int(suffix), 0.0) if suffix.isdigit() else (-1, path.stat().st_mtime)  # older tinypipe: random hex

    found = [path for path in repo.glob(f".{glob.escape(name)}{_OLD_MARK}*") if path.is_dir()] if repo.is_dir() else []
    return sorted(found, key=generation)


def _next_generation(repo: Path, name: str) -> int:
    taken = [int(path.name.rsplit("-", 1)[1]) for path in _old_folders(repo, name) if path.name.rsplit("-", 1)[1].isdigit()]
    return max([time.time_ns(), *(number + 1 for number in taken)])


def _swap_into_place(staging: Path, repo: Path) -> None:
    """Move every folder of `staging` into `repo`, replacing the old one only once the new one is whole."""
    if not repo.exists():
        os.rename(staging, repo)
        return
    for entry in sorted(staging.iterdir()):
        target = repo / entry.name
        old = repo / f".{entry.name}{_OLD_MARK}{_next_generation(repo, entry.name):020d}"
        if target.exists():
            os.rename(target, old)
        os.rename(entry, target)
        for leftover in _old_folders(repo, entry.name):  # this one, and any an interrupted save left
            shutil.rmtree(leftover, ignore_errors=True)


def _staging_owner(path: Path, repo_name: str) -> Optional[int]:
    """The pid recorded in a staging folder's name `.<repo>.tmp-<pid>-<random>` (None for older names)."""
    pid = path.name[len(f".{repo_name}.tmp-"):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_interrupted_saves(repo: Path, restore: bool) -> None:
    """Remove what interrupted saves of `repo` left: staging folders of processes that are gone, and old folders.

    Args:
        repo: The repo folder.
        restore: When a component folder is missing (a save was cut off between moving the old folder out and the
            new one in), move its newest old folder back into place; otherwise leave it for loading to read.
            Saving restores; loading only reads, so it never races a save in progress.
    """
    if repo.parent.is_dir():
        for staging in repo.parent.glob(f".{glob.escape(repo.name)}.tmp-*"):
            owner = _staging_owner(staging, repo.name)
            if staging.is_dir() and (owner is None or not _process_alive(owner)):
                shutil.rmtree(staging, ignore_errors=True)
    if not repo.is_dir():
        return
    names = {path.name[1:].split(_OLD_MARK, 1)[0] for path in repo.glob(f".*{_OLD_MARK}*")}
    for name in sorted(names):
        leftovers = _old_folders(repo, name)
        if not (repo / name).exists() and leftovers:
            if not restore:
                continue
            os.rename(leftovers.pop(), repo / name)
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)


def save_repo(obj: ConfigBase, repo: Path) -> Path:
    """Save `obj` into `repo/<obj.__prefix__>/` (and `repo/model_code/` if it is user code), atomically.

    Args:
        obj: The object to save.
        repo: The repo folder; created if missing.

    Returns:
        The repo folder.

    Raises:
        StorageError: The disk filled up; the repo keeps its previous complete save.
    """
    repo = Path(repo)
    repo.parent.mkdir(parents=True, exist_ok=True)
    if repo.exists() and not repo.is_dir():
        raise RepoError(f"{repo} exists and is not a folder; choose another path for save_pretrained.")
    remove_interrupted_saves(repo, restore=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.tmp-{os.getpid()}-", dir=repo.parent))
    try:
        with disk_full_as_error(repo, f"Saving {repo}"):
            code_files: dict[str, Path] = {}
            component = staging / obj.__prefix__
            _write_object(obj, component, code_files)
            write_filelist(component)
            if code_files:
                _write_code(staging, repo, code_files)
            apply_umask(staging)
            _swap_into_place(staging, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return repo


# -- loading ------------------------------------------------------------------------------------------


def component_folder(repo: Path, prefix: str) -> Path:
    """`repo/<prefix>`; a bare component folder (holding config.json) is accepted too."""
    folder = repo / prefix
    if folder.is_dir():
        return folder
    leftovers = _old_folders(repo, prefix)
    if leftovers:  # a save was cut off between moving the old folder out and the new one in: the newest complete one
        return leftovers[-1]
    if (repo / CONFIG_NAME).is_file() and (repo / FILELIST).is_file():
        return repo
    if not repo.exists():
        raise RepoError(f"{repo} does not exist. Give the folder written by save_pretrained, or a hub id with a cache folder.")
    raise RepoError(f"{folder / CONFIG_NAME} is missing: {repo} holds no '{prefix}' saved by save_pretrained.")


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise RepoError(f"{path} is missing; the folder was not written by save_pretrained (or is incomplete).")
    config = read_json(path)
    if not isinstance(config, dict) or "__module__" not in config:
        raise RepoError(f"{path} has no '__module__' key naming the class to build.")
    check_version(config.get("__version__"), str(path))
    return config


def _read_object(folder: Path, expected: type, trust_remote_code: bool, code_folder: Optional[Path], overrides: Mapping[str, Any]) -> ConfigBase:
    config = _read_config(folder)
    source = str(folder / CONFIG_NAME)
    cls = resolve_class(config.pop("__module__"), expected, trust_remote_code=trust_remote_code, code_folder=code_folder, source=source)
    config.pop("__version__", None)

    def resolve(name: str, base: type) -> type:
        return resolve_class(name, base, trust_remote_code=trust_remote_code, code_folder=code_folder, source=source)

    arguments = {}
    for name, value in config.items():
        if isinstance(value, dict) and "__subfolder__" in value:
            subfolder = child_path(folder, name, f"The sub-folder key in {source}")
            arguments[name] = _read_object(subfolder, ConfigBase, trust_remote_code, code_folder, {})
        else:
            arguments[name] = decode_value(value, resolve)
    return cls._build_from_folder(folder, arguments, overrides)


def load_repo(repo: Path, expected: type, *, trust_remote_code: bool = False, overrides: Optional[Mapping[str, Any]] = None) -> Any:
    """Load the object of class `expected` (or a subclass) saved in `repo`.

    Args:
        repo: The repo folder.
        expected: The class asked for; its `__prefix__` names the folder to read.
        trust_remote_code: Allow importing code from `model_code/` or from modules not yet imported.
        overrides: Constructor arguments that win over the saved config.

    Raises:
        RepoError: The repo is missing, incomplete, altered or unsafe.
        TrustRemoteCodeError: Loading would run code and `trust_remote_code` is False.
    """
    repo = Path(repo)
    try:
        remove_interrupted_saves(repo, restore=False)
    except OSError:  # a read-only repo: loading still works, the leftovers stay
        pass
    folder = component_folder(repo, expected.__prefix__)
    verify_filelist(folder)
    code_folder = repo / CODE_FOLDER
    if code_folder.is_dir() and trust_remote_code:
        verify_filelist(code_folder)
    return _read_object(folder, expected, trust_remote_code, code_folder if code_folder.is_dir() else None, overrides or {})
