"""No path leaves the repo or the cache: every place where a name read from a file or given by a user becomes a path
refuses a name that would lead outside its root, before anything is read or written there.

The table below lists each such place with hostile names. Outside the root sits a folder holding a `config.json`
that no test may read (its future `__version__` would show up in the error) and that must stay as it is.
"""

import hashlib
import json
import os
import sqlite3
import zipfile
from pathlib import Path

import pytest

from tinypipe import AutoTrainerPipeline, ConfigMixin, save_config
from tinypipe.archive import safe_extract
from tinypipe.config.filelist import verify_filelist
from tinypipe.config.hub import resolve_repo
from tinypipe.errors import TinypipeError
from tinypipe.jobs import JobStore
from tinypipe.config.card import card_data_from_repo


class Small(ConfigMixin):
    @save_config
    def __init__(self, size: int = 2):
        self.size = size


def _rehash(folder: Path) -> None:
    lines = sorted(f"{p.relative_to(folder).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                   for p in folder.rglob("*") if p.is_file() and p.name != "filelist.txt")
    (folder / "filelist.txt").write_text("".join(lines))


def _trainer_repo(root: Path, key: str) -> Path:
    trainer = root / "repo" / "trainer"
    trainer.mkdir(parents=True)
    (trainer / "config.json").write_text(json.dumps({
        "__module__": "tinypipe.trainers.lora.LoRATrainer", "__version__": "0.1.0",
        key: {"__module__": "tinypipe.trainers.lora.LoRATrainConfig", "__subfolder__": None}}))
    _rehash(trainer)
    return root / "repo"


def sub_folder_key_loaded(root: Path, name: str) -> None:
    AutoTrainerPipeline.from_pretrained(_trainer_repo(root, name))


def sub_folder_key_published(root: Path, name: str) -> None:
    card_data_from_repo(_trainer_repo(root, name))


def hub_id_in_the_cache(root: Path, name: str) -> None:
    (root / "cache").mkdir()
    resolve_repo(root / "cache", name)


def zip_member(root: Path, name: str) -> None:
    with zipfile.ZipFile(root / "data.zip", "w") as archive:
        archive.writestr(name, "escaped")
    safe_extract(root / "data.zip", root / "extracted")


def filelist_entry(root: Path, name: str) -> None:
    Small().save_pretrained(root / "repo")
    with open(root / "repo" / "model" / "filelist.txt", "a") as listing:
        listing.write(f"{name} {'0' * 64}\n")
    verify_filelist(root / "repo" / "model")


def job_name(root: Path, name: str) -> None:
    JobStore(root / "jobs").create(name, "train-diffuser", "lora", {})


def class_name(root: Path, name: str) -> None:
    Small().save_pretrained(root / "repo")
    config = root / "repo" / "model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "__module__": name + ".Small"}))
    _rehash(root / "repo" / "model")
    Small.from_pretrained(root / "repo")


OUTSIDE = "{outside}"  # replaced by the absolute path of the outside folder
TABLE = {
    sub_folder_key_loaded: ["../../outside", OUTSIDE, "..", ".", "", "a/../../../outside", "train_config/../../../outside"],
    sub_folder_key_published: ["../../outside", OUTSIDE, "..", "a/../../../outside"],
    hub_id_in_the_cache: ["../outside", OUTSIDE, "a/../../outside", "..", "a/..", "owner/../../outside", "a/b/c"],
    zip_member: ["../outside/x", OUTSIDE + "/x", "a/../../outside/x", "C:/outside/x", "..\\outside\\x"],
    filelist_entry: ["../../outside/config.json", OUTSIDE + "/config.json", "a/../../../outside/config.json"],
    job_name: ["../outside", "a/b", "..", "", "a\\b", "tab\there"],
    class_name: ["..outside", "outside/x", "a..b"],
}
CASES = [pytest.param(place, name, id=f"{place.__name__}-{name}") for place, names in TABLE.items() for name in names]


@pytest.mark.parametrize("place, name", CASES)
def test_a_name_that_leads_outside_its_root_is_refused_before_anything_is_read_or_written(tmp_path, place, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"__module__": "tinypipe.trainers.lora.LoRATrainConfig",
                                                     "__version__": "77.0.0"}))
    before = sorted(os.listdir(outside))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(TinypipeError) as error:
        place(root, name.replace(OUTSIDE, str(outside)))
    assert "77.0.0" not in str(error.value)  # the outside config.json was never read
    assert sorted(os.listdir(outside)) == before and not (tmp_path / "x").exists()
    assert len(str(error.value).splitlines()) == 1


def test_a_sub_folder_that_is_a_link_out_of_the_repo_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"__module__": "tinypipe.trainers.lora.LoRATrainConfig",
                                                     "__version__": "77.0.0"}))
    repo = _trainer_repo(tmp_path, "train_config")
    (repo / "trainer" / "train_config").symlink_to(outside)
    with open(repo / "trainer" / "filelist.txt", "a") as listing:
        listing.write(f"train_config {'0' * 64}\n")
    with pytest.raises(TinypipeError, match="outside") as error:
        AutoTrainerPipeline.from_pretrained(repo)
    assert "77.0.0" not in str(error.value)


def test_a_job_name_recorded_by_an_older_store_cannot_place_its_zip_outside_the_current_folder(tmp_path, monkeypatch):
    from tinypipe.cli import main

    monkeypatch.setenv("TINYPIPE_HOME", str(tmp_path / "home"))
    store = JobStore()
    job = store.create("fine", "train-diffuser", "lora", {}, output=tmp_path / "out")
    (tmp_path / "out" / "model").mkdir(parents=True)
    (tmp_path / "out" / "model" / "weights.safetensors").write_bytes(b"weights")
    with sqlite3.connect(store.path) as connection:
        connection.execute("UPDATE jobs SET name = '../../escaped' WHERE id = ?", (job.id,))
    store.start(job.id)
    store.finish(job.id, "succeeded")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert main(["download-model", job.id]) == 0
    written = list((tmp_path / "here").iterdir())
    assert len(written) == 1 and written[0].name.endswith(f"escaped-{job.id}.zip") and written[0].is_file()
    assert not list(tmp_path.glob("escaped*")) and not list(tmp_path.parent.glob("escaped*"))
