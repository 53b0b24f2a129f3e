"""Deriving a pipeline: a saved repo with one component replaced, saved as a new repo.

```python
from tinypipe.derive import derive_pipeline

derive_pipeline("lora-a", "a-with-b", lora="lora-b")                           # B's LoRA on A's pipeline
derive_pipeline("ti-repo", "ti-new", embedding="learned_embeds.safetensors")    # new vectors for A's token
derive_pipeline("chat-a", "chat-b", adapter="peft-adapter-folder")               # another causal-LM adapter
```

The source repo is only read. The new repo holds what `save_pretrained` writes (`model/`, and
`model_code/` for user classes) plus `derived_from.json`, which says where it came from (the hub repo id, or the
folder's name: no local path, since the new repo is made to be shared). The source's
`trainer/`, `validation/`, `checkpoints/` and model card are not copied: they describe a training run
that did not produce the derived weights (re-running that trainer would not give them back). The
provenance file points to the source and the replacement instead.
"""

import json
import logging
from pathlib import Path
from typing import Optional, Union

from .version import __version__
from .config import ConfigMixin
from .config.filelist import FILELIST, sha256_file, verify_filelist
from .config.repo import CONFIG_NAME, component_folder, load_repo
from .config.hub import DOWNLOAD_MARKER
from .files import atomic_folder, read_json, read_marker
from .errors import ConfigError
from .models.causal_lm import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CausalLMPipeline
from .models.diffusion import LORA_WEIGHTS_NAME, DiffusionPipeline
from .models.base_models import refuse_other_base_model
from .models.embedding_files import TEXTUAL_INVERSION_NAME, read_textual_inversion

logger = logging.getLogger(__name__)

__all__ = ["derive_pipeline", "DERIVED_FROM_NAME"]

DERIVED_FROM_NAME = "derived_from.json"
MODEL_FOLDER = ConfigMixin.__prefix__
KIND_FILES = {"lora": LORA_WEIGHTS_NAME, "adapter": ADAPTER_CONFIG_NAME}
KIND_NAMES = {"lora": "diffusion LoRA", "adapter": "causal-LM adapter"}


