"""Base models: what a base-model name points to, checked before anything is loaded or recorded.

A base model is named by a built-in name (`"tinypipe/tiny-sd"`, `"tinypipe/tiny-llama"`), a local folder or a
hub id. `check_base_model` refuses a name that cannot be had (a `tinypipe/` name that is no built-in one at once; only
huggingface_hub is asked about a hub id, its local cache in offline mode, so a typo is caught in a moment rather than
when a job has started loading weights);
`base_model_source` turns the name into what diffusers / transformers load; `base_model_load_error` explains a load
that failed; `same_base_model` tells whether two names mean one model, and `refuse_other_base_model` refuses weights
recorded for another base model.

```python
from tinypipe.models.base_models import check_base_model

check_base_model("tinypipe/tiny-sdd", kind="diffusion")
# ConfigError: MODEL 'tinypipe/tiny-sdd' is not a built-in model. Did you mean 'tinypipe/tiny-sd'? The built-in models are ...
```
"""

import difflib
import logging
from pathlib import Path
from typing import Optional, Union

from ..builtin import BUILTIN_NAMES, TINY_LLAMA, TINY_SD, builtin_names, is_builtin
from ..builtin.diffusion_folders import builtin_diffusion_folder
from ..config.hub import BUILTIN_PREFIX
from ..errors import ConfigError, RepoError

__all__ = ["BASE_MODEL_KINDS", "base_model_load_error", "base_model_source", "builtin_hint", "check_base_model",
           "load_error_reason", "refuse_other_base_model", "same_base_model"]

logger = logging.getLogger(__name__)

_KIND_WORDS = {"diffusion": "diffusion model", "causal-lm": "causal LM", "images": "image data set",
               "instructions": "causal-LM data set"}

# kind -> (the file a local folder of that kind holds, what such a folder is called)
BASE_MODEL_KINDS = {
    "diffusion": ("model_index.json", "diffusers pipeline folder"),
    "causal-lm": ("config.json", "transformers model folder"),
}


def builtin_hint(name: str, kind: str) -> str:
    """`"Did you mean 'x'? The built-in models are 'x', 'y'."`: the closest built-in name first.

    Only the closest is offered: every built-in name starts `tinypipe/tiny-`, so a typo of one is close to them all.
    """
    names = builtin_names(kind)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    listed = ", ".join(repr(known) for known in names)
    return (f"Did you mean {close[0]!r}? " if close else "") + f"The built-in models are {listed}."


