"""Only regular files are read: a FIFO, device or socket in a repo (or a checkpoint) is an error naming it, never a
hang; a non-UTF-8 `filelist.txt`, a symlink loop and deeply nested JSON are one-line `RepoError`s naming the file."""

import hashlib
import json
import os
import signal
import socket
import stat

import pytest

from tinypipe import AutoModelPipeline, ConfigMixin, RepoError, save_config
from tinypipe.cli import main
from tinypipe.training.checkpoints import load_checkpoint


class Small(ConfigMixin):
    @save_config
    def __init__(self, size: int = 2):
        self.size = size


@pytest.fixture
def no_hang():
    """Turn a read that blocks into a test failure after 20 s instead of a suite that never ends."""
    def hung(*_):
        raise AssertionError("reading blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def repo(tmp_path):
    Small().save_pretrained(tmp_path / "repo")
    return tmp_path / "repo"


def _list(folder, name):
    with open(folder / "filelist.txt", "a") as listing:
        listing.write(f"{name} {'0' * 64}\n")


def _make_fifo(path):
    os.mkfifo(path)


def _make_socket(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def _make_device(path):
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("making a device node needs root")


@pytest.mark.parametrize("make, kind", [(_make_fifo, "a named pipe"), (_make_socket, "a socket"),
                                        (_make_device, "a character device")])
def test_a_special_file_listed_in_a_repo_is_named_never_read(repo, no_hang, make, kind):
    make(repo / "model" / "weights.safetensors")
    _list(repo / "model", "weights.safetensors")
    with pytest.raises(RepoError, match=f"weights.safetensors is {kind}.*not a regular file") as error:
        Small.from_pretrained(repo)
    assert len(str(error.value).splitlines()) == 1


def test_a_fifo_in_a_repo_is_one_error_line_from_the_cli(repo, no_hang, capsys):
    _make_fifo(repo / "model" / "weights.safetensors")
    _list(repo / "model", "weights.safetensors")
    assert main(["generate", str(repo), "a prompt", "--output", str(repo.parent / "images")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinypipe: error:") and "named pipe" in lines[0]


def test_a_fifo_in_a_checkpoint_is_named_never_read(tmp_path, no_hang):
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    _make_fifo(checkpoint / "complete.json")
    with pytest.raises(RepoError, match="complete.json"):
        load_checkpoint(checkpoint, optimizer=None, lr_scheduler=None)


def test_a_filelist_that_is_not_utf8_is_named(repo):
    (repo / "model" / "filelist.txt").write_bytes(b"config.json \xff\xfe\n")
    with pytest.raises(RepoError, match=r"filelist.txt is not UTF-8 text \(byte 12"):
        Small.from_pretrained(repo)


def test_a_symlink_loop_in_a_repo_is_named(repo):
    (repo / "model" / "loop").symlink_to(repo / "model" / "loop")
    _list(repo / "model", "loop")
    with pytest.raises(RepoError, match="loop") as error:
        Small.from_pretrained(repo)
    assert len(str(error.value).splitlines()) == 1


def _write_config(repo, text: str):
    model = repo / "model"
    (model / "config.json").write_text(text)
    (model / "model.safetensors").unlink(missing_ok=True)
    (model / "filelist.txt").write_text(f"config.json {hashlib.sha256(text.encode()).hexdigest()}\n")


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser can go
    json.dumps({"__module__": "test_regular_files_only.Small", "size": 2}).replace("2}", '{"k": ' * 700 + "2" + "}" * 701),
], ids=["100000_deep_list", "argument_700_dicts_deep"])
def test_deeply_nested_json_is_a_repo_error_naming_the_file(repo, text):
    _write_config(repo, text)
    with pytest.raises(RepoError, match=r"config.json nests lists or objects more than 64 levels deep"):
        AutoModelPipeline.from_pretrained(repo)