def derive_pipeline(
    source: Union[str, Path],
    output: Union[str, Path],
    *,
    lora: Union[str, Path, None] = None,
    embedding: Union[str, Path, None] = None,
    adapter: Union[str, Path, None] = None,
    placeholder_token: Optional[str] = None,
    token: Optional[str] = None,
    trust_remote_code: bool = False,
    allow_other_base: bool = False,
) -> Path:
    """Load the pipeline saved in `source`, replace one component, and save it as the new repo `output`.

    Exactly one of `lora`, `embedding` and `adapter` is given. Each may be the file itself, a folder
    holding it, or another tinypipe repo (its `model/` folder is used, after its `filelist.txt` is checked).

    Args:
        source: A repo written by `save_pretrained` (a diffusion or causal-LM pipeline). Never modified.
        output: The new repo; it must not exist yet (or be an empty folder) and must lie outside `source`.
        lora: For a diffusion pipeline: a diffusers LoRA (`pytorch_lora_weights.safetensors`). It replaces the
            source's LoRA (or is added to a pipeline without one); its rank and alpha may differ.
        embedding: For a diffusion pipeline: a textual-inversion embedding (`learned_embeds.safetensors`, a legacy
            `.bin`, or an A1111 `.pt`, read without running code). The vectors of the token of the same name are
            replaced; a pipeline without textual-inversion tokens gets the token added.
        adapter: For a causal LM: a PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
        placeholder_token: With `embedding` holding one token: the token to replace, overriding the stored name.
        token: Hub token, passed to the pipeline for a private base model (never written anywhere).
        trust_remote_code: Allow running code from `source/model_code/` (only for repos you trust).
        allow_other_base: Accept a replacement that records another base model than the source's (a PEFT
            adapter's `base_model_name_or_path`, a tinypipe repo's `base_model`); its shapes must still fit.

    Returns:
        The new repo folder.

    Raises:
        ConfigError: Not exactly one replacement, an `output` that is `source`, inside it, or not empty, a
            replacement file that is missing, of the wrong kind for the pipeline, or whose embedding does not
            fit the text encoder.
        RepoError: The source or a replacement repo is incomplete or altered, or a LoRA / adapter was made for
            another base model (without `allow_other_base`) or does not fit it.

    Example:
    ```python
    derive_pipeline("lora-a", "a-with-b", lora="lora-b/model/pytorch_lora_weights.safetensors")
    AutoModelPipeline.from_pretrained("a-with-b").generate("a photo of sks circle")
    ```
    """
    # 1. Check the arguments and find the replacement files before loading anything.
    source, output = Path(source), Path(output)
    given = {name: value for name, value in (("lora", lora), ("embedding", embedding), ("adapter", adapter)) if value is not None}
    if len(given) != 1:
        raise ConfigError(f"derive_pipeline replaces exactly one component: give one of lora=, embedding= or adapter= "
                          f"(got {sorted(given) or 'none'}).")
    component = next(iter(given))
    if placeholder_token is not None and component != "embedding":
        raise ConfigError("placeholder_token names the textual-inversion token to replace; it goes with embedding=.")
    _check_output(source, output)
    if component == "lora":
        files = [_find_file(Path(lora), (LORA_WEIGHTS_NAME,), "lora")]
    elif component == "embedding":
        files = _find_embeddings(Path(embedding))
        if placeholder_token is not None and len(files) != 1:
            raise ConfigError(f"{embedding} holds {len(files)} embeddings; placeholder_token renames a single one.")
    else:
        files = [_find_file(Path(adapter), (ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME), "adapter")]

    # 2. Load the source (its filelist is verified) and swap the component.
    pipeline = load_repo(source, ConfigMixin, trust_remote_code=trust_remote_code, overrides={"token": token} if token else {})
    kind = {"lora": DiffusionPipeline, "embedding": DiffusionPipeline, "adapter": CausalLMPipeline}[component]
    if not isinstance(pipeline, kind):
        hint = "adapter=" if isinstance(pipeline, CausalLMPipeline) else "lora= or embedding="
        raise ConfigError(f"{source} holds a {type(pipeline).__name__}, and {component}= replaces a component of a "
                          f"{kind.__name__}; give this pipeline {hint} instead.")
    _check_base_model(pipeline, files[0], component, allow_other_base)
    if component == "lora":
        pipeline.replace_lora(files[0])
    elif component == "embedding":
        for path in files:
            _check_embedding_token(pipeline, path, placeholder_token)
            pipeline.replace_textual_inversion(path, placeholder_token)
    else:
        pipeline.replace_adapter(files[0].parent, allow_other_base)

    # 3. Write the new repo next to `output` and move it into place only once it is complete.
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(output) as staging:  # an empty `output` (checked above) is replaced
        pipeline.save_pretrained(staging)
        provenance = {
            "source": {**_public_location(source, source), "model_filelist_sha256": sha256_file(component_folder(source, MODEL_FOLDER) / FILELIST)},
            "replaced": component,
            "replacements": [{**_public_location(path, Path(given[component])), "sha256": sha256_file(path)} for path in files],
            "tinypipe_version": __version__,
        }
        (staging / DERIVED_FROM_NAME).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Derived %s from %s with its %s replaced by %s.", output, source, component, ", ".join(map(str, files)))
    return output


def _public_location(path: Path, given: Path) -> dict[str, str]:
    """Where a source or replacement came from, with no local path (the repo is shared as it is): the hub repo id and
    revision when it lies in a download of one, else its path from the folder holding what the caller gave.

    Example: `lora=/home/me/runs/lora-b` -> `{"path": "lora-b/model/pytorch_lora_weights.safetensors"}`; a hub download
    of `me/lora-b` -> `{"hub_repo": "me/lora-b", "path": "model/pytorch_lora_weights.safetensors"}`.
    """
    path = path.resolve()
    for folder in (path, *path.parents):
        download = read_marker(folder, DOWNLOAD_MARKER) if folder.is_dir() else None
        if download and isinstance(download.get("repo"), str):
            found = {"hub_repo": download["repo"], "path": path.relative_to(folder).as_posix() or "."}
            return {**found, "revision": download["revision"]} if download.get("revision") else found
    root = given.resolve().parent
    return {"path": path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name}