def load_error_reason(error: BaseException) -> str:
    """The first line of a diffusers / transformers load error, without its pointer to a traceback nobody sees."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = text.replace(" Please check out the root cause in the stacktrace above.", "").strip()
    cause = error.__cause__ or error.__context__
    if cause is not None and "root cause in the stacktrace" in str(error):
        text += f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})"
    return text


def check_base_model(name: str, *, kind: str, revision: Optional[str] = None, token: Optional[str] = None) -> None:
    """Check that `name` is a built-in model, a local folder of the right kind, or a hub id that can be had.

    In huggingface_hub's offline mode (`HF_HUB_OFFLINE=1`) a hub id must be in the local hub cache;
    online, the hub must know it (and the revision).

    Args:
        name: The base model as the user gave it.
        kind: `"diffusion"` or `"causal-lm"`.
        revision: The hub revision asked for.
        token: A hub token for a private model (None: the stored login).

    Raises:
        ConfigError: Naming the model, why it cannot be had, the closest built-in names and the fix.
    """
    marker, folder_kind = BASE_MODEL_KINDS[kind]
    if name in builtin_names(kind):
        return
    if Path(name).exists():
        if not (Path(name) / marker).is_file():
            raise ConfigError(f"MODEL {name!r} is a local path but not a {folder_kind} (no {marker}); give a folder written "
                              f"by save_pretrained, a hub id, or a built-in model. {builtin_hint(name, kind)}")
        return
    if name.startswith(BUILTIN_PREFIX):  # the built-in names' own namespace: never asked of the hub
        other = BUILTIN_NAMES.get(name)
        what = f"a built-in {_KIND_WORDS[other]}, not a {_KIND_WORDS[kind]}" if other else "not a built-in model"
        raise ConfigError(f"MODEL {name!r} is {what}. {builtin_hint(name, kind)}")
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError

    from ..config.hub import is_offline

    problem = None
    try:
        if is_offline():
            cached = huggingface_hub.try_to_load_from_cache(name, marker, revision=revision or "main")
            if not isinstance(cached, str):
                problem = "nor in the local hub cache (huggingface_hub offline mode is on, HF_HUB_OFFLINE)"
        else:
            huggingface_hub.HfApi(token=token).model_info(name, revision=revision)
    except HFValidationError:
        problem = "nor a valid hub id"
    except Exception as error:  # not found, gated, a revision that does not exist, no network
        problem = f"nor reachable on the hub ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    if problem is not None:
        raise ConfigError(f"MODEL {name!r} is neither a local folder, a built-in model, {problem}. {builtin_hint(name, kind)} "
                          "Check the spelling, give a local folder, or download the model once while online.")


def refuse_other_base_model(message: str, recorded: str, allow_other_base: bool) -> None:
    """Refuse weights made for another base model, or with `allow_other_base` warn and go on.

    Args:
        message: Which file was made for which base model, and which base model it would go on.
        recorded: The base model the file names.
        allow_other_base: The caller's (or `--allow-other-base`'s) consent to use it anyway.

    Raises:
        RepoError: Without consent: naming both models and the two ways on.
    """
    if not allow_other_base:
        raise RepoError(f"{message}. Use it on {recorded!r}, or pass allow_other_base=True (tinypipe derive "
                        "--allow-other-base) if the two models share their layer layout.")
    logger.warning("%s; using it anyway (allow_other_base=True): it loads only if the shapes match.", message)


def _builtin_folder(name: str) -> Optional[Path]:
    """The folder of a built-in model name, or None for any other name."""
    if is_builtin(name, "diffusion"):
        return Path(builtin_diffusion_folder(name))
    if is_builtin(name, "causal-lm"):
        from ..builtin.tiny_llama import builtin_lm_folder  # imports transformers: only for a built-in LM

        return Path(builtin_lm_folder(name))
    return None


def base_model_source(base_model: str, kind: str) -> Union[str, Path]:
    """What to hand `from_pretrained` for `base_model`: a built-in model's folder, a local folder, or the hub id.

    Args:
        base_model: The name the user gave.
        kind: `"diffusion"` (a diffusers pipeline) or `"causal-lm"` (a transformers model).

    Returns:
        A `Path` for a built-in model of `kind` or a local folder, else the hub id as given.

    Raises:
        ConfigError: A local path that is not a folder of `kind` (it lacks `model_index.json` / `config.json`).
    """
    if kind == "diffusion" and is_builtin(base_model, "diffusion"):
        return Path(builtin_diffusion_folder(base_model))
    if kind == "causal-lm" and is_builtin(base_model, "causal-lm"):
        from ..builtin.tiny_llama import builtin_lm_folder  # imports transformers: only for a built-in LM

        return Path(builtin_lm_folder(base_model))
    if not Path(base_model).exists():
        return base_model
    source, (marker, folder_kind) = Path(base_model), BASE_MODEL_KINDS[kind]
    if not (source / marker).is_file():
        library, builtin = ("diffusers", TINY_SD) if kind == "diffusion" else ("transformers", TINY_LLAMA)
        raise ConfigError(f"{source} is not a {folder_kind} (no {marker}); give a folder written by {library}' "
                          f"save_pretrained, a hub id, or the built-in {builtin!r}.")
    return source


def base_model_load_error(base_model: str, revision: Optional[str], error: OSError, kind: str) -> ConfigError:
    """The error for a base model that could not be loaded: the reason, what to check, and the built-in names of `kind`."""
    return ConfigError(
        f"Could not load the base model {base_model!r} (revision {revision or 'main'}): {load_error_reason(error)} "
        "Check the hub id and revision, log in for private models, or unset HF_HUB_OFFLINE to download it. "
        f"{builtin_hint(base_model, kind)}"
    )


def same_base_model(first: str, second: str) -> bool:
    """Whether two base-model names mean the same model: equal names, or (built-in names read as their folders) one folder."""
    if first == second:
        return True
    first_path, second_path = (_builtin_folder(name) or Path(name) for name in (first, second))
    return first_path.exists() and second_path.exists() and first_path.resolve() == second_path.resolve()

