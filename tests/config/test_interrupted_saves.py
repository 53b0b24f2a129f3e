"""The newest complete save wins, deterministically, and nothing leaks: saves killed (SIGKILL) at any point leave a
repo that loads its newest complete save, and the next save or load removes what they left behind."""

import os
import subprocess
import sys
import textwrap

import pytest

VERSIONED = textwrap.dedent('''
    from tinypipe import ConfigMixin, save_config

    class Model(ConfigMixin):
        @save_config
        def __init__(self, version: int = 0):
            self.version = version
''')

CHILD = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from versioned import Model
    from tinypipe.config import repo as repo_module

    point, repo, version = sys.argv[2], sys.argv[3], int(sys.argv[4])
    die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    if point == "while_writing":                  # the new files are in the staging folder, not yet listed
        repo_module.write_filelist = die
    elif point == "after_moving_the_old_aside":   # model/ renamed to .model.old-<generation>, the new one not in
        rename = os.rename
        def rename_then_die(source, target):
            rename(source, target)
            if ".model.old-" in os.path.basename(target):
                die()
        os.rename = rename_then_die
    elif point == "after_moving_the_new_in":      # the new model/ in place, the old one not yet deleted
        rename = os.rename
        def rename_then_die(source, target):
            rename(source, target)
            if os.path.basename(target) == "model":
                die()
        os.rename = rename_then_die
    Model(version=version).save_pretrained(repo)
''')


@pytest.fixture
def versioned(tmp_path, monkeypatch):
    (tmp_path / "versioned.py").write_text(VERSIONED)
    monkeypatch.syspath_prepend(str(tmp_path))
    import versioned

    yield versioned.Model
    sys.modules.pop("versioned", None)


def killed_save(tmp_path, repo, point: str, version: int) -> None:
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), point, str(repo), str(version)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr[-2000:]


def hidden(repo) -> list[str]:
    return sorted(p.name for p in [*repo.parent.glob(f".{repo.name}.tmp-*"), *repo.glob(".*")])


def test_after_two_saves_killed_between_their_renames_the_newest_complete_save_loads(versioned, tmp_path):
    repo = tmp_path / "repo"
    versioned(version=0).save_pretrained(repo)
    killed_save(tmp_path, repo, "after_moving_the_old_aside", 1)
    versioned(version=2).save_pretrained(repo)
    killed_save(tmp_path, repo, "after_moving_the_old_aside", 3)
    assert not (repo / "model").exists()  # the kill left only the moved-aside copy of version 2
    assert versioned.from_pretrained(repo).version == 2
    versioned(version=4).save_pretrained(repo)
    assert versioned.from_pretrained(repo).version == 4
    assert hidden(repo) == []


def test_the_newest_moved_aside_save_loads_whatever_the_order_of_names(versioned, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for version, generation in ((7, 900), (8, 1000), (6, 99)):  # generation 1000 is the newest
        versioned(version=version).save_pretrained(tmp_path / f"v{version}")
        os.rename(tmp_path / f"v{version}" / "model", repo / f".model.old-{generation:020d}")
    assert versioned.from_pretrained(repo).version == 8
    versioned(version=9).save_pretrained(repo)
    assert versioned.from_pretrained(repo).version == 9 and hidden(repo) == []


@pytest.mark.parametrize("point", ["while_writing", "after_moving_the_new_in"])
def test_the_next_save_removes_what_a_killed_save_left(versioned, tmp_path, point):
    repo = tmp_path / "repo"
    versioned(version=0).save_pretrained(repo)
    killed_save(tmp_path, repo, point, 1)
    assert hidden(repo)  # a staging folder or the old model/ was left behind
    versioned(version=2).save_pretrained(repo)
    assert hidden(repo) == []
    assert versioned.from_pretrained(repo).version == 2


def test_the_next_load_removes_what_a_killed_save_left_but_never_a_save_in_progress(versioned, tmp_path):
    repo = tmp_path / "repo"
    versioned(version=0).save_pretrained(repo)
    killed_save(tmp_path, repo, "while_writing", 1)
    killed_save(tmp_path, repo, "after_moving_the_new_in", 2)
    in_progress = tmp_path / f".repo.tmp-{os.getpid()}-writing"  # a live process is still writing this one
    in_progress.mkdir()
    assert versioned.from_pretrained(repo).version == 2
    assert hidden(repo) == [in_progress.name]


def test_a_repo_cut_between_the_renames_keeps_loading_until_a_save_completes(versioned, tmp_path):
    repo = tmp_path / "repo"
    versioned(version=5).save_pretrained(repo)
    killed_save(tmp_path, repo, "after_moving_the_old_aside", 6)
    assert versioned.from_pretrained(repo).version == 5  # loading reads the moved-aside copy, and moves nothing
    assert versioned.from_pretrained(repo).version == 5
    killed_save(tmp_path, repo, "while_writing", 7)  # the save restores the copy before writing its own
    assert versioned.from_pretrained(repo).version == 5
    assert (repo / "model").is_dir()