def _check_output(source: Path, output: Path) -> None:
    """Refuse an output that is the source, lies inside it, or already holds something."""
    source_resolved, output_resolved = source.resolve(), output.resolve()
    if output_resolved == source_resolved or output_resolved.is_relative_to(source_resolved):
        raise ConfigError(f"output={str(output)!r} is the source repo or inside it; derive into a new folder outside {source}.")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"output={str(output)!r} already exists and is not an empty folder; choose a new folder or remove it.")


def _model_folder(path: Path) -> Path:
    """`path/model` for a tinypipe repo, else `path`."""
    return path / MODEL_FOLDER if (path / MODEL_FOLDER / CONFIG_NAME).is_file() else path


def _replacement_folder(path: Path, argument: str, what: str) -> Optional[Path]:
    """None when `path` is a file; else the folder holding the replacement (a tinypipe repo's `model/`, its filelist verified)."""
    if path.is_file():
        return None
    if not path.exists():
        raise ConfigError(f"{argument}={str(path)!r} does not exist; give {what}, a folder holding it, or a tinypipe repo.")
    folder = _model_folder(path)
    if (folder / FILELIST).is_file():
        verify_filelist(folder)
    return folder


def _find_file(path: Path, names: tuple[str, ...], argument: str) -> Path:
    """The file `names[0]`: given itself, or in a folder (or tinypipe repo) that holds all of `names`."""
    folder = _replacement_folder(path, argument, f"the {names[0]} file")
    if folder is None:
        return path
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        other = "adapter" if argument == "lora" else "lora"
        hint = f"; it looks like a {KIND_NAMES[other]} (use {other}=)" if (folder / KIND_FILES[other]).is_file() else ""
        raise ConfigError(f"{folder} holds no {' and no '.join(missing)}, so it is not a {argument} to derive with{hint}. "
                          f"Give the {names[0]} file, a folder holding it, or a tinypipe repo that has one.")
    return folder / names[0]


def _find_embeddings(path: Path) -> list[Path]:
    """The textual-inversion files: the file itself, or every `learned_embeds*.safetensors` of a folder or repo."""
    folder = _replacement_folder(path, "embedding", f"a {TEXTUAL_INVERSION_NAME} (or A1111 .pt) file")
    if folder is None:
        return [path]
    files = sorted(folder.glob("learned_embeds*.safetensors")) or sorted(folder.glob("learned_embeds.bin"))
    if not files:
        raise ConfigError(f"{folder} holds no {TEXTUAL_INVERSION_NAME} (nor learned_embeds.bin); give the embedding "
                          "file itself, a folder holding one, or a tinypipe repo with textual-inversion tokens.")
    return files


def _check_base_model(pipeline: ConfigMixin, replacement: Path, component: str, allow_other_base: bool) -> None:
    """Refuse a replacement from a tinypipe repo built on another base model (warn only with `allow_other_base`)."""
    folder = replacement.parent
    if not ((folder / CONFIG_NAME).is_file() and (folder / FILELIST).is_file()):
        return
    recorded = read_json(folder / CONFIG_NAME).get("base_model")
    base = pipeline.config.get("base_model")
    if recorded is None or base is None or recorded == base:
        return
    refuse_other_base_model(f"The {component} {replacement} was made for the base model {recorded!r}, and "
                            f"{type(pipeline).__name__}'s base model is {base!r}", recorded, allow_other_base)


def _check_embedding_token(pipeline: DiffusionPipeline, path: Path, placeholder_token: Optional[str]) -> None:
    """Refuse an embedding stored under a token the pipeline lacks, naming the argument and option that rename it."""
    tokens = list(pipeline.config["textual_inversion_tokens"])
    stored, _ = read_textual_inversion(path, placeholder_token, default_token=tokens[0] if len(tokens) == 1 else None)
    if tokens and stored not in tokens:
        raise ConfigError(f"{path} holds an embedding for the token {stored!r}, but {tokens} are this pipeline's "
                          f"textual-inversion tokens. To put it in place of one, pass placeholder_token={tokens[0]!r} "
                          f"(tinypipe derive --placeholder-token {tokens[0]!r}).")
