"""The repo format: filelist.txt verification, atomic saves, model_code trust, safe weight loading."""

import json
import os
import sys
import textwrap

import pytest
import torch

import tinypipe
from tinypipe import AutoModelPipeline, ConfigError, ConfigMixin, RepoError, TrustRemoteCodeError, save_config
from tinypipe.config import filelist as filelist_module
from tinypipe.config.filelist import verify_filelist
from tinypipe.config.weights import load_state_dict_file
from custom_code import SENTINEL_MODULE


class Small(ConfigMixin, torch.nn.Module):
    @save_config
    def __init__(self, width: int = 4):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)


@pytest.fixture
def repo(tmp_path):
    torch.manual_seed(0)
    Small().save_pretrained(tmp_path / "repo")
    return tmp_path / "repo"


def test_filelist_lists_every_file_with_its_sha256(repo):
    lines = (repo / "model/filelist.txt").read_text().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["config.json", "model.safetensors"]
    assert all(len(line.split(" ")[1]) == 64 for line in lines)


def test_missing_config_json(repo):
    (repo / "model/config.json").unlink()
    with pytest.raises(RepoError, match=r"config.json is listed in .*filelist.txt but missing"):
        Small.from_pretrained(repo)
    (repo / "model/filelist.txt").write_text("")
    (repo / "model/model.safetensors").unlink()
    with pytest.raises(RepoError, match=r"model/config.json is missing"):
        Small.from_pretrained(repo)


def test_not_a_repo(tmp_path):
    with pytest.raises(RepoError, match="does not exist"):
        Small.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepoError, match=r"empty/model/config.json is missing"):
        Small.from_pretrained(tmp_path / "empty")


def test_missing_filelist(repo):
    (repo / "model/filelist.txt").unlink()
    with pytest.raises(RepoError, match="filelist.txt is missing"):
        Small.from_pretrained(repo)


def test_flipped_byte_in_safetensors(repo):
    path = repo / "model/model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RepoError, match=r"model.safetensors has changed since it was saved"):
        Small.from_pretrained(repo)


def test_unlisted_file(repo):
    (repo / "model/extra.py").write_text("print('hi')")
    with pytest.raises(RepoError, match=r"extra.py is not listed in"):
        Small.from_pretrained(repo)


@pytest.mark.parametrize("hostile", ["../x", "/etc/passwd", "C:\\x", "C:/x", "\\\\host\\share\\x", "a\\..\\..\\x", "a/../../x", "./x"])
def test_hostile_paths_in_filelist(repo, hostile):
    listing = repo / "model/filelist.txt"
    listing.write_text(listing.read_text() + f"{hostile} {'0' * 64}\n")
    with pytest.raises(RepoError, match="unsafe path"):
        Small.from_pretrained(repo)


