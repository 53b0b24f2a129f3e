"""tinypipe.files: the one atomic write (file and folder), the complete-folder marker, cached folders, safe JSON reading."""

import json
import os

import pytest

from tinypipe import files
from tinypipe.errors import RepoError
from tinypipe.files import (
    atomic_file,
    atomic_folder,
    cached_folder,
    read_json,
    read_marker,
    write_atomic,
    write_marker,
)


def _hidden(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_write_atomic_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, "old")
    write_atomic(target, b"new", durable=True)

    assert target.read_bytes() == b"new"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("crash", [RuntimeError("disk error"), KeyboardInterrupt()])
def test_a_crash_mid_write_leaves_the_old_file_whole(tmp_path, crash):
    target = tmp_path / "state.json"
    target.write_text("old complete file")

    with pytest.raises(type(crash)):
        with atomic_file(target) as temporary:
            temporary.write_text("half of the new")
            raise crash

    assert target.read_text() == "old complete file"
    assert _hidden(tmp_path) == []


def test_a_durable_write_flushes_the_file_and_its_folder(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(files, "fsync_path", lambda path: flushed.append(path))

    write_atomic(tmp_path / "a.txt", "text", durable=True)

    assert flushed[0].name.startswith(".a.txt.") and flushed[1:] == [tmp_path]


def test_atomic_folder_replaces_a_folder_as_a_whole(tmp_path):
    target = tmp_path / "repo"
    target.mkdir()
    (target / "old.txt").write_text("old")

    with atomic_folder(target) as staging:
        assert not (staging / "old.txt").exists()
        (staging / "new.txt").write_text("new")

    assert sorted(path.name for path in target.iterdir()) == ["new.txt"]
    assert _hidden(tmp_path) == []


def test_a_crash_while_building_a_folder_leaves_the_old_one_whole(tmp_path):
    target = tmp_path / "repo"
    target.mkdir()
    (target / "old.txt").write_text("old")

    with pytest.raises(OSError):
        with atomic_folder(target) as staging:
            (staging / "new.txt").write_text("half")
            raise OSError("No space left on device")

    assert sorted(path.name for path in target.iterdir()) == ["old.txt"]
    assert _hidden(tmp_path) == []


def test_atomic_folder_builds_under_the_staging_name_its_owner_gives(tmp_path):
    staging_name = tmp_path / ".tmp-checkpoint-3-ab"
    with atomic_folder(tmp_path / "checkpoint-3", staging=staging_name) as staging:
        assert staging == staging_name and staging.is_dir()
    assert (tmp_path / "checkpoint-3").is_dir() and not staging_name.exists()


def test_the_marker_says_whether_a_folder_is_complete(tmp_path):
    assert read_marker(tmp_path, "complete.json") is None  # no marker: incomplete

    write_marker(tmp_path, "complete.json", {"step": 3})
    assert read_marker(tmp_path, "complete.json") == {"step": 3}

    (tmp_path / "complete.json").write_text('{"step": 3')  # cut off mid-write by an older writer
    assert read_marker(tmp_path, "complete.json") is None
    (tmp_path / "complete.json").write_text("[1, 2]")
    assert read_marker(tmp_path, "complete.json") is None


def test_cached_folder_builds_once_and_rebuilds_when_the_fingerprint_changes():
    builds = []

    def build(folder):
        builds.append(folder)
        (folder / "data.txt").write_text(str(len(builds)))

    first = cached_folder("me/thing", {"version": 1}, build, area="test")
    again = cached_folder("me/thing", {"version": 1}, build, area="test")
    newer = cached_folder("me/thing", {"version": 2}, build, area="test")

    assert first == again == newer and first.name == "me--thing"
    assert len(builds) == 2 and (first / "data.txt").read_text() == "2"
    assert read_marker(first, "tinypipe_cache.json") == {"version": 2}


def test_cached_folder_removes_what_a_killed_build_left(tmp_path):
    home = files.tinypipe_home() / "test"
    home.mkdir(parents=True)
    (home / ".me--thing.0123.tmp").mkdir()  # a build killed outright (no clean-up ran)

    folder = cached_folder("me/thing", {"version": 1}, lambda staging: (staging / "a").write_text("a"), area="test")

    assert (folder / "a").read_text() == "a"
    assert [path.name for path in home.iterdir() if path.name.startswith(".") and not path.name.endswith(".lock")] == []


@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe not utf-8", "is not UTF-8 text"),
    (b"{'single': 'quotes'}", "is not valid JSON"),
    (b"[" * 70 + b"]" * 70, "nests lists or objects more than 64 levels deep"),
])
def test_read_json_refuses_what_no_config_holds_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(RepoError, match=reason) as error:
        read_json(path)
    assert str(path) in str(error.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_read_json_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(RepoError, match="named pipe"):
        read_json(fifo)


def test_read_json_reads_json_written_by_anyone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"a": [1, 2.5, None]}))
    assert read_json(tmp_path / "config.json") == {"a": [1, 2.5, None]}


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "repo"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(source, destination):
        if str(source).endswith(".tmp"):  # the new folder's move into place fails
            raise OSError("Input/output error")
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError):
        with atomic_folder(target) as staging:
            (staging / "new.txt").write_text("new")

    assert sorted(path.name for path in target.iterdir()) == ["old.txt"]
    assert _hidden(tmp_path) == []


def test_what_moves_into_place_gets_the_modes_of_the_umask_not_safetensors_private_ones(tmp_path):
    import torch
    from safetensors.torch import save_file

    previous = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "weights.safetensors") as temporary:
            save_file({"a": torch.zeros(2)}, str(temporary))
        with atomic_folder(tmp_path / "checkpoint") as staging:
            save_file({"a": torch.zeros(2)}, str(staging / "state.safetensors"))
    finally:
        os.umask(previous)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in [*tmp_path.iterdir(), *(tmp_path / "checkpoint").iterdir()]}
    assert modes == {"weights.safetensors": "0o644", "checkpoint": "0o755", "state.safetensors": "0o644"}
