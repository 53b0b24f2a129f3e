"""No code runs before consent: whatever class name a repo writes, wherever tinypipe turns repo text into a class,
nothing that is not yet imported runs until `trust_remote_code=True` - not even a package's `__init__.py`.

The installed package `sentinelpkg` writes a sentinel file whenever any of its code runs; each test checks the file
is absent after the refusal (and, once, that trusting the repo does run it, so the sentinel would catch code running).
"""

import hashlib
import json
import sys
import textwrap

import pytest

from tinypipe import AutoModelPipeline, AutoTrainerPipeline, ConfigMixin, TrustRemoteCodeError
from tinypipe.config.card import card_data_from_repo

SENTINEL_CODE = textwrap.dedent('''
    import os
    open(os.environ["SENTINEL_FILE"], "a").write(__name__ + " ran\\n")
''')
CLASS_CODE = SENTINEL_CODE + textwrap.dedent('''
    from tinypipe import ConfigMixin, save_config

    class Model(ConfigMixin):
        @save_config
        def __init__(self, size: int = 2):
            self.size = size
''')


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    """An installed package whose `__init__.py`, sub-package and module each write the sentinel when they run."""
    site = tmp_path / "site"
    (site / "sentinelpkg" / "sub").mkdir(parents=True)
    (site / "sentinelpkg" / "__init__.py").write_text(SENTINEL_CODE)
    (site / "sentinelpkg" / "sub" / "__init__.py").write_text(SENTINEL_CODE)
    (site / "sentinelpkg" / "sub" / "models.py").write_text(CLASS_CODE)
    path = tmp_path / "SENTINEL"
    monkeypatch.setenv("SENTINEL_FILE", str(path))
    monkeypatch.syspath_prepend(str(site))
    yield path
    for name in [name for name in sys.modules if name.startswith("sentinelpkg")]:
        del sys.modules[name]


def write_repo(folder, config: dict, prefix: str = "model", subfolders: dict = None):
    """A repo folder whose `config.json` (and sub-folders) hold exactly `config`, with a matching filelist."""
    component = folder / prefix
    files = {"config.json": json.dumps(config)}
    for name, sub_config in (subfolders or {}).items():
        files[f"{name}/config.json"] = json.dumps(sub_config)
    for relative, text in files.items():
        (component / relative).parent.mkdir(parents=True, exist_ok=True)
        (component / relative).write_text(text)
    (component / "filelist.txt").write_text("".join(
        f"{relative} {hashlib.sha256(text.encode()).hexdigest()}\n" for relative, text in sorted(files.items())))
    return folder


TOP = {"__version__": "0.1.0"}
DOTTED = ["sentinelpkg.sub.models.Model", "sentinelpkg.sub.Model", "sentinelpkg.Model"]


@pytest.mark.parametrize("dotted", DOTTED)
def test_a_class_of_a_package_not_yet_imported_runs_no_code_without_trust(sentinel, tmp_path, dotted):
    repo = write_repo(tmp_path / "repo", {**TOP, "__module__": dotted})
    with pytest.raises(TrustRemoteCodeError, match="trust_remote_code=True"):
        AutoModelPipeline.from_pretrained(repo)
    assert not sentinel.exists()
    assert not [name for name in sys.modules if name.startswith("sentinelpkg")]


def test_a_class_named_in_an_argument_or_a_sub_folder_runs_no_code_without_trust(sentinel, tmp_path):
    argument = {**TOP, "__module__": "tinypipe.trainers.lora.LoRATrainer",
                "value": {"__module__": "sentinelpkg.sub.models.Model", "size": 3}}
    with pytest.raises(TrustRemoteCodeError):
        AutoTrainerPipeline.from_pretrained(write_repo(tmp_path / "argument", argument, "trainer"))
    nested = {**TOP, "__module__": "tinypipe.trainers.lora.LoRATrainer",
              "train_config": {"__module__": "sentinelpkg.sub.models.Model", "__subfolder__": None}}
    sub_config = {**TOP, "__module__": "sentinelpkg.sub.models.Model"}
    with pytest.raises(TrustRemoteCodeError):
        AutoTrainerPipeline.from_pretrained(write_repo(tmp_path / "nested", nested, "trainer", {"train_config": sub_config}))
    with pytest.raises(TrustRemoteCodeError):
        ConfigMixin.from_config({"__module__": "sentinelpkg.sub.models.Model", "size": 3})
    card_data_from_repo(write_repo(tmp_path / "card", {**TOP, "__module__": "sentinelpkg.sub.models.Model"}))
    assert not sentinel.exists()


def test_a_standard_library_module_with_import_side_effects_is_not_imported_without_trust(tmp_path, capsys):
    assert "this" not in sys.modules  # `import this` prints the Zen of Python
    with pytest.raises(TrustRemoteCodeError, match="'this'"):
        AutoModelPipeline.from_pretrained(write_repo(tmp_path / "repo", {**TOP, "__module__": "this.zen.Python"}))
    assert "this" not in sys.modules and "Beautiful is better" not in capsys.readouterr().out


def test_trusting_the_repo_runs_the_package_code(sentinel, tmp_path):
    repo = write_repo(tmp_path / "repo", {**TOP, "__module__": "sentinelpkg.sub.models.Model", "size": 7})
    assert AutoModelPipeline.from_pretrained(repo, trust_remote_code=True).size == 7
    assert sentinel.read_text().split("\n")[:3] == ["sentinelpkg ran", "sentinelpkg.sub ran", "sentinelpkg.sub.models ran"]


def test_a_base_model_folder_naming_another_library_runs_no_code(sentinel, tmp_path):
    from tinypipe import ConfigError
    from tinypipe.models.diffusers_base import load_base_pipeline

    base = tmp_path / "base"
    base.mkdir()
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["sentinelpkg.sub.models", "Model"]}))
    with pytest.raises(ConfigError, match=r"model_index.json: the component 'unet' comes from the library 'sentinelpkg"):
        load_base_pipeline(str(base))
    assert not sentinel.exists()
