"""From a `__module__` string in `config.json` to a class, and which code that may run.

The rules (SPEC section 2):
- a class the caller already has needs no opt-in (`MyModel.from_pretrained(...)`, or any class of a
  module that is already imported);
- importing a module that is not yet imported needs `trust_remote_code=True`, unless it is part of
  tinypipe; the repo's own `model_code/` folder is searched first;
- the name must resolve to a subclass of the class asked for (a `ConfigMixin`), never to an
  arbitrary callable such as `subprocess.Popen` or `builtins.eval`.
"""

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, TrustRemoteCodeError

__all__ = ["class_path", "resolve_class", "module_source_file", "register_wrapped_class"]

# wrap_config_mixin(Plain) records "module.Plain"; loading maps Plain back to its wrapped class.
_WRAPPED_CLASSES: dict[type, type] = {}


def register_wrapped_class(plain: type, wrapped: type) -> None:
    """Remember that `wrapped` is the config-mixin version of `plain` (see `wrap_config_mixin`)."""
    _WRAPPED_CLASSES[plain] = wrapped


def _module_name(module_name: str) -> str:
    """A script run as `__main__` is recorded under its file name, so other processes can import it."""
    if module_name != "__main__":
        return module_name
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    return Path(main_file).stem if main_file else module_name


def class_path(cls: type) -> str:
    """The dotted path written as `__module__`, e.g. `"tinypipe.models.diffusion.DiffusionPipeline"`."""
    return f"{_module_name(cls.__module__)}.{cls.__qualname__}"


def module_source_file(cls: type) -> Optional[Path]:
    """The `.py` file defining `cls` if it is user code that a repo should carry in `model_code/`.

    Returns None for tinypipe itself, the standard library and installed packages.
    """
    import sysconfig

    module = sys.modules.get(cls.__module__)
    source = getattr(module, "__file__", None)
    if module is None or source is None or not source.endswith(".py"):
        return None
    if cls.__module__ == "tinypipe" or cls.__module__.startswith("tinypipe."):
        return None
    source_path = Path(source).resolve()
    installed = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    if any(source_path.is_relative_to(Path(folder).resolve()) for folder in installed):
        return None
    return source_path


def _split_imported(dotted: str) -> Optional[tuple[str, str]]:
    """(module, qualified name) for the longest prefix of `dotted` that is an imported module."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        if module_name in sys.modules or (module_name == _module_name("__main__") and module_name != "__main__"):
            return module_name, ".".join(parts[cut:])
    return None


def _lookup(module_name: str, qualname: str) -> object:
    module = sys.modules.get(module_name)
    if module is None and module_name == _module_name("__main__"):
        module = sys.modules["__main__"]
    target: object = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target


def _find_in_code_folder(dotted: str, code_folder: Optional[Path]) -> Optional[tuple[str, str]]:
    if code_folder is None or not code_folder.is_dir():
        return None
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        relative = Path(*parts[:cut])
        if (code_folder / relative.with_suffix(".py")).is_file() or (code_folder / relative / "__init__.py").is_file():
            return ".".join(parts[:cut]), ".".join(parts[cut:])
    return None


def _module_file(folder: Path, name: str) -> bool:
    """Whether `folder` holds the module or package `name` (a folder, source, bytecode or extension), by looking only."""
    return (folder / name).is_dir() or any((folder / f"{name}{suffix}").is_file() for suffix in importlib.machinery.all_suffixes())


def _find_installed(dotted: str) -> Optional[tuple[str, str]]:
    """(module, qualified name) for the longest importable prefix of `dotted`, found without running any code.

    `importlib.util.find_spec("pkg.sub")` imports `pkg` (running `pkg/__init__.py`) to find `sub`; so only the
    top-level name goes through the import system (its finders only look), and sub-modules are looked up as
    files in the top-level package's folders.
    """
    parts = dotted.split(".")
    if parts[0] in sys.modules:
        spec = getattr(sys.modules[parts[0]], "__spec__", None)
    else:
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            spec = None
    if spec is None:
        return None
    found = 1
    folders = [Path(folder) for folder in (spec.submodule_search_locations or [])]
    for depth in range(1, len(parts) - 1):
        holding = [folder for folder in folders if _module_file(folder, parts[depth])]
        if not holding:
            break
        found = depth + 1
        folders = [folder / parts[depth] for folder in holding if (folder / parts[depth]).is_dir()]
    return ".".join(parts[:found]), ".".join(parts[found:])


def _import(module_name: str, code_folder: Optional[Path]) -> None:
    """Import a module, with `code_folder` searched first while it imports."""
    if code_folder is not None:
        sys.path.insert(0, str(code_folder))
        importlib.invalidate_caches()
    try:
        importlib.import_module(module_name)
    except Exception as error:
        raise ConfigError(f"Importing {module_name!r} failed: {type(error).__name__}: {error}") from error
    finally:
        if code_folder is not None:
            sys.path.remove(str(code_folder))


def resolve_class(
    dotted: str,
    expected: type,
    *,
    trust_remote_code: bool = False,
    code_folder: Optional[Path] = None,
    source: str = "config.json",
) -> type:
    """Resolve a `__module__` string to a class that is `expected` or a subclass of it.

    Args:
        dotted: `"package.module.ClassName"` as written in `config.json`.
        expected: The class the caller asked for; the result must be it or a subclass.
        trust_remote_code: Allow importing modules outside tinypipe that are not imported yet.
        code_folder: The repo's `model_code/` folder (already verified), searched first.
        source: The file the name came from, for messages.

    Raises:
        ConfigError: The name does not import, or names something that is not a subclass of `expected`.
        TrustRemoteCodeError: Importing the module would run code, and `trust_remote_code` is False.
    """
    if not isinstance(dotted, str) or "." not in dotted or not all(part.isidentifier() or part == "<locals>" for part in dotted.split(".")):
        raise ConfigError(f"{source}: '__module__' must be a dotted class path like 'package.module.Class', got {dotted!r}.")
    if class_path(expected) == dotted:
        return expected

    located = _split_imported(dotted)
    target = _lookup(*located) if located else None
    if target is None:
        located = _find_in_code_folder(dotted, code_folder) or _find_installed(dotted)
        if located is None:
            raise ConfigError(
                f"{source}: '__module__' is {dotted!r}, which does not import: no module of that name is installed "
                "or in the repo's model_code/. Install the package that defines it, or re-save the repo with its code."
            )
        module_name, qualname = located
        is_tinypipe = module_name == "tinypipe" or module_name.startswith("tinypipe.")
        if not is_tinypipe and not trust_remote_code:
            where = "the repo's model_code/" if _find_in_code_folder(dotted, code_folder) else "an installed package"
            raise TrustRemoteCodeError(
                f"{source}: '__module__' is {dotted!r}; loading it imports the module {module_name!r} from {where}, "
                "which runs its code. If you trust this repo, pass trust_remote_code=True (--trust-remote-code on the command "
                "line); or import the class yourself and call YourClass.from_pretrained(...)."
            )
        _import(module_name, code_folder if not is_tinypipe else None)
        target = _lookup(module_name, qualname)

    target = _WRAPPED_CLASSES.get(target, target)
    if not isinstance(target, type) or not issubclass(target, expected):
        raise ConfigError(
            f"{source}: '__module__' is {dotted!r}, which is not a subclass of {class_path(expected)}; "
            f"this folder was saved for another kind of object. Load it with the class it names, or check the path."
        )
    return target