def test_symlink_pointing_outside(repo, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (repo / "model/link.txt").symlink_to(secret)
    listing = repo / "model/filelist.txt"
    listing.write_text(listing.read_text() + f"link.txt {filelist_module.sha256_file(secret)}\n")
    with pytest.raises(RepoError, match="points outside the repo"):
        Small.from_pretrained(repo)


def test_truncated_safetensors(repo):
    path = repo / "model/model.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RepoError, match="has changed since it was saved"):
        Small.from_pretrained(repo)
    filelist_module.write_filelist(repo / "model")  # even with a matching filelist the file is refused
    with pytest.raises(RepoError, match="not a valid safetensors file"):
        Small.from_pretrained(repo)


def test_weights_of_another_shape(repo, tmp_path):
    with pytest.raises(RepoError, match="does not match Small"):
        Small.from_pretrained(repo, width=8)


def test_repeat_load_uses_the_verified_stamp(repo, monkeypatch):
    old = 1_600_000_000
    for path in (repo / "model").iterdir():
        os.utime(path, (old, old))
    monkeypatch.setattr(filelist_module, "_RACY_SECONDS", -1e9)  # ctime is recent in a test; accept it
    verify_filelist(repo / "model")
    hashed = []
    monkeypatch.setattr(filelist_module, "sha256_file", lambda p: hashed.append(p) or "x")
    verify_filelist(repo / "model")
    assert hashed == []


def test_racy_stamp_is_not_trusted(repo):
    verify_filelist(repo / "model")  # files written just now: too recent to be stamped
    path = repo / "model/model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    with pytest.raises(RepoError, match="has changed"):
        verify_filelist(repo / "model")


def write_config(repo, **config):
    (repo / "model/config.json").write_text(json.dumps(config))
    filelist_module.write_filelist(repo / "model")


def test_module_that_does_not_import(repo):
    write_config(repo, __module__="no_such_package.Model", __version__="0.1.0")
    with pytest.raises(ConfigError, match=r"'no_such_package.Model', which does not import.*Install the package"):
        AutoModelPipeline.from_pretrained(repo)


def test_module_not_a_subclass(repo):
    write_config(repo, __module__=f"{Small.__module__}.Small", __version__="0.1.0")

    class Other(ConfigMixin):
        pass

    with pytest.raises(ConfigError, match=r"is not a subclass of .*Other"):
        Other.from_pretrained(repo)


@pytest.mark.parametrize("dotted", ["subprocess.Popen", "builtins.eval", "os.system"])
def test_arbitrary_callables_are_refused(repo, dotted):
    write_config(repo, __module__=dotted, __version__="0.1.0", args=["touch", "/tmp/pwned"])
    with pytest.raises(ConfigError, match="is not a subclass of tinypipe.config.mixin.ConfigMixin"):
        AutoModelPipeline.from_pretrained(repo, trust_remote_code=True)


def test_newer_major_version(repo):
    write_config(repo, __module__=f"{Small.__module__}.Small", __version__="7.0.0", width=4)
    with pytest.raises(ConfigError, match=r"written by tinypipe 7.0.0, a newer major version.*Upgrade tinypipe"):
        Small.from_pretrained(repo)


def test_interrupted_save_keeps_the_previous_repo(repo, monkeypatch):
    before = (repo / "model/model.safetensors").read_bytes()

    def explode(self, folder):
        (folder / "partial.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(Small, "save_weights", explode)
    with pytest.raises(KeyboardInterrupt):
        Small(width=4).save_pretrained(repo)
    assert (repo / "model/model.safetensors").read_bytes() == before
    assert Small.from_pretrained(repo).linear.in_features == 4
    assert sorted(p.name for p in repo.parent.iterdir()) == ["repo"]  # no temp folder left behind


def test_saving_over_a_repo_replaces_only_its_folder(repo):
    (repo / "trainer").mkdir()
    (repo / "trainer/keep.txt").write_text("kept")
    Small(width=6).save_pretrained(repo)
    assert Small.from_pretrained(repo).linear.in_features == 6
    assert (repo / "trainer/keep.txt").read_text() == "kept"
    assert sorted(p.name for p in repo.iterdir()) == ["model", "model_code", "trainer"]


def test_cut_between_the_two_renames_still_loads_the_old_folder(repo):
    os.rename(repo / "model", repo / ".model.old-1234abcd")
    assert Small.from_pretrained(repo).linear.in_features == 4


def test_model_code_is_copied_on_save(custom_repo):
    repo, _ = custom_repo
    assert (repo / "model_code/sentinel_model.py").read_text() == SENTINEL_MODULE
    assert (repo / "model_code/filelist.txt").read_text().startswith("sentinel_model.py ")


def test_model_code_needs_trust_remote_code_and_runs_nothing_without_it(custom_repo):
    repo, sentinel = custom_repo
    with pytest.raises(TrustRemoteCodeError, match=r"model_code/.*trust_remote_code=True"):
        AutoModelPipeline.from_pretrained(repo)
    assert not sentinel.exists()
    assert "sentinel_model" not in sys.modules


def test_model_code_loads_with_trust_remote_code(custom_repo):
    repo, sentinel = custom_repo
    model = AutoModelPipeline.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__name__ == "CustomModel" and model.size == 5
    assert sentinel.read_text() == "code ran"


def test_altered_model_code_is_refused_before_it_runs(custom_repo):
    repo, sentinel = custom_repo
    with open(repo / "model_code/sentinel_model.py", "a") as file:
        file.write("\nprint('injected')\n")
    with pytest.raises(RepoError, match="sentinel_model.py has changed"):
        AutoModelPipeline.from_pretrained(repo, trust_remote_code=True)
    assert not sentinel.exists()


def test_installed_module_not_yet_imported_needs_trust(repo):
    assert "json.tool" not in sys.modules
    write_config(repo, __module__="json.tool.Model", __version__="0.1.0")
    with pytest.raises(TrustRemoteCodeError, match="imports the module 'json.tool' from an installed package"):
        AutoModelPipeline.from_pretrained(repo)
    assert "json.tool" not in sys.modules


PICKLE_PAYLOAD = textwrap.dedent('''
    import os, pickle, sys
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + sys.argv[2],))
    with open(sys.argv[1], "wb") as file:
        pickle.dump({"weight": Payload()}, file)
''')


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_pickle_payload_is_never_executed(tmp_path, suffix):
    import subprocess

    weights = tmp_path / f"weights{suffix}"
    sentinel = tmp_path / "pwned"
    subprocess.run([sys.executable, "-c", PICKLE_PAYLOAD, str(weights), str(sentinel)], check=True)
    with pytest.raises(RepoError, match=r"refused to load.*never runs"):
        load_state_dict_file(weights)
    assert not sentinel.exists()


def test_plain_tensor_bin_loads(tmp_path):
    torch.save({"weight": torch.ones(2)}, tmp_path / "plain.bin")
    assert torch.equal(load_state_dict_file(tmp_path / "plain.bin")["weight"], torch.ones(2))


def test_version_written_is_the_package_version(repo):
    assert json.loads((repo / "model/config.json").read_text())["__version__"] == tinypipe.__version__


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_a_saved_repo_is_as_readable_as_any_file_the_user_writes(tmp_path, umask, file_mode, folder_mode):
    # safetensors writes 0600 and the staging folder is made 0700, whatever the umask: a team folder could not read it
    previous = os.umask(umask)
    try:
        Small().save_pretrained(tmp_path / "new-repo")
    finally:
        os.umask(previous)
    repo = tmp_path / "new-repo"
    assert {oct(path.stat().st_mode & 0o777) for path in [repo, *repo.rglob("*")] if path.is_dir()} == {oct(folder_mode)}
    assert {oct(path.stat().st_mode & 0o777) for path in repo.rglob("*") if path.is_file()} == {oct(file_mode)}
